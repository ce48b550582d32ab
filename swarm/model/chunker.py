"""Chunk planning (pure) and writing: which tensors go to which chunk file, then streaming them out."""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.errors import SwarmError
from swarm.model.families import Family
from swarm.model.safetensors_stream import TensorEntry, write_chunk

META_FILE = "meta.tar"
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
    # Meta chunks carry files instead of tensors.
    meta_files: tuple[Path, ...] = field(default=())


def blocks_chunk_id(start: int, end: int) -> str:
    return f"blocks-{start:05d}-{end:05d}"


def plan_chunks(
    entries: Iterable[TensorEntry],
    config: dict[str, Any],
    family: Family | None,
    blocks_per_chunk: int,
    meta_files: tuple[Path, ...] = (),
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
    meta = PlannedChunk(id="meta", kind="meta", file_name=META_FILE, meta_files=meta_files)
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
        write_meta_archive(path, chunk.meta_files)
    else:
        write_chunk(path, list(chunk.entries), CHUNK_METADATA)
    return path


def write_meta_archive(path: Path, files: tuple[Path, ...]) -> None:
    """A tar of the small files (config, tokenizer, generation), byte-identical for the same inputs."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for file in sorted(files, key=lambda item: item.name):
            data = file.read_bytes()
            info = tarfile.TarInfo(name=file.name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))


def extract_meta_archive(archive_path: Path, destination: Path) -> list[Path]:
    """Unpack a meta chunk; only plain files with plain names, so a hostile archive cannot escape."""
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(archive_path, "r") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if not member.isfile() or name != member.name or name.startswith("."):
                    raise SwarmError(f"{archive_path} holds an entry that is not a plain file: {member.name!r}")
                source = archive.extractfile(member)
                if source is None:
                    raise SwarmError(f"{archive_path}: cannot read {member.name}")
                target = destination / name
                target.write_bytes(source.read())
                written.append(target)
    except tarfile.TarError as error:
        raise SwarmError(f"{archive_path} is not a valid meta archive: {error}") from error
    return written


def assemble_model_dir(meta_path: Path, full_path: Path, directory: Path) -> Path:
    """A model directory transformers' from_pretrained reads: the meta files, plus the full chunk linked under the
    weights' usual name (not copied)."""
    extract_meta_archive(meta_path, directory)
    os.symlink(full_path.resolve(), directory / "model.safetensors")
    return directory
