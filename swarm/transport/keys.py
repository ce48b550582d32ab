"""Keys of a swarm: CurveZMQ key pairs derived from a secret every member holds, or from a phrase anyone knows.

Private swarms: all members derive the same two key pairs from the secret: one every ROUTER serves with, one every DEALER
connects with. CURVE's handshake never sends the server's public key (a client must know it and encrypts its
HELLO to it), so whoever lacks the secret cannot complete a handshake with any member, and traffic between
members is encrypted and authenticated by libzmq (libsodium). The secret is stretched with HKDF; it must be long
(see MIN_SECRET_CHARS) because a captured handshake lets an outsider test guesses offline.

Public swarms (the default) derive the same two pairs from PUBLIC_SWARM_PHRASE, which is no secret. They keep no
one out, but CurveZMQ still encrypts every message: each connection agrees short-term keys of its own (the server's
long-term key only signs for them), so an onlooker who knows every long-term key still reads nothing, past or
present. What they do not stop is an attacker *on* the path who answers as the peer (see docs/design.md, Trust).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import zmq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from zmq.utils import z85

from swarm.errors import SwarmError

MIN_SECRET_CHARS = 16
# What every node of a public swarm derives its keys from: the same for all, so any two nodes can talk.
PUBLIC_SWARM_PHRASE = "swarm/public-swarm/v1: these keys encrypt, they do not keep anyone out"
# This node's own CURVE key pair as a member (Z85 secret key), in SWARM_HOME/keys/: what allow-lists name.
MEMBER_KEY_FILE = "member.key"
Z85_KEY_CHARS = 40


@dataclass(frozen=True)
class SwarmKeys:
    """The CURVE key pairs (Z85 text) of one private swarm."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    # The member keys a server admits (--allow), or None: every member (whoever knows the server key).
    allowed: frozenset[bytes] | None = None
    # Whether the keys come from a secret (a private swarm) or from PUBLIC_SWARM_PHRASE.
    private: bool = True
    # Whether the client pair is this node's own (with_member) rather than the one every member derives.
    member: bool = False

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

    @classmethod
    def public(cls) -> SwarmKeys:
        """The keys of public swarms: encrypted connections that admit anyone."""
        return replace(cls.from_secret(PUBLIC_SWARM_PHRASE), private=False)

    def with_member(self, public: bytes, secret: bytes) -> SwarmKeys:
        """The same swarm, connecting with this node's own key pair (which allow-lists name) instead of the shared
        one: a server that lists no keys admits either."""
        return replace(self, client_public=public, client_secret=secret, member=True)

    @property
    def own_listener_pair(self) -> tuple[bytes, bytes] | None:
        """The pair a public swarm's node also listens with (its member pair), so that a client that learnt that key
        is answered by this node alone; None where the shared server key already does that (a private swarm's
        secret) or no own pair is known."""
        return (self.client_public, self.client_secret) if self.member and not self.private else None

    def with_allowed(self, keys: frozenset[bytes]) -> SwarmKeys:
        return replace(self, allowed=keys)

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


def member_keypair(keys_dir: Path) -> tuple[bytes, bytes]:
    """This node's member key pair (public, secret; Z85), made once and kept in `keys_dir` (readable by the owner
    only)."""
    path = keys_dir / MEMBER_KEY_FILE
    try:
        if not path.exists():
            _make_member_key(path)
        secret = path.read_bytes().strip()
    except OSError as error:
        raise SwarmError(f"cannot read or make this node's member key {path}: {error.strerror}") from error
    if len(secret) != Z85_KEY_CHARS:
        raise SwarmError(f"{path} does not hold a member key (40 Z85 characters); remove it to make a new one")
    return zmq.curve_public(secret), secret


def _make_member_key(path: Path) -> None:
    """Write a new key to `path` unless another process got there first: written whole to a file of its own, then
    linked into place, so processes of one home started together all read the same complete key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _, secret = zmq.curve_keypair()
    draft = path.with_name(f"{path.name}.{os.getpid()}.new")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret + b"\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        pass  # another process's key is the one
    finally:
        draft.unlink()


def read_allow_list(path: str) -> frozenset[bytes]:
    """The member public keys in the file at `path`: one per line (as `swarm key` prints them), each may be followed
    by a `#` comment; blank lines and lines of comment are ignored. (`#` is a Z85 character: a key may hold one,
    though never as its first character, so a comment is a word that starts with `#`.)"""
    try:
        with open(path, encoding="ascii") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SwarmError(f"cannot read the allow-list {path}: {error}") from error
    keys = set()
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not is_member_key(words[0]) or (len(words) > 1 and not words[1].startswith("#")):
            raise SwarmError(f"{path}, line {number}: not a member key (40 Z85 characters, as swarm key prints)")
        keys.add(words[0].encode("ascii"))
    return frozenset(keys)


def is_member_key(text: str) -> bool:
    """Whether `text` is a CURVE public key in Z85 (40 characters for 32 bytes)."""
    try:
        return len(text) == Z85_KEY_CHARS and len(z85.decode(text)) == 32
    except (ValueError, KeyError, struct.error):  # a length, a character or a value Z85 does not have
        return False
