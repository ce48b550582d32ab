"""Bencoding (BEP 3), strict: a decoded value re-encodes to exactly the bytes it came from, which is what lets
a signature over bencoded bytes (name records, BEP 44 items) be checked after a round trip. Everything decoded
here comes from the network: malformed input raises BencodeError, never anything else."""

from __future__ import annotations

import re
from typing import Any


def bencode(value: Any) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(item) for item in value) + b"e"
    if isinstance(value, dict):
        keys = [key.encode() if isinstance(key, str) else key for key in value]
        if len(set(keys)) != len(keys):
            raise TypeError("duplicate dictionary keys")
        items = sorted(zip(keys, value.values(), strict=True))
        return b"d" + b"".join(bencode(key) + bencode(item) for key, item in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


class BencodeError(ValueError):
    pass


def bdecode(data: bytes, max_depth: int = 8) -> Any:
    """Decode canonical bencoding only (sorted unique keys, no leading zeros); BencodeError otherwise."""
    value, end = _decode_at(data, 0, max_depth)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} trailing byte(s)")
    return value


def _decode_at(data: bytes, position: int, depth: int) -> tuple[Any, int]:
    if depth < 0:
        raise BencodeError("nested too deeply")
    if position >= len(data):
        raise BencodeError("truncated")
    lead = data[position : position + 1]
    if lead == b"i":
        end = data.find(b"e", position)
        if end < 0:
            raise BencodeError("unterminated integer")
        text = data[position + 1 : end]
        if not re.fullmatch(rb"0|-?[1-9][0-9]*", text):
            raise BencodeError(f"malformed integer {text[:20]!r}")
        return int(text), end + 1
    if lead.isdigit():
        colon = data.find(b":", position)
        if colon < 0:
            raise BencodeError("unterminated string length")
        text = data[position:colon]
        if not re.fullmatch(rb"0|[1-9][0-9]*", text):
            raise BencodeError(f"malformed string length {text[:20]!r}")
        length = int(text)
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError("string runs past the end")
        return data[colon + 1 : end], end
    if lead == b"l":
        items = []
        position += 1
        while data[position : position + 1] != b"e":
            item, position = _decode_at(data, position, depth - 1)
            items.append(item)
        return items, position + 1
    if lead == b"d":
        result: dict[bytes, Any] = {}
        position += 1
        previous: bytes | None = None
        while data[position : position + 1] != b"e":
            key, position = _decode_at(data, position, depth - 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            if previous is not None and key <= previous:
                raise BencodeError("dictionary keys not sorted or repeated")
            previous = key
            result[key], position = _decode_at(data, position, depth - 1)
        return result, position + 1
    raise BencodeError(f"unexpected byte {lead!r} at {position}")
