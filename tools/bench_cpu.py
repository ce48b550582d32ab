"""Benchmark: CPU seconds per GB that a fetch and a seed spend, swarm next to a standard client (aria2).

Two hosts of the network lab (tools/netlab.py) on a link shaped to `--rate`. In the same run:
(a) host 0 runs `swarm seedbox`, host 1 runs `swarm fetch` of the whole model;
(b) host 0 runs aria2c seeding a v1 torrent of the same chunk files, host 1 runs aria2c fetching it (both find
    each other through a tracker on host 0).
While the fetch runs, every process's CPU time (user + system, all threads, from /proc/PID/stat) and the bytes
the fetcher's host receives are sampled. The figure is the CPU spent between 5 % and 95 % of the bytes, per GB of
them: the cost of moving bytes, not of starting a process (reported apart as the whole run's CPU).

Usage (root; aria2c from Debian's aria2): python tools/bench_cpu.py [--rate 100mbit] [--params 128M] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netlab
from bench_distribution import MODEL_NAME, SWARM, TORRENT_PORT, prepare_content, wait_for_line

from swarm.torrent.bencode import bdecode
from swarm.torrent.create import MadeTorrent, choose_piece_length, make_torrent

TRACKER_PORT = 8000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The steady part of a transfer: from this share of the bytes to 1 - it.
EDGE = 0.05

# A BitTorrent tracker for aria2c (it cannot be told a peer's address): swarm's own tracker logic behind
# http.server, tracking the one torrent whose info hash (hex) is the first argument.
TRACKER = """
import http.server, sys
from swarm.tracker import PeerTable, TrackerError, failure, parse_announce
table = PeerTable()
table.track([bytes.fromhex(sys.argv[1])])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path, _, query = self.path.partition("?")
        try:
            body = table.announce(parse_announce(query, self.client_address[0]))
        except TrackerError as error:
            body = failure(str(error))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[2], int(sys.argv[3])), Handler).serve_forever()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, so far (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def received_bytes(pid: int) -> int:
    """Bytes received on the network interfaces of `pid`'s namespace (its /proc/PID/net/dev), loopback aside."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sum(int(line.partition(":")[2].split()[0]) for line in lines if line.partition(":")[0].strip() != "lo")


@dataclass
class Sample:
    at: float
    # Bytes the fetcher's host received so far (payload plus protocol overhead).
    received: int
    fetcher_cpu: float
    seeder_cpu: float


def in_namespace(pid: int, namespace: str) -> bool:
    """Whether `pid` has entered the named network namespace (`ip netns exec` starts in the machine's own); False
    once it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/var/run/netns/{namespace}").st_ino
    except OSError:
        return False


def sample_until(
    done: Callable[[], bool], fetcher: int, fetch_namespace: str, seeder: int, timeout: float
) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("the fetch did not finish in time")
        time.sleep(0.1)
        if not in_namespace(fetcher, fetch_namespace):
            continue
        try:
            sample = Sample(time.monotonic(), received_bytes(fetcher), cpu_seconds(fetcher), cpu_seconds(seeder))
        except OSError:
            break
        if done():  # it ended during the reads: an exited process's /proc reads are not its own any more
            break
        samples.append(sample)
    return samples


def steady_costs(samples: list[Sample], size: int) -> dict[str, float]:
    """CPU-s per GB of fetcher and seeder while the fetcher's host received EDGE to 1 - EDGE of its bytes (the
    GB are the model's bytes in that window: its share of everything received, times the model's size)."""
    total = samples[-1].received - samples[0].received
    first = next(sample for sample in samples if sample.received - samples[0].received >= EDGE * total)
    last = next(sample for sample in samples if sample.received - samples[0].received >= (1 - EDGE) * total)
    gigabytes = (last.received - first.received) / total * size / 1e9
    if gigabytes <= 0:
        raise RuntimeError(f"the fetcher received too little to measure ({total} bytes)")
    return {
        "fetch_cpu_s_per_gb": round((last.fetcher_cpu - first.fetcher_cpu) / gigabytes, 2),
        "seed_cpu_s_per_gb": round((last.seeder_cpu - first.seeder_cpu) / gigabytes, 2),
        "steady_mb_per_s": round(gigabytes * 1e3 / (last.at - first.at), 1),
    }


def start(host: netlab.Host, command: Sequence[str], **options: object) -> subprocess.Popen[str]:
    return subprocess.Popen(host.command(command), text=True, **options)  # type: ignore[call-overload,no-any-return]


def stop(processes: Sequence[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(seeder: subprocess.Popen[str], fetcher: subprocess.Popen[str], fetch_host: netlab.Host, size: int,
            timeout: float) -> dict[str, float]:  # fmt: skip
    """Sample a running fetch to its end; the steady costs plus the fetcher's whole-run CPU."""
    samples = sample_until(lambda: fetcher.poll() is not None, fetcher.pid, fetch_host.namespace, seeder.pid, timeout)
    if fetcher.returncode != 0:
        raise RuntimeError(f"the fetcher exited with {fetcher.returncode}")
    usage = steady_costs(samples, size)
    usage["fetch_whole_run_cpu_s"] = round(samples[-1].fetcher_cpu, 2)
    return usage


def run_swarm(
    lab: netlab.Lab, work: Path, catalog: Path, seed_data: Path, size: int, timeout: float
) -> dict[str, float]:
    seed_host, fetch_host = lab.hosts
    seed_address = f"{seed_host.address}:{TORRENT_PORT}"
    target = work / "swarm-fetched"
    shutil.rmtree(target, ignore_errors=True)
    seedbox = start(seed_host, [SWARM, "seedbox", "--catalog", str(catalog), "--data", str(seed_data), "--listen",
                                seed_address, "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    processes = [seedbox]
    try:
        wait_for_line(seedbox, lambda record: record.get("event") == "seeding", timeout)
        threading.Thread(target=lambda: [None for _ in seedbox.stdout or ()], daemon=True).start()
        fetcher = start(fetch_host, [SWARM, "fetch", MODEL_NAME, "--catalog", str(catalog), "--data", str(target),
                                     "--bootstrap", seed_address, "--peer", seed_address, "--listen",
                                     f"{fetch_host.address}:{TORRENT_PORT}", "--json"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        processes.append(fetcher)
        return measure(seedbox, fetcher, fetch_host, size, timeout)
    finally:
        stop(processes)


def aria2_content(work: Path, content: Path, size: int, announce: str) -> tuple[Path, MadeTorrent]:
    """The chunk files (hard links) in a folder of their own, a v1 torrent of them, and the zero-filled BEP 47
    pad files aria2 expects beside them (it reads pad files as ordinary files)."""
    root = work / "aria2-seed" / content.name
    shutil.rmtree(root.parent, ignore_errors=True)
    root.mkdir(parents=True)
    for path in content.iterdir():
        if path.is_file():
            os.link(path, root / path.name)
    made = make_torrent(root, "v1", choose_piece_length(size), trackers=[announce])
    for entry in bdecode(made.data)[b"info"][b"files"]:
        if b"p" in entry.get(b"attr", b""):
            pad = root.joinpath(*(part.decode() for part in entry[b"path"]))
            pad.parent.mkdir(parents=True, exist_ok=True)
            pad.write_bytes(bytes(entry[b"length"]))
    return root, made


def run_aria2(lab: netlab.Lab, work: Path, content: Path, size: int, timeout: float) -> dict[str, float]:
    seed_host, fetch_host = lab.hosts
    announce = f"http://{seed_host.address}:{TRACKER_PORT}/announce"
    root, made = aria2_content(work, content, size, announce)
    torrent = work / "aria2.torrent"
    torrent.write_bytes(made.data)
    target = work / "aria2-fetched"
    shutil.rmtree(target, ignore_errors=True)
    common = ["aria2c", "--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
              f"--listen-port={TORRENT_PORT}", "--summary-interval=0", "--console-log-level=error", "--quiet"]  # fmt: skip
    tracker = start(seed_host, [sys.executable, "-c", TRACKER, str(made.info_hash_v1), seed_host.address, str(TRACKER_PORT)],
                    stdout=subprocess.DEVNULL)  # fmt: skip
    seeder = start(seed_host, [*common, f"--dir={root.parent}", "--check-integrity=true", "--seed-ratio=0.0",
                               str(torrent)], stdout=subprocess.DEVNULL)  # fmt: skip
    processes = [tracker, seeder]
    try:
        time.sleep(2 + size / 1e9)  # aria2c checks the files it seeds before announcing; nothing to wait on
        fetcher = start(fetch_host, [*common, f"--dir={target}", "--seed-time=0", "--file-allocation=none",
                                     str(torrent)], stdout=subprocess.DEVNULL)  # fmt: skip
        processes.append(fetcher)
        return measure(seeder, fetcher, fetch_host, size, timeout)
    finally:
        stop(processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="100mbit", help="the link rate of both hosts (tc syntax)")
    parser.add_argument("--params", default="128M", help="model size for tools/make_model.py (128M ≈ 512 MB fp32)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each client; medians reported")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--clients", default="swarm,aria2", help="which clients to run (comma-separated)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    usable, reason = netlab.available()
    if not usable:
        raise SystemExit(f"cannot run: {reason}")
    if shutil.which("aria2c") is None:
        raise SystemExit("cannot run: aria2c is not installed (apt install aria2)")
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog, seed_data, content = prepare_content(work, arguments.params)
    size = sum(path.stat().st_size for path in content.iterdir())
    clients = arguments.clients.split(",")
    runs: dict[str, list[dict[str, float]]] = {client: [] for client in clients}
    for _ in range(arguments.repeat):
        for client in clients:
            with netlab.Lab(2, rate=arguments.rate) as lab:
                if client == "swarm":
                    runs[client].append(run_swarm(lab, work, catalog, seed_data, size, arguments.timeout))
                else:
                    runs[client].append(run_aria2(lab, work, content, size, arguments.timeout))
        print(json.dumps({client: results[-1] for client, results in runs.items()}), file=sys.stderr, flush=True)
    rows = {client: {key: round(statistics.median(run[key] for run in results), 2) for key in results[0]}
            for client, results in runs.items()}  # fmt: skip
    if arguments.json:
        print(json.dumps({"model_bytes": size, "rate": arguments.rate, "repeat": arguments.repeat, "rows": rows}))
        return
    print(f"model {size / 1e6:.0f} MB, link {arguments.rate}, medians of {arguments.repeat} run(s)")
    print("| client | fetch CPU-s per GB | seed CPU-s per GB | steady MB/s | fetch process CPU-s, whole run |")
    print("|---|---|---|---|---|")
    for client, row in rows.items():
        print(f"| {client} | {row['fetch_cpu_s_per_gb']} | {row['seed_cpu_s_per_gb']} | {row['steady_mb_per_s']} | "
              f"{row['fetch_whole_run_cpu_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
