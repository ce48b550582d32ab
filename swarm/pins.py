"""Trust on first use: the publisher key each model name resolved to, kept in SWARM_HOME/pins.json.

A plain name found on the DHT could have been announced by anyone. The first publisher key a name resolves
to is pinned (as SSH pins host keys). While the pinned publisher's own record is found, the pin wins over
whatever the name slot holds (with a warning naming the rival); when only another key's record is found, the
key changed: refused with a loud warning, unless the user names the key (`name@fingerprint`) or accepts the
change (--accept-new-key).
`decide` is the whole policy, a pure function; `PinStore` only reads and writes the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from swarm.errors import SwarmError
from swarm.signing import fingerprint

PINS_FILE = "pins.json"
PINS_FORMAT = 1

# What resolution does with the key `decide` picked.
USE = "use"  # the pinned key (or the named one, already pinned): nothing to write
PIN = "pin"  # first use: remember the key
REPIN = "repin"  # the user named or accepted another key: replace the pin
REFUSE = "refuse"  # stop: the message says why and what to do
NOT_FOUND = "not_found"  # nothing usable yet: keep looking until the deadline


@dataclass(frozen=True)
class PinDecision:
    action: str
    publisher_key: str | None = None
    # A warning for stderr (USE/PIN/REPIN) or the reason for refusing (REFUSE).
    message: str | None = None


def decide(
    name: str,
    requested_fingerprint: str | None,
    pinned_key: str | None,
    announced_key: str | None,
    other_keys: Sequence[str] = (),
    pinned_record_found: bool = False,
    accept_new_key: bool = False,
) -> PinDecision:
    """Which publisher key to trust for `name`.

    announced_key: the key of the verified record under the name's own DHT slot (the one anyone finds).
    other_keys: keys of other verified records found for the name (fingerprint slots: the one asked for, and those
    of the name's claimants).
    pinned_record_found: the pinned publisher's own record was found (only that publisher can write it).
    """
    if requested_fingerprint is not None:
        return _decide_named(name, requested_fingerprint, pinned_key, announced_key, other_keys, pinned_record_found)
    if pinned_key is None:
        return _decide_first_use(name, [key for key in (announced_key, *other_keys) if key is not None])
    if announced_key is None or announced_key == pinned_key:
        if announced_key is None and not pinned_record_found:
            return PinDecision(NOT_FOUND)
        return PinDecision(USE, pinned_key)
    old, new = fingerprint(pinned_key), fingerprint(announced_key)
    if pinned_record_found and not accept_new_key:
        # Anyone can write the name slot; the pinned publisher's own slot says it still publishes the name, so
        # another key there is a rival claimant, not a key change, and must not take the name from the pin.
        return PinDecision(
            USE,
            pinned_key,
            f"WARNING: {name} is also published by {new}; using {old}, pinned on first use ({name}@{new} picks "
            f"the other)",
        )
    if accept_new_key:
        return PinDecision(
            REPIN,
            announced_key,
            f"WARNING: the publisher key of {name} changed from {old} to {new}; accepted (--accept-new-key), "
            f"now pinned to {new}",
        )
    return PinDecision(
        REFUSE,
        None,
        f"WARNING: {name} is now signed by publisher {new}, but {old} was pinned for it on first use. "
        f"Someone may be impersonating the publisher, or the publisher changed keys. Refusing; if you trust "
        f"the new key, use {name}@{new} or --accept-new-key",
    )


def _decide_first_use(name: str, keys: Sequence[str]) -> PinDecision:
    """Nothing pinned: the one key found is pinned; records from several keys are refused (a squatter or a name
    clash), listing them, because whichever the name slot holds now is only whoever put last."""
    distinct = list(dict.fromkeys(keys))
    if not distinct:
        return PinDecision(NOT_FOUND)
    if len(distinct) > 1:
        listed = ", ".join(sorted(fingerprint(key) for key in distinct))
        return PinDecision(
            REFUSE,
            None,
            f"WARNING: {name} is published by {len(distinct)} different keys ({listed}) and none is pinned here, "
            f"so which one is meant cannot be told. Refusing; name the publisher you trust: "
            f"{name}@{fingerprint(distinct[0])}",
        )
    return PinDecision(
        PIN,
        distinct[0],
        f"pinning publisher {fingerprint(distinct[0])} for {name} on first use "
        f"(later records signed by another key will be refused)",
    )


def _decide_named(
    name: str,
    requested: str,
    pinned_key: str | None,
    announced_key: str | None,
    other_keys: Sequence[str],
    pinned_record_found: bool,
) -> PinDecision:
    candidates = [announced_key, *other_keys]
    if pinned_record_found:
        candidates.append(pinned_key)
    for key in candidates:
        if key is not None and fingerprint(key) == requested:
            if key == pinned_key:
                return PinDecision(USE, key)
            if pinned_key is None:
                return PinDecision(PIN, key, f"pinning publisher {requested} for {name}, as {name}@{requested} asked")
            return PinDecision(
                REPIN,
                key,
                f"WARNING: replacing the pinned publisher {fingerprint(pinned_key)} of {name} with {requested}, "
                f"as {name}@{requested} asked",
            )
    if announced_key is not None or pinned_record_found:
        publisher = fingerprint(announced_key) if announced_key is not None else fingerprint(pinned_key or "")
        return PinDecision(
            REFUSE,
            None,
            f"no record of {name} signed by publisher {requested} was found; {name} is published by {publisher}",
        )
    return PinDecision(NOT_FOUND)


@dataclass
class PinStore:
    """The pins file: {"format_version": 1, "pins": {NAME: {"publisher_key", "pinned", "updated"}}}.

    Unknown top-level and per-pin fields are kept, so a newer swarm's additions survive a rewrite.
    """

    path: Path
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, home: Path) -> PinStore:
        path = home / PINS_FILE
        if not path.exists():
            return cls(path)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SwarmError(f"cannot read the key pins {path}: {error}") from error
        if not isinstance(record, dict) or not isinstance(record.get("pins", {}), dict):
            raise SwarmError(f"{path} is not a pins file (expected an object with 'pins')")
        version = record.get("format_version", PINS_FORMAT)
        if type(version) is not int or version > PINS_FORMAT:
            raise SwarmError(f"{path} has pins format {version!r}, newer than this swarm reads ({PINS_FORMAT})")
        pins = {}
        for name, entry in record.get("pins", {}).items():
            key = entry.get("publisher_key") if isinstance(entry, dict) else None
            if not (isinstance(key, str) and len(key) == 64 and _is_hex(key)):
                raise SwarmError(f"{path}: the pin of {name!r} has no valid publisher_key")
            pins[name] = dict(entry)
        unknown = {key: value for key, value in record.items() if key not in ("format_version", "pins")}
        return cls(path, pins, unknown)

    def get(self, name: str) -> str | None:
        entry = self.pins.get(name)
        return str(entry["publisher_key"]) if entry else None

    def set(self, name: str, publisher_key: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        entry = dict(self.pins.get(name, {}))
        if entry.get("publisher_key") != publisher_key:
            entry["pinned"] = now
        entry.update(publisher_key=publisher_key, fingerprint=fingerprint(publisher_key), updated=now)
        self.pins[name] = entry

    def save(self) -> None:
        record = dict(self.unknown)
        record.update(format_version=PINS_FORMAT, pins=self.pins)
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(text)
            temporary.replace(self.path)
        except OSError as error:
            raise SwarmError(f"cannot write the key pins {self.path}: {error.strerror}") from error


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
