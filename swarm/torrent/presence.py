"""What a long-running node keeps findable on the DHT: announcements (BEP 5), signed items (BEP 44) and the
torrents it holds, published again every refresh interval and at once when the routing table grows.

Each publication goes two ways: through libtorrent's own lookups (to the nodes closest to each key, wherever
they are), and directly (swarm.torrent.krpc) into this node's own DHT storage and its bootstrap nodes', so that
in a swarm of two or three nodes the bootstrap node answers lookups with this node's announcements and its own.
Whoever pumps the node calls `tick()` from its loop; nothing here blocks for more than a few round trips.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarm.address import Address
from swarm.torrent import dht, krpc
from swarm.torrent.session import TorrentNode

log = logging.getLogger(__name__)

# Shortest time between two publications caused by routing-table growth (nodes arrive in bursts).
GROWTH_GAP_SECONDS = 3.0
# When a direct store found no answer (a DHT node still starting, a bootstrap node restarting), try again soon.
RETRY_SECONDS = 2.0


def republish_due(now: float, last: float | None, interval: float, nodes: int, nodes_then: int) -> bool:
    """Whether to publish again: never published, the interval has passed, or the routing table grew by a
    quarter (at least one node) since the last publication and GROWTH_GAP_SECONDS have passed. New nodes learn
    of our announcements only when we announce again; in a small swarm every new node matters."""
    if last is None or now - last >= interval:
        return True
    return now - last >= GROWTH_GAP_SECONDS and nodes - nodes_then >= max(1, nodes_then // 4)


def own_store_endpoints(endpoints: list[Address]) -> list[Address]:
    """Which of this node's DHT sockets to store at: the non-loopback ones when there are any. A store sent to
    127.0.0.1 is recorded as 127.0.0.1, which would send other machines to themselves; the storage is shared by
    all of a session's DHT sockets, so one address per interface is enough."""
    outside = [endpoint for endpoint in endpoints if not endpoint.is_loopback]
    return outside or endpoints


@dataclass(frozen=True)
class Item:
    key_pair: dht.KeyPair
    salt: bytes
    value: bytes
    # Given what a node holds in the item's slot (None: nothing), the value to put there (None: leave it);
    # without it, `value` is always put.
    update: Callable[[bytes | None], bytes | None] | None = None

    @property
    def slot(self) -> dht.Slot:
        return dht.Slot(self.key_pair.public, self.salt)


class Presence:
    def __init__(self, node: TorrentNode, interval: float, direct: bool = True) -> None:
        self.node = node
        self.interval = interval
        # Direct stores into our own storage and the bootstrap nodes' (off only for tests of the plain DHT).
        self.direct = direct
        # DHT key → port (0: this node's BitTorrent port).
        self.announcements: dict[bytes, int] = {}
        self.items: dict[dht.Slot, Item] = {}
        self._last: float | None = None
        self._nodes_then = 0
        # Conditional items looked up this round, waiting for the answer that decides whether to put.
        self._checking: dict[dht.Slot, Item] = {}
        node.add_listener(self._on_alert)

    def close(self) -> None:
        if self._on_alert in self.node.listeners:
            self.node.remove_listener(self._on_alert)

    def announce(self, key: bytes, port: int = 0) -> None:
        self.announcements[key] = port
        self._last = None

    def withdraw(self, key: bytes) -> None:
        self.announcements.pop(key, None)

    def put(self, item: Item) -> None:
        self.items[item.slot] = item
        self._last = None

    def tick(self) -> bool:
        """Publish when due (see republish_due); returns whether it did."""
        if not self.node.session.is_dht_running():
            return False
        now = time.monotonic()
        if not republish_due(now, self._last, self.interval, self.node.dht_nodes, self._nodes_then):
            return False
        self.publish()
        return True

    def publish(self) -> None:
        self._last = time.monotonic()
        self._nodes_then = self.node.dht_nodes
        dht.nudge_bootstrap(self.node)
        port = self.node.listen_port
        announcements = [(key, announced or port) for key, announced in self.announcements.items()]
        for key, announced in announcements:
            dht.announce(self.node, key, announced)
        for item in self.items.values():
            if item.update is None:
                # libtorrent looks the slot up and puts with the next sequence number.
                dht.start_put(self.node, item.key_pair, item.salt, item.value)
            else:
                self._checking[item.slot] = item
                dht.start_get(self.node, item.slot)
        if self.direct and not self._store_directly(
            announcements + [(key, port) for key in dht.torrent_keys(self.node)]
        ):
            self._last = time.monotonic() - self.interval + RETRY_SECONDS

    def _on_alert(self, alert: object) -> None:
        answer = dht.mutable_item_answer(alert)
        if answer is None:
            return
        slot, found, authoritative = answer
        # Decide on the first copy found (a lookup that meets a departed node ends only ~15 s later), or on the
        # lookup's end when it found nothing.
        if slot not in self._checking or (found is None and not authoritative):
            return
        item = self._checking.pop(slot)
        value = item.update(found.value if found is not None else None) if item.update is not None else None
        if value is not None:
            dht.start_put(self.node, item.key_pair, item.salt, value)

    def _store_directly(self, announcements: list[tuple[bytes, int]]) -> bool:
        """Store at our own DHT node and the bootstrap nodes; whether our own node took everything."""
        own = own_store_endpoints(self.node.udp_endpoints)
        items = [item.key_pair.item(item.salt, item.value, item.update) for item in self.items.values()]
        complete = bool(own)
        for endpoint in own + list(self.node.bootstrap):
            report = krpc.store(endpoint, announcements, items)
            if report.failures:
                complete = complete and endpoint not in own
                log.info(
                    "DHT node %s: %d of %d stores failed%s", endpoint, report.failures,
                    len(announcements) + len(items), "" if report.answered else " (no answer)",
                )  # fmt: skip
        return complete
