"""`swarm seed`'s work: split a model into chunk files, make the torrent, sign the manifest, catalog them."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from swarm import signing
from swarm.catalog import check_name, manifest_path, torrent_path, write_atomically
from swarm.config import TORRENT_FORMATS, Settings
from swarm.discovery.bundle import write_name_record
from swarm.errors import SwarmError
from swarm.manifest import Chunk, Manifest, TorrentInfo, load_manifest
from swarm.model.chunker import (
    PlannedChunk,
    dominant_dtype,
    plan_chunks,
    plan_component_chunks,
    write_planned_chunk,
)
from swarm.model.families import Family, family_for
from swarm.model.safetensors_stream import TensorEntry, read_entries, validate
from swarm.model.source import ModelSource, locate_model, read_source
from swarm.progress import ProgressSink, SilentProgress
from swarm.tasks.catalog import split_into_spans, task_for
from swarm.torrent.create import check_piece_length, choose_piece_length, make_torrent
from swarm.torrent.merkle import FileHashes, file_hashes
from swarm.torrent.resume import write_complete_resume

# Worker processes hashing chunk files while the next ones are written: one per core of a small machine.
_HASHING_PROCESSES = 2
# A sharded weights file's numbering ("-00001-of-00002"), which the one chunk of a component goes without.
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")


@dataclass(frozen=True)
class Published:
    manifest: Manifest
    manifest_path: Path
    torrent_path: Path
    content_dir: Path
    torrent_data: bytes
    seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(chunk.size for chunk in self.manifest.chunks)


def publish(
    reference: str,
    name: str,
    settings: Settings,
    force: bool = False,
    progress: ProgressSink | None = None,
    task: str | None = None,
) -> Published:
    """Publish the model at `reference` as `name`; `task` (swarm.tasks.catalog) overrides the one its architecture
    implies. A model is split into block chunks when `split_into_spans` says so, else it is one `full` chunk whose
    peers run it whole (as a transformers task when it has one)."""
    started = time.perf_counter()
    progress = progress or SilentProgress()
    check_name(name)
    if settings.torrent_format not in TORRENT_FORMATS:
        raise SwarmError(f"unknown torrent format {settings.torrent_format!r}; use {', '.join(TORRENT_FORMATS)}")
    if settings.piece_length:
        check_piece_length(settings.piece_length, settings.torrent_format)
    source = read_source(locate_model(reference))
    # The library's validation of the weight files runs beside the writing; nothing is published before it passes.
    validator = ThreadPoolExecutor(max_workers=1)
    validation = validator.submit(_validate_all, source.weight_files)
    validator.shutdown(wait=False)
    by_file = {weight_file: read_entries(weight_file, check=False)[0] for weight_file in source.weight_files}
    entries = [entry for found in by_file.values() for entry in found]
    task = task_for(source.config, task)
    adapter = family_for(source.config)
    family = adapter if split_into_spans(task, adapter is not None) else None
    planned = _plan(source, by_file, family, settings.blocks_per_chunk)

    catalog = settings.catalog
    _check_writable(catalog)
    models_dir = settings.models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    existing_manifest = manifest_path(catalog, name)
    # Chunks are written to a staging folder first: a failure or a refused name loses nothing on disk.
    staging_root = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=models_dir))
    try:
        content_dir = staging_root / name
        content_dir.mkdir()
        # Chosen before writing, so that each chunk is hashed for it as soon as it is written (the headers the
        # chunks add, a few KB, do not matter to a choice by powers of two).
        piece_length = settings.piece_length or choose_piece_length(_planned_bytes(planned))
        try:
            hashes = _write_chunks(planned, content_dir, progress, piece_length)
        except SwarmError:
            validation.result()  # a malformed source explains a failed copy better than the copy does
            raise
        # Every chunk file starts on a piece boundary, so each takes whole pieces of its own.
        piece_count = sum(-(-path.stat().st_size // piece_length) for path in content_dir.iterdir())
        progress.stage("hashing pieces", piece_count)
        made = make_torrent(
            content_dir,
            settings.torrent_format,
            piece_length,
            lambda _piece: progress.advance(),
            settings.trackers,
            private=settings.private_torrent,
            hashes={plan.file_name: hashes[plan.id].result() for plan in planned},
        )
        chunks = []
        for plan in planned:
            pieces = made.files[f"{name}/{plan.file_name}"]
            chunks.append(
                Chunk(
                    id=plan.id,
                    kind=plan.kind,
                    file=pieces.path,
                    size=pieces.size,
                    root=hashes[plan.id].result().root.hex(),
                    first_piece=pieces.first_piece,
                    last_piece=pieces.last_piece,
                    blocks=plan.blocks,
                    requires=plan.requires,
                )
            )
        validation.result()
        key = signing.load_or_create_key(settings.keys_dir)
        manifest = Manifest(
            name=name,
            family=family.name if family else None,
            architecture=(source.config.get("architectures") or [source.config.get("_class_name")])[0],
            config=source.config,
            dtype=dominant_dtype(entries),
            num_blocks=family.layer_count(source.config) if family else 0,
            torrent=TorrentInfo(
                format=settings.torrent_format,
                piece_length=made.piece_length,
                magnet=made.magnet,
                info_hash_v1=made.info_hash_v1,
                info_hash_v2=made.info_hash_v2,
            ),
            chunks=tuple(chunks),
            publisher_key=signing.public_key_hex(key),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            task=task,
        ).signed(key)
        if existing_manifest.exists() and not force and not _same_content(existing_manifest, manifest):
            raise SwarmError(
                f"a model named {name!r} with other content is already in {catalog}; pick another name "
                "or pass --force to replace it"
            )
        final_dir = models_dir / name
        if final_dir.exists():
            shutil.rmtree(final_dir)
        content_dir.rename(final_dir)
        write_complete_resume(settings.resume_dir, made.data, models_dir)
        torrent_file = torrent_path(catalog, name)
        write_atomically(torrent_file, made.data)
        manifest.save(existing_manifest)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    # The signed name record beside the manifest: whoever holds this catalog entry can keep the name findable.
    write_name_record(manifest, key, settings)
    return Published(
        manifest=manifest,
        manifest_path=existing_manifest,
        torrent_path=torrent_file,
        content_dir=final_dir,
        torrent_data=made.data,
        seconds=time.perf_counter() - started,
    )


def _plan(
    source: ModelSource, by_file: dict[Path, list[TensorEntry]], family: Family | None, blocks_per_chunk: int
) -> list[PlannedChunk]:
    """The chunks: a transformers model's by its family (or one full chunk); a diffusers pipeline's one full chunk
    per component, read back from where the component keeps its weights (one file, even when it was sharded)."""
    if not source.components:
        entries = [entry for found in by_file.values() for entry in found]
        return plan_chunks(entries, source.config, family, blocks_per_chunk, source.meta_files, source.directory)
    by_component: dict[str, list[TensorEntry]] = {name: [] for name in source.components}
    names: dict[str, str] = {}
    for weight_file, found in by_file.items():
        component = weight_file.parent.name
        by_component[component].extend(found)
        names[component] = SHARD_SUFFIX.sub(".safetensors", weight_file.name)
    return plan_component_chunks(by_component, source.meta_files, source.directory, names)


def _validate_all(paths: Sequence[Path]) -> None:
    for path in paths:
        validate(path)


def _planned_bytes(planned: list[PlannedChunk]) -> int:
    """The chunks' size but for their headers: tensor bytes and meta files."""
    tensors = sum(entry.length for plan in planned for entry in plan.entries)
    return tensors + sum(path.stat().st_size for plan in planned for path in plan.meta_files)


def _write_chunks(
    planned: list[PlannedChunk], directory: Path, progress: ProgressSink, piece_length: int
) -> dict[str, Future[FileHashes]]:
    """Write every chunk; each file's merkle hashes (its manifest hash and its v2 torrent hashes) are computed by
    worker processes while the next ones are written, so that hashing overlaps the writing on both cores (the copies
    run in the kernel, copy_file_range; hashlib's many 16 KiB calls would contend for one process's GIL)."""
    progress.stage("writing chunks", len(planned))
    hashes: dict[str, Future[FileHashes]] = {}
    hashers = ProcessPoolExecutor(max_workers=_HASHING_PROCESSES, mp_context=multiprocessing.get_context("fork"))
    for plan in planned:
        path = write_planned_chunk(plan, directory)
        hashes[plan.id] = hashers.submit(file_hashes, path, piece_length)
        progress.advance()
    hashers.shutdown(wait=False)
    return hashes


def _same_content(existing_path: Path, manifest: Manifest) -> bool:
    try:
        existing = load_manifest(existing_path)
    except SwarmError:
        return False
    return [(c.id, c.root) for c in existing.chunks] == [(c.id, c.root) for c in manifest.chunks]


def _check_writable(catalog: Path) -> None:
    try:
        catalog.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SwarmError(f"cannot create the catalog directory {catalog}: {error.strerror}") from error
    if not os.access(catalog, os.W_OK | os.X_OK):
        raise SwarmError(f"the catalog directory {catalog} is not writable")
