"""The one settings object: every default lives here; environment variables and CLI flags override it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TORRENT_FORMATS = ("v2", "hybrid", "v1")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.replace(";", ",").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Defaults for every command. Paths left as None derive from `home`."""

    home: Path = field(default_factory=lambda: Path("~/.swarm").expanduser())
    catalog_dir: Path | None = None
    data_dir: Path | None = None
    # BitTorrent listen address (host:port); port 0 lets the OS pick one.
    torrent_listen: str = "0.0.0.0:6881"
    # ZeroMQ ROUTER address of a compute peer.
    compute_listen: str = "127.0.0.1:5555"
    # HTTP status endpoint of a seedbox.
    status_listen: str = "127.0.0.1:8700"
    bootstrap: tuple[str, ...] = ()
    torrent_format: str = "v2"
    blocks_per_chunk: int = 1
    # 0 picks a piece size from the model size (see torrent.create.choose_piece_length).
    piece_length: int = 0
    # Seconds a command waits on the network before it gives up with a message.
    network_timeout: float = 30.0
    # Seconds between periodic resume-data saves.
    resume_interval: float = 30.0

    @property
    def catalog(self) -> Path:
        return self.catalog_dir if self.catalog_dir is not None else self.home / "torrents"

    @property
    def data(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.home / "data"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def models_dir(self) -> Path:
        """Parent of every model's chunk directory: chunk files live in models_dir()/NAME/."""
        return self.data / "models"

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply CLI flags; a value of None means the flag was not given."""
        given = {key: value for key, value in overrides.items() if value is not None and value != ()}
        for key in ("home", "catalog_dir", "data_dir"):
            if key in given:
                given[key] = Path(given[key]).expanduser()
        return dataclasses.replace(self, **given)


# Environment variable → settings field, with the parser for its text.
ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "SWARM_HOME": ("home", lambda text: Path(text).expanduser()),
    "SWARM_CATALOG": ("catalog_dir", lambda text: Path(text).expanduser()),
    "SWARM_DATA": ("data_dir", lambda text: Path(text).expanduser()),
    "SWARM_TORRENT_LISTEN": ("torrent_listen", str),
    "SWARM_LISTEN": ("compute_listen", str),
    "SWARM_STATUS_LISTEN": ("status_listen", str),
    "SWARM_BOOTSTRAP": ("bootstrap", _split_list),
    "SWARM_TORRENT_FORMAT": ("torrent_format", str),
    "SWARM_NETWORK_TIMEOUT": ("network_timeout", float),
}


def load_settings(environment: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by SWARM_* environment variables."""
    environment = os.environ if environment is None else environment
    values: dict[str, Any] = {}
    for variable, (field_name, parse) in ENVIRONMENT.items():
        text = environment.get(variable)
        if text:
            values[field_name] = parse(text)
    return Settings(**values)


def parse_host_port(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); raises ValueError with a readable message."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host.strip("[]"), port
