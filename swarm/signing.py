"""The publisher's ed25519 key: created once under SWARM_HOME, reused; signing and verification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from swarm.errors import SwarmError

KEY_FILE = "publisher.pem"


def load_key(keys_dir: Path) -> Ed25519PrivateKey | None:
    """This home's publisher key, or None when it has none yet."""
    path = keys_dir / KEY_FILE
    if not path.exists():
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise SwarmError(f"cannot read the publisher key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise SwarmError(f"{path} is not an ed25519 private key")
    return key


def load_or_create_key(keys_dir: Path) -> Ed25519PrivateKey:
    existing = load_key(keys_dir)
    if existing is not None:
        return existing
    path = keys_dir / KEY_FILE
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        keys_dir.mkdir(parents=True, exist_ok=True)
        # Created with owner-only permissions from the start, never world-readable for a moment.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    except OSError as error:
        raise SwarmError(f"cannot write the publisher key {path}: {error}") from error
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def private_seed(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte seed, from which libtorrent derives the same key pair for BEP 44 items."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def fingerprint(public_key: str) -> str:
    """A short, stable name for a public key (hex): the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(bytes.fromhex(public_key)).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def verify(public_key: str, signature: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
