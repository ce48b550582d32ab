"""swarm: BitTorrent-backed model distribution and compute swarm."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swarm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
