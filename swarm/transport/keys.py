"""Keys of a private swarm: CurveZMQ key pairs derived from a secret every member holds.

All members derive the same two key pairs from the secret: one every ROUTER serves with, one every DEALER
connects with. CURVE's handshake never sends the server's public key (a client must know it and encrypts its
HELLO to it), so whoever lacks the secret cannot complete a handshake with any member, and traffic between
members is encrypted and authenticated by libzmq (libsodium). The secret is stretched with HKDF; it must be long
(see MIN_SECRET_CHARS) because a captured handshake lets an outsider test guesses offline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zmq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from zmq.utils import z85

from swarm.errors import SwarmError

MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class SwarmKeys:
    """The CURVE key pairs (Z85 text) of one private swarm."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_secret(cls, secret: str) -> SwarmKeys:
        if len(secret) < MIN_SECRET_CHARS:
            raise SwarmError(
                f"a swarm secret must be at least {MIN_SECRET_CHARS} characters (it has {len(secret)}): use a long "
                "random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        server_public, server_secret = _derived_pair(secret, b"server")
        client_public, client_secret = _derived_pair(secret, b"client")
        return cls(server_public, server_secret, client_public, client_secret)

    @property
    def fingerprint(self) -> str:
        """A short name of the swarm (of its server key), safe to show: it says nothing about the secret."""
        return hashlib.sha256(self.server_public).hexdigest()[:16]


def _derived_pair(secret: str, label: bytes) -> tuple[bytes, bytes]:
    """A CURVE key pair from the secret: 32 bytes from HKDF-SHA256 are the secret key (libsodium clamps them)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"swarm/private-swarm/v1", info=b"curve/" + label)
    secret_key = z85.encode(derived.derive(secret.encode("utf-8")))
    return zmq.curve_public(secret_key), secret_key


def secret_from_file(path: str) -> SwarmKeys:
    """The keys of the private swarm whose secret is the text of the file at `path` (surrounding blanks ignored)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise SwarmError(f"cannot read the swarm secret file {path}: {error}") from error
    return SwarmKeys.from_secret(text)
