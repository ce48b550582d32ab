"""Surveying the swarm for `swarm status` and the seedbox's page: for each model, who seeds its torrent (a DHT
lookup of the torrent's keys) and which compute peers serve it (the compute key's lookup, then each peer's own
`info`, asked at once)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from swarm.address import Address
from swarm.config import Settings
from swarm.discovery.compute import find_compute_peers
from swarm.discovery.records import model_info_hashes
from swarm.distribute import open_node
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.status import ModelSurvey, status_document
from swarm.torrent import dht
from swarm.torrent.session import TorrentNode

log = logging.getLogger(__name__)

# Seconds a compute peer has to answer `info` before it is listed as silent.
INFO_SECONDS = 3.0
# A seedbox's survey: seconds between two, and how long each DHT lookup of one may take.
SURVEY_SECONDS = 3.0
LOOKUP_SECONDS = 2.0
# Seconds the seedbox goes on surveying after its page or /swarm was last read. Surveys nobody reads cost a
# seedbox most of its idle CPU (DHT lookups and peer queries every 3 s), which its seeding pays per GB.
WANTED_SECONDS = 60.0


def survey(node: TorrentNode, manifests: Sequence[Manifest], lookup_seconds: float) -> list[ModelSurvey]:
    """What the DHT and the peers say about each model now. SwarmError when the DHT cannot be reached."""
    # The compute client brings torch (tensor frames): a seedbox loads it on its survey thread, not at start.
    from swarm.client.routing import peers_for_model
    from swarm.client.session import ComputeClient, query_peers

    dht.wait_for_dht(node, lookup_seconds)
    surveys = []
    with ComputeClient(timeout=INFO_SECONDS) as client:
        for manifest in manifests:
            keys = [dht.info_hash_key(info_hash) for info_hash in model_info_hashes(manifest)]
            seeders = dht.get_peers(node, keys, lookup_seconds)
            addresses = [address.tcp for address in find_compute_peers(node, manifest, lookup_seconds)]
            infos = query_peers(client, addresses, INFO_SECONDS)
            silent = [address for address, info in infos.items() if isinstance(info, SwarmError)]
            peers = peers_for_model(manifest, infos, pinned=False)
            surveys.append(ModelSurvey(manifest, seeders, peers, silent))
    return surveys


class Surveyor(threading.Thread):
    """Surveys the models `manifests()` names every `interval` seconds, on a read-only DHT node of its own, and
    keeps the latest status document for readers in other threads (the seedbox's page). It surveys while the
    document is read: from the first read until `wanted_for` seconds after the last."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: Sequence[Address],
        manifests: Callable[[], list[Manifest]],
        interval: float = SURVEY_SECONDS,
        wanted_for: float = WANTED_SECONDS,
    ) -> None:
        super().__init__(name="survey", daemon=True)
        self.settings = replace(settings, bootstrap=tuple(bootstrap))
        self.manifests = manifests
        self.interval = interval
        self.wanted_for = wanted_for
        self.stop_event = threading.Event()
        # Set by every read (and by stop): wakes a surveyor that sleeps because nobody read for a while.
        self._read = threading.Event()
        self._last_read = float("-inf")
        self._lock = threading.Lock()
        self._document: dict[str, Any] = status_document([]) | {"surveyed": False}

    @property
    def document(self) -> dict[str, Any]:
        """The latest survey ("surveyed": false before the first); reading it keeps the surveys going."""
        self._last_read = time.monotonic()
        self._read.set()
        with self._lock:
            return self._document

    def _unread(self) -> bool:
        return time.monotonic() - self._last_read > self.wanted_for

    def run(self) -> None:
        node = open_node(self.settings, short_lived=True)
        try:
            while not self.stop_event.is_set():
                if self._unread():
                    # Cleared before the second look: a read in between either shows there or sets the event.
                    self._read.clear()
                    if self._unread():
                        self._read.wait()
                    continue
                try:
                    document = status_document(survey(node, self.manifests(), LOOKUP_SECONDS)) | {"surveyed": True}
                except SwarmError as error:
                    document = self.document | {"error": str(error)}
                with self._lock:
                    self._document = document
                self.stop_event.wait(self.interval)
        except Exception:  # the page must not take the seedbox down
            log.exception("the swarm survey failed")
        finally:
            node.close(timeout=1.0)

    def stop(self) -> None:
        self.stop_event.set()
        self._read.set()
        self.join(timeout=10)
