"""BitTorrent v2's hashes of a file (BEP 52), with hashlib: SHA-256 of every 16 KiB block, combined pairwise up a
binary tree whose missing leaves are zeros. The root names the file's content whatever the piece length (a
manifest's chunk hash, and the "pieces root" of a v2 torrent); the layer whose nodes each cover one piece is what a
torrent lists for files longer than a piece.

Written here rather than taken from libtorrent because its Python binding cannot be handed precomputed v2 hashes
(it has no `set_hash2`): hashing while the chunk files are written needs hashes of our own (see docs/design.md).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

# BitTorrent's block size: the leaves of the tree.
BLOCK_LENGTH = 16 * 1024
# Reads of this many bytes (a whole number of blocks) while hashing a file.
_READ_LENGTH = 256 * BLOCK_LENGTH
_ZERO = bytes(32)
# The piece length file_root reads with (BitTorrent's largest usual one; any power of two gives the same root).
_ROOT_PIECE_LENGTH = 16 * 1024 * 1024


@dataclass(frozen=True)
class FileHashes:
    """A file's size, its merkle root (empty for an empty file), and its piece layer (empty for a file of at most
    one piece), for one piece length."""

    size: int
    root: bytes
    piece_layer: bytes


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def tree_root(nodes: list[bytes], width: int, pad: bytes = _ZERO) -> bytes:
    """The root of a tree of `width` (a power of two) leaves: `nodes` first, then leaves equal to `pad` (as if the
    file went on with zeros: each level's padding is the hash of an all-zero subtree of its height)."""
    while width > 1:
        if len(nodes) % 2:
            nodes = [*nodes, pad]
        nodes = [_sha256(nodes[index] + nodes[index + 1]) for index in range(0, len(nodes), 2)]
        pad = _sha256(pad + pad)
        width //= 2
    return nodes[0] if nodes else pad


def _power_of_two_at_least(count: int) -> int:
    return 1 << max(count - 1, 0).bit_length()


def file_hashes(path: Path, piece_length: int) -> FileHashes:
    """A file's hashes for `piece_length`, read once. Pieces are subtrees of piece_length / BLOCK_LENGTH leaves, so
    only one piece's leaves and the piece hashes are held at a time, whatever the file's size."""
    per_piece = piece_length // BLOCK_LENGTH
    pieces: list[bytes] = []
    leaves: list[bytes] = []
    size = 0
    buffer = bytearray(_READ_LENGTH)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while read := _fill(handle, view):
            size += read
            for start in range(0, read, BLOCK_LENGTH):
                leaves.append(_sha256(view[start : min(start + BLOCK_LENGTH, read)]))
                if len(leaves) == per_piece:
                    pieces.append(tree_root(leaves, per_piece))
                    leaves = []
    if size == 0:
        return FileHashes(0, b"", b"")
    if size <= piece_length:
        # At most one piece: the tree is as wide as the file's blocks, and a torrent lists no piece layer.
        return FileHashes(size, pieces[0] if pieces else tree_root(leaves, _power_of_two_at_least(len(leaves))), b"")
    if leaves:
        pieces.append(tree_root(leaves, per_piece))
    root = tree_root(pieces, _power_of_two_at_least(len(pieces)), tree_root([], per_piece))
    return FileHashes(size, root, b"".join(pieces))


def _fill(handle: io.RawIOBase, view: memoryview) -> int:
    """Read until `view` is full or the file ends (a read may return less), so blocks never straddle reads."""
    filled = 0
    while filled < len(view) and (read := handle.readinto(view[filled:])):
        filled += read
    return filled


def file_root(path: Path) -> str:
    """A file's merkle root in hex (what a manifest records for a chunk); empty for an empty file. The root is the
    same for any piece length: the largest keeps the fewest piece hashes in memory."""
    return file_hashes(path, _ROOT_PIECE_LENGTH).root.hex()
