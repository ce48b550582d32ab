"""Adding a torrent to fetch a subset of its files: file priorities, and resume data when it can be trusted."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt

from swarm.errors import SwarmError
from swarm.torrent.resume import load_resume

# libtorrent's priorities: 0 skips a file, 4 is the default for wanted ones.
SKIP = 0
WANTED = 4


@dataclass(frozen=True)
class TorrentFile:
    path: str
    is_pad: bool


def file_priorities(files: Sequence[TorrentFile], wanted: Collection[str]) -> list[int]:
    """One priority per file of the torrent, pad files included (libtorrent wants them all).

    Pad files are skipped: libtorrent never writes them, and each chunk file owns whole pieces, so no
    wanted piece depends on another file's bytes.
    """
    real = {file.path for file in files if not file.is_pad}
    unknown = sorted(set(wanted) - real)
    if unknown:
        raise SwarmError(
            f"the torrent has no file {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if unknown[1:] else "")
        )
    return [WANTED if not file.is_pad and file.path in wanted else SKIP for file in files]


def torrent_files(info: lt.torrent_info) -> list[TorrentFile]:
    layout = info.layout()
    return [
        TorrentFile(path=layout.file_path(index), is_pad=bool(layout.file_flags(index) & lt.file_storage.flag_pad_file))
        for index in range(layout.num_files())
    ]


def _fresh_params(info: lt.torrent_info, save_path: Path) -> lt.add_torrent_params:
    """Add parameters for a torrent with no resume data."""
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = str(save_path)
    return params


def fetch_params(
    info: lt.torrent_info, save_path: Path, wanted: Collection[str], resume_file: Path | None
) -> tuple[lt.add_torrent_params, bool]:
    """Parameters for fetching `wanted` files into save_path, and whether resume data was restored."""
    priorities = file_priorities(torrent_files(info), wanted)
    params = load_resume(resume_file, info, save_path) if resume_file is not None else None
    restored = params is not None
    if params is None:
        # Without resume data libtorrent checks whatever files exist: chunks already on disk are not re-fetched.
        params = _fresh_params(info, save_path)
    params.file_priorities = priorities
    # Resume data also carries piece priorities, which would override the file priorities chosen now.
    params.piece_priorities = []
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    params.flags &= ~lt.torrent_flags.upload_mode
    return params, restored


def seed_params(info: lt.torrent_info, save_path: Path, resume_file: Path | None) -> tuple[lt.add_torrent_params, bool]:
    """Parameters for seeding a complete set: resume data when it agrees with the disk, else seed mode."""
    params = load_resume(resume_file, info, save_path) if resume_file is not None else None
    restored = params is not None
    if params is None:
        params = _fresh_params(info, save_path)
        # Seed mode checks each piece the first time a peer asks for it, instead of all of them up front.
        params.flags |= lt.torrent_flags.seed_mode
    # No file priorities here: a zero priority (even on a pad file) takes a torrent out of seed mode.
    params.file_priorities = []
    params.piece_priorities = []
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    return params, restored
