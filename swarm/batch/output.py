"""A batch's files: the input, the output (records in input order) and its side file (records finished early).

A finished record is appended to the output as soon as every line before it is done, so the output always holds
results in input order; one that finished before an earlier line is appended to the side file `OUTPUT.partial` at
once (and to the output once the lines before it are done), so it survives a Ctrl-C, a SIGKILL or a crash.
A re-run reads both (`swarm.batch.policy.plan_resume`); the side file goes away when the output is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from swarm.batch.policy import InOrder, Resume
from swarm.errors import SwarmError


def side_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def read_input(path: Path) -> list[str]:
    """The input file's lines; SwarmError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SwarmError(f"cannot read the input {path}: {error}") from None


def read_records(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of an output or side file (none when it does not exist), and whether it ends cleanly: a last line
    cut short by a crash is left out (and the file is not clean). SwarmError for any other line that is not a
    record."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], True
    except OSError as error:
        raise SwarmError(f"cannot read {path}: {error}") from None
    lines = data.split(b"\n")
    # A file written whole ends with a newline: the last piece is then empty; otherwise it was cut short.
    clean = lines[-1] == b""
    records = []
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SwarmError(f"{path} line {number} is not a JSON record: it is not a swarm batch output") from None
        if not isinstance(record, dict):
            raise SwarmError(f"{path} line {number} is not a JSON object: it is not a swarm batch output")
        records.append(record)
    return records, clean


def record_text(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _replace(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write `records` to `path` at once: a temporary file renamed over it (never half a file)."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(record_text(record) for record in records)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class OutputFiles:
    """Appends finished records to the output in input order, and those that must wait for earlier lines to the side
    file meanwhile."""

    def __init__(self, output: Path, order: list[int], resume: Resume, output_clean: bool = True) -> None:
        self.output = output
        self.side = side_path(output)
        self.in_order = InOrder(order, len(resume.prefix), resume.held)
        if resume.held:
            # The held records first (the old output may be the only place that has them), then the output.
            _replace(self.side, resume.held.values())
        if resume.rewrite or not output_clean:
            _replace(self.output, resume.prefix)
        self._output: IO[str] = output.open("a", encoding="utf-8")
        self._side: IO[str] = self.side.open("a", encoding="utf-8")

    def write(self, line: int, record: dict[str, Any]) -> None:
        ready = self.in_order.add(line, record)
        if line not in self.in_order.held:
            self._write(ready)
            return
        # Held until the lines before it are done: on disk meanwhile, in the side file.
        self._side.write(record_text(record))
        self._side.flush()

    def _write(self, ready: list[dict[str, Any]]) -> None:
        if ready:
            self._output.writelines(record_text(record) for record in ready)
            self._output.flush()

    def close(self) -> None:
        """Flush both files to disk; the side file goes when nothing is held any more (all it has is in the output)."""
        for handle in (self._output, self._side):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        if not self.in_order.held:
            self.side.unlink(missing_ok=True)
