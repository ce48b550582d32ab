"""A DHT node driven by JSON lines on stdin, for tests and experiments with swarm discovery on 127.0.0.1.

    python tools/dht_node.py [--bootstrap HOST:PORT ...]

Prints {"event": "ready", "port": P} once its session listens, then answers one JSON line per command:

    {"op": "wait_dht", "timeout": S}                       → {"ok": true, "nodes": N}
    {"op": "announce_compute", "manifest": PATH, "port": P} → {"ok": true}
    {"op": "find_compute", "manifest": PATH, "timeout": S}  → {"ok": true, "peers": [[HOST, PORT], ...]}
    {"op": "put_name_slot", "name": N, "value_hex": HEX}     → {"ok": true, "confirmed": BOOL}
        (puts raw bytes under the name's derived key: how a forger would overwrite the name pointer)
    {"op": "get_name_slot", "name": N, "timeout": S}        → {"ok": true, "value_hex": HEX | null}
    {"op": "get_claims", "name": N, "timeout": S}           → {"ok": true, "fingerprints": [FP, ...]}
    {"op": "hold", "home": SWARM_HOME, "name": N}           → {"ok": true, "bundle": HASH, "record": BOOL}
        (hold_name for a model in that home's catalog: seed its record bundle, announce, keep the record up)
    {"op": "refresh"}                                       → {"ok": true}
        (publish everything held or announced again now)
    {"op": "quit"}

Errors come back as {"ok": false, "error": "..."}. Between commands the node keeps pumping its alerts.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm.address import Address, parse_all  # noqa: E402
from swarm.config import load_settings  # noqa: E402
from swarm.discovery.claims import decode_claims  # noqa: E402
from swarm.discovery.compute import announce_compute_peer, find_compute_peers  # noqa: E402
from swarm.discovery.keeper import hold_name  # noqa: E402
from swarm.discovery.slots import claims_slot, name_keypair, name_slot  # noqa: E402
from swarm.errors import SwarmError  # noqa: E402
from swarm.manifest import load_manifest  # noqa: E402
from swarm.torrent import dht  # noqa: E402
from swarm.torrent.presence import Presence  # noqa: E402
from swarm.torrent.session import TorrentNode  # noqa: E402


def handle(node: TorrentNode, presence: Presence, command: dict[str, Any]) -> dict[str, Any]:
    operation = command.get("op")
    if operation == "wait_dht":
        counters = dht.wait_for_dht(node, float(command.get("timeout", 30)))
        return {"nodes": counters.nodes, "messages_in": counters.messages_in}
    if operation == "announce_compute":
        announce_compute_peer(presence, load_manifest(Path(command["manifest"])), int(command["port"]))
        presence.publish()
        return {}
    if operation == "find_compute":
        manifest = load_manifest(Path(command["manifest"]))
        peers = find_compute_peers(node, manifest, float(command.get("timeout", 30)))
        return {"peers": [list(peer.pair) for peer in peers]}
    if operation == "put_name_slot":
        pair = name_keypair(command["name"])
        confirmed = dht.put_mutable_items(node, [(pair, b"", bytes.fromhex(command["value_hex"]))], 30.0)
        return {"confirmed": all(confirmed.values())}
    if operation == "get_name_slot":
        slot = name_slot(command["name"])
        items = dht.get_mutable_items(node, [slot], float(command.get("timeout", 10)))
        item = items[slot]
        return {"value_hex": item.value.hex() if item else None}
    if operation == "get_claims":
        slot = claims_slot(command["name"])
        item = dht.get_mutable_items(node, [slot], float(command.get("timeout", 10)))[slot]
        return {"fingerprints": list(decode_claims(item.value if item else None))}
    if operation == "hold":
        settings = load_settings().with_overrides(home=command["home"])
        manifest = load_manifest(settings.catalog / f"{command['name']}.json")
        held = hold_name(node, presence, manifest, settings)
        if held is None:
            raise SwarmError(f"{command['name']} is not in the catalog of {command['home']}")
        presence.publish()
        return {"bundle": held.bundle.info_hash, "record": held.record is not None}
    if operation == "refresh":
        presence.publish()
        return {}
    raise SwarmError(f"unknown op {operation!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", action="append", default=[], help="DHT bootstrap node HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0")
    arguments = parser.parse_args()
    node = TorrentNode(Address.parse(arguments.listen, "--listen"), parse_all(arguments.bootstrap, "--bootstrap"))
    # A plain DHT node: what it holds travels through libtorrent's lookups only, never stored directly.
    presence = Presence(node, load_settings().announce_interval, direct=False)
    print(json.dumps({"event": "ready", "port": node.listen_port}), flush=True)
    commands: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line)
        commands.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        node.pump(0.1)
        presence.tick()
        try:
            line = commands.get_nowait()
        except queue.Empty:
            continue
        if line is None:
            break
        try:
            command = json.loads(line)
            if command.get("op") == "quit":
                break
            reply = {"ok": True} | handle(node, presence, command)
        except (SwarmError, ValueError, KeyError) as error:
            reply = {"ok": False, "error": str(error)}
        print(json.dumps(reply), flush=True)
    node.session.pause()


if __name__ == "__main__":
    main()
