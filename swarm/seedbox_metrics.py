"""A seedbox's Prometheus metrics: what libtorrent says of each torrent, read when scraped.

The values live in libtorrent (totals across runs come from resume data), not in this process's counters, so a
custom collector turns the seedbox's latest status snapshot into metric families at each scrape. Each seedbox has
a registry of its own, so that several can run in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS = ("model", "info_hash")
# name, type, help, field of the torrent record (swarm.seedbox.torrent_record); the names dashboards know.
TORRENT_METRICS = (
    ("swarm_bytes_uploaded_total", "counter", "Payload bytes uploaded (all runs).", "bytes_uploaded"),
    ("swarm_bytes_downloaded_total", "counter", "Payload bytes downloaded (all runs).", "bytes_downloaded"),
    ("swarm_upload_rate_bytes", "gauge", "Current upload rate in bytes/s.", "upload_rate"),
    ("swarm_download_rate_bytes", "gauge", "Current download rate in bytes/s.", "download_rate"),
    ("swarm_peers", "gauge", "Connected peers.", "peers"),
    ("swarm_progress_ratio", "gauge", "Share of wanted bytes present (0..1).", "progress"),
    ("swarm_chunks_held", "gauge", "Chunks held and verified.", "chunks_held"),
    ("swarm_chunks_total", "gauge", "Chunks in the model's manifest.", "chunks_total"),
)


class TorrentCollector(Collector):
    """One sample per torrent and metric, labelled with the model's name and info hash."""

    def __init__(self, torrents: Callable[[], list[dict[str, Any]]]) -> None:
        self.torrents = torrents

    def collect(self) -> Iterator[Metric]:
        torrents = self.torrents()
        yield GaugeMetricFamily("swarm_seedbox_torrents", "Torrents this seedbox holds.", value=len(torrents))
        for name, kind, help_text, field_name in TORRENT_METRICS:
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(name, help_text, labels=LABELS)
            for torrent in torrents:
                value = torrent[field_name]
                # chunks_held is the list of chunk ids in /status; the metric counts them.
                family.add_metric(
                    [torrent["name"], torrent["info_hash"]], len(value) if isinstance(value, list) else value
                )
            yield family


def seedbox_registry(torrents: Callable[[], list[dict[str, Any]]]) -> CollectorRegistry:
    """A registry of its own holding the torrent collector; `torrents` gives the latest /status records."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TorrentCollector(torrents))
    return registry
