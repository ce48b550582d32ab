"""How many block requests a node accepts queued from each peer: a fixed time's worth of its upload to them.

Requests queued at an uploader go stale: while a seed works through one fetcher's queue, other fetchers receive
those pieces from each other, and what the seed then sends is a second copy that took seed bandwidth from a
piece nobody has yet. libtorrent accepts up to 2000 queued blocks (31 MiB) per peer; capping the queue at a
fraction of a second of upload cut the seed's upload in tools/bench_distribution.py (N=8) from ~1.3 to
~1.15 copies and the slowest fetch from 29-31 s to 26-27 s. The cap follows the upload rate per peer so that a
fast single transfer over a long path still keeps enough requests in flight: the cap grows with the rate it
allows, like a congestion window, as long as the round trip is under QUEUE_SECONDS.
"""

from __future__ import annotations

from swarm.torrent.merkle import BLOCK_LENGTH

QUEUE_SECONDS = 0.1
# 256 KiB. In the benchmark (100 Mbit/s links, 8 fetchers) fixed caps of 8, 16, 24, 32 and 64 blocks gave the
# slowest fetch 26.9, 26.0 (mean of 2), 27.7, 26.8 and 27.0 s, against 30.5 s at libtorrent's 2000.
MIN_ACCEPTED_REQUESTS = 16
# libtorrent's default.
MAX_ACCEPTED_REQUESTS = 2000


def accepted_requests_per_peer(upload_rate: int, downloading_peers: int, queue_seconds: float = QUEUE_SECONDS) -> int:
    """Blocks each peer may keep requested from this node: `queue_seconds` of this node's upload (bytes/s) to
    each of the peers it uploads to, within [MIN_ACCEPTED_REQUESTS, MAX_ACCEPTED_REQUESTS]."""
    per_peer = max(0, upload_rate) / max(1, downloading_peers)
    blocks = int(per_peer * queue_seconds / BLOCK_LENGTH)
    return min(MAX_ACCEPTED_REQUESTS, max(MIN_ACCEPTED_REQUESTS, blocks))
