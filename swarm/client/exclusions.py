"""Peers this machine's output checks caught (`--verify`), kept in SWARM_HOME/excluded.json.

A peer the majority contradicted is excluded from this machine's routes for EXCLUSION_SECONDS, by every later
client on it (`swarm run`, `serve`, `batch`), and `swarm status` lists it. Entries expire because an address can
change hands and a peer can be fixed; a peer caught again is excluded again. `current` is the whole policy (pure);
the store only reads and writes the file, and a damaged file is read as empty: exclusions are a cache of what
checks found, never a reason to refuse to run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from swarm.catalog import write_atomically

EXCLUDED_FILE = "excluded.json"
EXCLUSION_SECONDS = 24 * 3600

log = logging.getLogger(__name__)


def current(entries: Mapping[str, Mapping[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """The entries (peer address → what caught it and when) still in force at `now`."""
    return {
        address: dict(entry)
        for address, entry in entries.items()
        if isinstance(entry, Mapping)
        and isinstance(entry.get("since"), int | float)
        and 0 <= now - entry["since"] < EXCLUSION_SECONDS
    }


def load_exclusions(home: Path, now: float | None = None) -> dict[str, dict[str, Any]]:
    path = home / EXCLUDED_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return {}
    peers = document.get("peers") if isinstance(document, dict) else None
    return current(peers if isinstance(peers, dict) else {}, time.time() if now is None else now)


def record_exclusions(home: Path, model: str, excluded: Iterable[Mapping[str, Any]]) -> None:
    """Add what one generation's checks excluded (StepChecker.excluded) to the file."""
    added = list(excluded)
    if not added:
        return
    now = time.time()
    peers = load_exclusions(home, now)
    for entry in added:
        peers[str(entry["peer"])] = {"model": model, "blocks": list(entry["blocks"]), "reason": entry["reason"],
                                     "since": now}  # fmt: skip
    try:
        home.mkdir(parents=True, exist_ok=True)
        write_atomically(home / EXCLUDED_FILE, (json.dumps({"peers": peers}, indent=1, sort_keys=True) + "\n").encode())
    except OSError as error:
        log.warning("cannot keep the excluded peers in %s: %s", home / EXCLUDED_FILE, error)
