"""swarm: BitTorrent-backed model distribution and compute swarm."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`swarm.__version__`, read only when asked: importlib.metadata costs every command ~60 ms of start-up."""
    if name != "__version__":
        raise AttributeError(f"module 'swarm' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarm")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
