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
# 64 KiB: one piece of the benchmark's model. The floor binds wherever a seed's upload is shared thinly (N=16 at
# 50 Mbit/s: 2.4 blocks in 0.1 s), and on a loaded machine, where fetchers announce pieces late, each queued
# block is more likely a second copy: in tools/bench_distribution.py on a slow day, side by side, a floor of 16
# left the seed 1.17-1.22 copies at N=16 and 1.18-1.19 at N=8 (slowest 1.36-1.50 x S/B), a floor of 4 left
# 1.07-1.11 and 1.04-1.06 (1.22-1.32 x); 2 and 8 were worse than 4. A long path is not starved by it: the cap
# grows with the measured rate while the round trip is under QUEUE_SECONDS.
MIN_ACCEPTED_REQUESTS = 4
# libtorrent's default.
MAX_ACCEPTED_REQUESTS = 2000


def accepted_requests_per_peer(upload_rate: int, downloading_peers: int, queue_seconds: float = QUEUE_SECONDS) -> int:
    """Blocks each peer may keep requested from this node: `queue_seconds` of this node's upload (bytes/s) to
    each of the peers it uploads to, within [MIN_ACCEPTED_REQUESTS, MAX_ACCEPTED_REQUESTS]."""
    per_peer = max(0, upload_rate) / max(1, downloading_peers)
    blocks = int(per_peer * queue_seconds / BLOCK_LENGTH)
    return min(MAX_ACCEPTED_REQUESTS, max(MIN_ACCEPTED_REQUESTS, blocks))
