"""The one address type: HOST:PORT as users type it (flags, settings), as the DHT hands it out, and as the
compute protocol carries it (tcp://HOST:PORT). A compute address may end in the CURVE key of the peer listening
there (HOST:PORT/KEY, the key's 32 bytes in hex): whoever connects to it encrypts to that key, so only its holder can
answer. Parsing lives here and nowhere else."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from zmq.utils import z85

from swarm.errors import SwarmError

TCP_SCHEME = "tcp://"
_HOSTNAME_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_HOSTNAME_LABEL}(?:\.{_HOSTNAME_LABEL})*|[0-9A-Fa-f:.]{{2,45}}|\*)")
MAX_ADDRESS_CHARS = 256
_KEY_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Address:
    """A host (name, IPv4 or bare IPv6 literal), a port, and the CURVE public key (Z85) of who listens there ("":
    whoever answers with the swarm's shared key)."""

    host: str
    port: int
    key: str = ""

    @classmethod
    def parse(cls, text: object, what: str = "address") -> Address:
        """'host:port', '[v6]:port' or 'tcp://host:port', each optionally followed by '/KEY' (64 hex digits);
        SwarmError naming `what` otherwise."""
        if not isinstance(text, str):
            raise SwarmError(f"bad {what}: expected HOST:PORT, got {type(text).__name__}")
        if len(text) > MAX_ADDRESS_CHARS:
            raise SwarmError(f"bad {what}: longer than {MAX_ADDRESS_CHARS} characters")
        body, slash, key_hex = text.removeprefix(TCP_SCHEME).partition("/")
        if slash and not _KEY_HEX.fullmatch(key_hex):
            raise SwarmError(f"bad {what}: the key after '/' must be 64 hex digits in {text[:80]!r}")
        host, separator, port_text = body.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            separator = ""  # a bare IPv6 literal needs brackets before its port
        if not separator or not port_text.isdigit() or not _HOST.fullmatch(host):
            raise SwarmError(f"bad {what}: expected HOST:PORT, got {text[:80]!r}")
        port = int(port_text)
        if port > 65535:
            raise SwarmError(f"bad {what}: port {port} is out of range in {text[:80]!r}")
        return cls(host, port, z85.encode(bytes.fromhex(key_hex)).decode("ascii") if slash else "")

    @classmethod
    def of(cls, pair: tuple[object, object]) -> Address:
        """From a (host, port) pair such as libtorrent returns."""
        return cls(str(pair[0]), int(str(pair[1])))

    def __str__(self) -> str:
        suffix = "/" + z85.decode(self.key).hex() if self.key else ""
        return (f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}") + suffix

    @property
    def tcp(self) -> str:
        """The compute protocol's spelling (with the key, when there is one)."""
        return TCP_SCHEME + str(self)

    @property
    def endpoint(self) -> str:
        """ZeroMQ's spelling: tcp://HOST:PORT, without the key."""
        return Address(self.host, self.port).tcp

    def with_key(self, key: str) -> Address:
        return Address(self.host, self.port, key)

    @property
    def pair(self) -> tuple[str, int]:
        return self.host, self.port

    def with_port(self, port: int) -> Address:
        return Address(self.host, port)

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::", "*")

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_all(texts: str | Iterable[object], what: str) -> list[Address]:
    """Every HOST:PORT of a flag given several times (SwarmError naming the first bad one)."""
    return [Address.parse(text, what) for text in ([texts] if isinstance(texts, str) else texts)]


def local_host_towards(host: str) -> str:
    """The local IP address this machine sends from to reach `host` (no packet is sent): the address a
    peer at `host` can answer to. Falls back to 127.0.0.1 when no route is known."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
