"""Bencoding (BEP 3) through libtorrent's own codec, strict: a decoded value re-encodes to exactly the bytes it
came from, which is what lets a signature over bencoded bytes (name records, BEP 44 items) be checked after a
round trip. Everything decoded here comes from the network: malformed input raises BencodeError, never anything
else.

libtorrent's binding is lenient both ways (docs/design.md, "bencode through libtorrent"): `bdecode` ignores
trailing bytes, leading zeros and `-0`, accepts unsorted and repeated keys and wraps integers past 63 bits to 0;
`bencode` turns None, floats and unknown objects into empty strings, booleans into integers and drops one of two
keys that differ only in being str or bytes. So values are checked before encoding, and a decoded value is
encoded again and compared with its input, which refuses every non-canonical form at once."""

from __future__ import annotations

from typing import Any

import libtorrent as lt

# libtorrent's entry holds a signed 64-bit integer.
INT_LOW, INT_HIGH = -(2**63), 2**63 - 1


class BencodeError(ValueError):
    pass


def bencode(value: Any) -> bytes:
    """Encode ints, bytes, str (as UTF-8), lists, tuples and dicts with str or bytes keys; TypeError for
    anything else (booleans included), OverflowError for integers libtorrent cannot hold."""
    return bytes(lt.bencode(_plain(value)))


def _plain(value: Any) -> Any:
    """`value` in the only shapes libtorrent encodes faithfully: int, bytes, list and dict with bytes keys."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        if not INT_LOW <= value <= INT_HIGH:
            raise OverflowError(f"bencode integers are 64-bit in libtorrent: {value}")
        return value
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        plain: dict[bytes, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str | bytes):
                raise TypeError(f"dictionary key is {type(key).__name__}, not a string")
            raw_key = key.encode() if isinstance(key, str) else key
            if raw_key in plain:
                raise TypeError("duplicate dictionary keys")
            plain[raw_key] = _plain(item)
        return plain
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, max_depth: int = 8) -> Any:
    """Decode canonical bencoding only (sorted unique keys, no leading zeros, nothing after the value, lists and
    dicts nested at most `max_depth` deep below the top); BencodeError otherwise."""
    if not isinstance(data, bytes):
        raise BencodeError(f"expected bytes, got {type(data).__name__}")
    try:
        value = lt.bdecode(data)
    except RuntimeError as error:  # the binding's way of saying "malformed"
        raise BencodeError(str(error)) from None
    if value is None:  # what older bindings returned for malformed input
        raise BencodeError("malformed")
    _check_depth(value, max_depth)
    canonical = bytes(lt.bencode(value))
    if canonical != data:
        if data.startswith(canonical):
            raise BencodeError(f"{len(data) - len(canonical)} trailing byte(s)")
        raise BencodeError("not canonical (leading zeros, -0, unsorted or repeated keys, or integer overflow)")
    return value


def _check_depth(value: Any, depth: int) -> None:
    """Each list or dict level uses one step of `depth`; a value found after the last step is refused."""
    if depth < 0:
        raise BencodeError("nested too deeply")
    if isinstance(value, list):
        for item in value:
            _check_depth(item, depth - 1)
    elif isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth - 1)
