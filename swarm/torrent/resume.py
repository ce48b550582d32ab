"""Resume data: what libtorrent knows about a torrent's pieces, kept on disk so a restart does not re-download.

Files live in DATA/resume/<infohash>.resume. Resume data is only trusted when it agrees with the files on
disk (see `resume_agrees_with_disk`); otherwise libtorrent checks the files itself, which costs one hash pass
over the bytes present but never loses or trusts anything wrongly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt

log = logging.getLogger(__name__)

RESUME_SUFFIX = ".resume"


@dataclass(frozen=True)
class FileOnDisk:
    """One real (non-pad) file of a torrent: its pieces, the size it should have, and the size it has."""

    first_piece: int
    last_piece: int
    expected_size: int
    # None when the file does not exist.
    actual_size: int | None


def resume_agrees_with_disk(have_pieces: Sequence[bool], files: Sequence[FileOnDisk]) -> bool:
    """Whether resume data can be trusted instead of re-hashing the files.

    It can when every file on disk is complete and claimed whole by the resume data, and every piece the
    resume data claims belongs to a complete file. A file on disk whose pieces the resume data does not
    claim (a save that raced the finish, or a process killed between saves) means libtorrent should check
    the files: it then finds every piece that was written, so a kill loses nothing that was verified.
    """
    for file in files:
        pieces = range(file.first_piece, file.last_piece + 1)
        claimed = [index < len(have_pieces) and bool(have_pieces[index]) for index in pieces]
        present = file.actual_size is not None and file.actual_size > 0
        if present and not (all(claimed) and file.actual_size == file.expected_size):
            return False
        if any(claimed) and not (present and file.actual_size == file.expected_size):
            return False
    return True


def resume_path(resume_dir: Path, key: str) -> Path:
    return resume_dir / f"{key}{RESUME_SUFFIX}"


def files_on_disk(info: lt.torrent_info, save_path: Path) -> list[FileOnDisk]:
    layout = info.layout()
    length = layout.piece_length()
    files = []
    for index in range(layout.num_files()):
        if layout.file_flags(index) & lt.file_storage.flag_pad_file:
            continue
        size = layout.file_size(index)
        path = save_path / layout.file_path(index)
        try:
            actual: int | None = path.stat().st_size
        except OSError:
            actual = None
        offset = layout.file_offset(index)
        files.append(
            FileOnDisk(
                first_piece=offset // length,
                last_piece=(offset + max(size, 1) - 1) // length,
                expected_size=size,
                actual_size=actual,
            )
        )
    return files


def load_resume(path: Path, info: lt.torrent_info, save_path: Path) -> lt.add_torrent_params | None:
    """Parameters restored from resume data, or None when there is none or it cannot be trusted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read resume data %s: %s", path, error)
        return None
    try:
        params = lt.read_resume_data(data)
    except RuntimeError as error:
        log.warning("ignoring unreadable resume data %s: %s", path, error)
        return None
    if not _same_hashes(params, info):
        log.warning("ignoring resume data %s: it belongs to another torrent", path)
        return None
    if not resume_agrees_with_disk(list(params.have_pieces), files_on_disk(info, save_path)):
        log.info("resume data %s disagrees with the files on disk: libtorrent will check them", path)
        return None
    params.ti = info
    params.save_path = str(save_path)
    return params


def _same_hashes(params: lt.add_torrent_params, info: lt.torrent_info) -> bool:
    theirs = params.info_hashes
    ours = info.info_hashes()
    if ours.has_v2() and theirs.has_v2():
        return str(ours.v2) == str(theirs.v2)
    if ours.has_v1() and theirs.has_v1():
        return str(ours.v1) == str(theirs.v1)
    return False


def torrent_key(info: lt.torrent_info) -> str:
    """What a torrent is known by here (its resume file's name too): its v2 info hash, else its v1 one."""
    hashes = info.info_hashes()
    return str(hashes.v2) if hashes.has_v2() else str(hashes.v1)


def write_complete_resume(resume_dir: Path, torrent_data: bytes, save_path: Path) -> None:
    """Resume data saying every piece is here, for files this process has just hashed into this very torrent
    (publishing). Whoever seeds them next restores it, as after any run, instead of seed mode, which hashes each
    piece again the first time a peer asks for it (~1 CPU-s per GB uploaded, on the busiest node of a fresh swarm).
    Like any resume data it is trusted only while the files on disk have the sizes it expects."""
    info = lt.torrent_info(torrent_data)
    params = lt.add_torrent_params()
    params.ti = info
    params.info_hashes = info.info_hashes()
    params.save_path = str(save_path)
    params.have_pieces = [True] * info.num_pieces()
    write_resume(resume_path(resume_dir, torrent_key(info)), params)


def write_resume(path: Path, params: lt.add_torrent_params) -> None:
    """Write atomically: a kill mid-write leaves the previous resume file, never half of one."""
    data = lt.write_resume_data_buf(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
