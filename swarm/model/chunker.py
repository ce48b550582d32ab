"""Chunk planning (pure) and writing: which tensors go to which chunk file, then streaming them out."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.errors import SwarmError
from swarm.model.families import Family
from swarm.model.safetensors_stream import TensorEntry, read_entries, write_chunk

META_FILE = "meta.tar"
# In a diffusers pipeline's meta chunk: where each component's full chunk goes in the model directory.
COMPONENTS_FILE = "swarm-components.json"
# Where a transformers model's single full chunk goes in its model directory.
TRANSFORMERS_WEIGHTS = "model.safetensors"
# A model of several weight files (block chunks) names each tensor's file here, as a sharded checkpoint does.
TRANSFORMERS_INDEX = "model.safetensors.index.json"
# Transformers refuses safetensors files whose metadata does not declare the PyTorch format.
CHUNK_METADATA = {"format": "pt"}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass(frozen=True)
class PlannedChunk:
    id: str
    kind: str
    file_name: str
    blocks: tuple[int, int] | None = None
    entries: tuple[TensorEntry, ...] = ()
    requires: tuple[str, ...] = ()
    # Meta chunks carry files instead of tensors: named by their path below `meta_root` (by their own name without
    # one), plus generated files (name, bytes).
    meta_files: tuple[Path, ...] = field(default=())
    meta_root: Path | None = None
    meta_extra: tuple[tuple[str, bytes], ...] = ()


def plan_component_chunks(
    components: dict[str, list[TensorEntry]],
    meta_files: tuple[Path, ...],
    meta_root: Path,
    weight_names: dict[str, str],
) -> list[PlannedChunk]:
    """A diffusers pipeline: meta (every component's configs, and where each weights file goes) and one full chunk
    per component with weights, named `full-COMPONENT`. `weight_names`: each component's weights file name."""
    placement = {f"full-{name}": f"{name}/{weight_names[name]}" for name in sorted(components)}
    extra = ((COMPONENTS_FILE, json.dumps(placement, sort_keys=True).encode()),)
    chunks = [PlannedChunk("meta", "meta", META_FILE, meta_files=meta_files, meta_root=meta_root, meta_extra=extra)]
    for name in sorted(components):
        entries = sorted(components[name], key=lambda entry: entry.name)
        if len({entry.name for entry in entries}) != len(entries):
            raise SwarmError(f"component {name} has a tensor in more than one weight file")
        chunks.append(PlannedChunk(f"full-{name}", "full", f"full-{name}.safetensors", entries=tuple(entries)))
    return chunks


def blocks_chunk_id(start: int, end: int) -> str:
    return f"blocks-{start:05d}-{end:05d}"


def plan_chunks(
    entries: Iterable[TensorEntry],
    config: dict[str, Any],
    family: Family | None,
    blocks_per_chunk: int,
    meta_files: tuple[Path, ...] = (),
    meta_root: Path | None = None,
) -> list[PlannedChunk]:
    """Assign every tensor to exactly one chunk: meta, embed, blocks ranges, head; or one full chunk."""
    if blocks_per_chunk < 1:
        raise SwarmError("blocks per chunk must be at least 1")
    entries = list(entries)
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise SwarmError(f"tensor {entry.name} appears in more than one weight file")
        seen.add(entry.name)
    ordered = sorted(entries, key=lambda entry: entry.name)
    meta = PlannedChunk(id="meta", kind="meta", file_name=META_FILE, meta_files=meta_files, meta_root=meta_root)
    if family is None:
        return [
            meta,
            PlannedChunk(id="full", kind="full", file_name="full.safetensors", entries=tuple(ordered)),
        ]
    try:
        layer_count = family.layer_count(config)
    except KeyError as error:
        raise SwarmError(f"the {family.name} config is missing its layer count: {error}") from error
    embed: list[TensorEntry] = []
    head: list[TensorEntry] = []
    blocks: dict[int, list[TensorEntry]] = {}
    for entry in ordered:
        part, index = family.part_of(entry.name)
        if part == "block" and index is not None:
            if index >= layer_count:
                raise SwarmError(f"tensor {entry.name} names block {index} but the config has {layer_count} blocks")
            blocks.setdefault(index, []).append(entry)
        elif part == "embed":
            embed.append(entry)
        else:
            head.append(entry)
    missing = [index for index in range(layer_count) if index not in blocks]
    if missing:
        raise SwarmError(f"the checkpoint has no tensors for blocks {_ranges_text(missing)}")
    chunks = [meta]
    if embed:
        chunks.append(PlannedChunk(id="embed", kind="embed", file_name="embed.safetensors", entries=tuple(embed)))
    for start in range(0, layer_count, blocks_per_chunk):
        end = min(start + blocks_per_chunk, layer_count)
        chunk_id = blocks_chunk_id(start, end)
        members = tuple(entry for index in range(start, end) for entry in blocks[index])
        chunks.append(
            PlannedChunk(
                id=chunk_id,
                kind="blocks",
                file_name=f"{chunk_id}.safetensors",
                blocks=(start, end),
                entries=members,
            )
        )
    if head:
        # A causal head without its own output matrix reuses the token embeddings (tied weights).
        tied = family.causal and not any(entry.name.endswith("lm_head.weight") for entry in head)
        chunks.append(
            PlannedChunk(
                id="head",
                kind="head",
                file_name="head.safetensors",
                entries=tuple(head),
                requires=("embed",) if tied and embed else (),
            )
        )
    return chunks


def _ranges_text(indices: list[int]) -> str:
    if len(indices) > 6:
        return f"{indices[0]}..{indices[-1]} ({len(indices)} blocks)"
    return ", ".join(str(index) for index in indices)


def dominant_dtype(entries: Iterable[TensorEntry]) -> str:
    """The dtype holding most bytes, by its torch name."""
    totals: Counter[str] = Counter()
    for entry in entries:
        totals[entry.dtype] += entry.length
    if not totals:
        return "float32"
    name = totals.most_common(1)[0][0]
    return DTYPE_NAMES.get(name, name.lower())


def write_planned_chunk(chunk: PlannedChunk, directory: Path) -> Path:
    path = directory / chunk.file_name
    if chunk.kind == "meta":
        write_meta_archive(path, chunk.meta_files, chunk.meta_root, chunk.meta_extra)
    else:
        write_chunk(path, list(chunk.entries), CHUNK_METADATA)
    return path


def write_meta_archive(
    path: Path, files: tuple[Path, ...], root: Path | None = None, extra: tuple[tuple[str, bytes], ...] = ()
) -> None:
    """A tar of the small files (config, tokenizer, generation), byte-identical for the same inputs. Files are named
    by their path below `root` (a diffusers component's config: `unet/config.json`), else by their own name."""
    named = {file.relative_to(root).as_posix() if root else file.name: file.read_bytes() for file in files}
    named.update(extra)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(named):
            info = tarfile.TarInfo(name=name)
            info.size = len(named[name])
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(named[name]))


def extract_meta_archive(archive_path: Path, destination: Path) -> list[Path]:
    """Unpack a meta chunk; only plain files with plain names, so a hostile archive cannot escape."""
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(archive_path, "r") as archive:
            for member in archive.getmembers():
                if not member.isfile() or not _plain_path(member.name):
                    raise SwarmError(f"{archive_path} holds an entry that is not a plain file: {member.name!r}")
                source = archive.extractfile(member)
                if source is None:
                    raise SwarmError(f"{archive_path}: cannot read {member.name}")
                target = destination / member.name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(source.read())
                written.append(target)
    except tarfile.TarError as error:
        raise SwarmError(f"{archive_path} is not a valid meta archive: {error}") from error
    return written


def _link_shards(paths: dict[str, Path], directory: Path) -> None:
    """Chunk files linked as `CHUNK.safetensors` and the index from_pretrained reads a sharded checkpoint by."""
    weight_map: dict[str, str] = {}
    for chunk_id, path in paths.items():
        name = f"{chunk_id}.safetensors"
        if not _plain_path(name) or "/" in name:
            raise SwarmError(f"chunk id {chunk_id!r} cannot name a weight file")
        os.symlink(path.resolve(), directory / name)
        weight_map.update({entry.name: name for entry in read_entries(path)[0]})
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / TRANSFORMERS_INDEX).write_text(json.dumps(index))


def _plain_path(name: str) -> bool:
    """A file name, or a folder and a file name (a diffusers component's file), none of them hidden or special: what
    a hostile archive cannot use to write outside its destination."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(part and not part.startswith(".") and "\\" not in part for part in parts)


def assemble_model_dir(meta_path: Path, full_paths: dict[str, Path], directory: Path) -> Path:
    """A model directory from_pretrained reads: the meta files, plus the weight chunks linked (not copied) where the
    model reads its weights: one full chunk as `model.safetensors`, several chunks (embed, blocks, head) as the
    shards of a sharded checkpoint, or for a diffusers pipeline each component's own file."""
    extracted = extract_meta_archive(meta_path, directory)
    placement_file = directory / COMPONENTS_FILE
    if placement_file not in extracted:
        if len(full_paths) == 1:
            (full_path,) = full_paths.values()
            os.symlink(full_path.resolve(), directory / TRANSFORMERS_WEIGHTS)
            return directory
        _link_shards(full_paths, directory)
        return directory
    try:
        placement = json.loads(placement_file.read_text())
    except ValueError as error:
        raise SwarmError(f"{meta_path}: {COMPONENTS_FILE} is not JSON: {error}") from None
    for chunk_id, path in full_paths.items():
        target = placement.get(chunk_id) if isinstance(placement, dict) else None
        if not isinstance(target, str) or not _plain_path(target):
            raise SwarmError(f"{meta_path}: {COMPONENTS_FILE} places chunk {chunk_id} nowhere usable")
        (directory / target).parent.mkdir(exist_ok=True)
        os.symlink(path.resolve(), directory / target)
    return directory
