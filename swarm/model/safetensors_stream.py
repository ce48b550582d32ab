"""Reading safetensors headers and writing chunk files by copying byte ranges, never whole tensors.

The safetensors library writes a file only from tensors held in memory; a chunk is written here by
copying each tensor's bytes from the source file with the kernel (os.copy_file_range), so peak memory
stays flat whatever the tensor sizes, and the bytes are identical to the source's. The library still
validates every source header (safe_open) and every chunk is readable by it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from swarm.errors import SwarmError

# Bytes per element of each safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
HEADER_LIMIT = 100 * 1024 * 1024
COPY_STEP = 256 * 1024 * 1024
FALLBACK_STEP = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Path
    # Absolute byte offset of the tensor's data inside the source file, and its length.
    offset: int
    length: int


def validate(path: Path) -> None:
    """The safetensors library's own check of a file (truncation, bad header, overlapping tensors): SwarmError."""
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as error:
        raise SwarmError(f"{path} is not a valid safetensors file: {error}") from error


def read_entries(path: Path, check: bool = True) -> tuple[list[TensorEntry], dict[str, str]]:
    """Every tensor of a safetensors file with its byte range, plus the file's metadata. `check=False` leaves the
    library's validation (`validate`, which imports numpy: ~0.1 s) to the caller, who may run it meanwhile; the
    header is still read defensively here."""
    if check:
        validate(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > min(HEADER_LIMIT, size - 8):
                raise SwarmError(f"{path} is not a valid safetensors file: header length {header_length}")
            header = json.loads(handle.read(header_length))
        data_start = 8 + header_length
        metadata = header.pop("__metadata__", None) or {}
        entries = [_entry(path, name, info, data_start) for name, info in header.items()]
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SwarmError(f"{path} is not a valid safetensors file: {type(error).__name__}: {error}") from None
    return entries, metadata


def _entry(path: Path, name: str, info: dict[str, Any], data_start: int) -> TensorEntry:
    begin, end = info["data_offsets"]
    shape = info["shape"]
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and isinstance(shape, list)):
        raise ValueError(f"tensor {name!r} has malformed data_offsets or shape")
    return TensorEntry(name=name, dtype=str(info["dtype"]), shape=tuple(shape), source=path, offset=data_start + begin,
                       length=end - begin)  # fmt: skip


def write_chunk(path: Path, entries: list[TensorEntry], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file holding `entries` (in the given order); returns its size in bytes."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    position = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [position, position + entry.length],
        }
        position += entry.length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    # The format asks for the data to start 8-byte aligned; spaces pad the JSON.
    encoded += b" " * (-len(encoded) % 8)
    sources: dict[Path, int] = {}
    try:
        with path.open("wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            out.flush()
            for entry in entries:
                if entry.source not in sources:
                    sources[entry.source] = os.open(entry.source, os.O_RDONLY)
                _copy_range(sources[entry.source], out.fileno(), entry.offset, entry.length)
    finally:
        for descriptor in sources.values():
            os.close(descriptor)
    return 8 + len(encoded) + position


def _copy_range(source: int, destination: int, offset: int, length: int) -> None:
    remaining = length
    while remaining > 0:
        step = min(remaining, COPY_STEP)
        try:
            copied = os.copy_file_range(source, destination, step, offset)
        except OSError:
            # Filesystems or kernels without copy_file_range between these files: copy through a buffer.
            copied = os.write(destination, os.pread(source, min(step, FALLBACK_STEP), offset))
        if copied == 0:
            raise SwarmError("source file ended before the tensor data it declares")
        offset += copied
        remaining -= copied
