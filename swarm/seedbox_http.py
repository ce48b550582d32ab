"""The seedbox's HTTP face, a Starlette app: the live page (/), the swarm survey (/swarm), its own torrents
(/status), Prometheus metrics (/metrics) and a BitTorrent tracker (/announce, /scrape).

Every handler only reads what the seedbox's loop and survey thread published (snapshots behind locks), so they
run on the server's event loop without blocking it. swarm/http_thread.py serves the app beside the loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from swarm.status import status_page
from swarm.tracker import PeerTable, TrackerError, failure, parse_announce, parse_scrape

NOT_FOUND = b"not found: try /, /swarm, /status, /metrics or /announce\n"


class Tracker:
    """The seedbox's tracker: a PeerTable shared by the seedbox's loop (which torrents) and the HTTP server."""

    def __init__(self) -> None:
        self.table = PeerTable()
        self.lock = threading.Lock()

    def track(self, info_hashes: list[bytes]) -> None:
        with self.lock:
            self.table.track(info_hashes)

    def answer(self, path: str, query: str, remote_host: str, own: tuple[str, int]) -> bytes:
        """The bencoded answer to an announce or a scrape (a "failure reason" for a malformed one)."""
        try:
            if path == "/scrape":
                hashes = parse_scrape(query)
                with self.lock:
                    return self.table.scrape(hashes)
            request = parse_announce(query, remote_host)
            with self.lock:
                return self.table.announce(request, own=own)
        except TrackerError as error:
            return failure(str(error))


@dataclass(frozen=True)
class SeedboxView:
    """What the HTTP app reads from a seedbox; each callable is safe to call from the server's thread."""

    swarm_document: Callable[[], dict[str, Any]]
    status_document: Callable[[], dict[str, Any]]
    registry: CollectorRegistry
    tracker: Tracker | None
    torrent_port: int


def seedbox_app(view: SeedboxView) -> Starlette:
    async def page(request: Request) -> Response:
        return _reply(200, "text/html; charset=utf-8", status_page())

    async def swarm(request: Request) -> Response:
        return _reply(200, "application/json", json.dumps(view.swarm_document(), indent=1).encode())

    async def status(request: Request) -> Response:
        return _reply(200, "application/json", json.dumps(view.status_document(), indent=1).encode())

    async def metrics(request: Request) -> Response:
        # The scraper's Accept header picks the format (OpenMetrics or Prometheus text 0.0.4 by default).
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return _reply(200, content_type, encode(view.registry))

    async def tracker(request: Request) -> Response:
        if view.tracker is None or request.client is None:
            return _reply(404, "text/plain", NOT_FOUND)
        # Raw query bytes: info hashes and peer ids are binary, percent-encoded (swarm/tracker.py decodes them).
        query = request.scope["query_string"].decode("latin-1")
        # The seedbox lists itself first, at the address this client reached it at.
        own_host = str(request.scope["server"][0])
        body = view.tracker.answer(request.url.path, query, request.client.host, (own_host, view.torrent_port))
        return _reply(200, "text/plain", body)

    async def not_found(request: Request, error: Exception) -> Response:
        return _reply(404, "text/plain", NOT_FOUND)

    routes = [
        Route("/", page),
        Route("/swarm", swarm),
        Route("/status", status),
        Route("/metrics", metrics),
        Route("/announce", tracker),
        Route("/scrape", tracker),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found})


def _reply(code: int, content_type: str, body: bytes) -> Response:
    # The content type is given as a header, not as media_type: Starlette would append a charset to text/plain,
    # and the tracker's answers stay as they were.
    return Response(body, status_code=code, headers={"Content-Type": content_type})


__all__ = ["NOT_FOUND", "SeedboxView", "Tracker", "seedbox_app"]
