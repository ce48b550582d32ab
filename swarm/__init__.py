"""swarm: BitTorrent-backed model distribution and compute swarm."""
