"""Benchmark: does the swarm beat a server? Swarm fetch vs one HTTP server, on shaped links.

Network namespaces of our own: one seed host and N fetch hosts on one switch, every host's link shaped to
B with tc tbf. In the same run, for each N: (a) the seed host runs `swarm seedbox` and all N hosts run
`swarm fetch` at once, each told the addresses of those started before it, as a tracker would (keeping seeding while the
others finish, as peers do); (b) the seed host runs one
HTTP server over the same chunk files and N hosts download them at once. Reports each completion time
(median, max), the physical bound S/B and the ratios.

Mixed links (`--rates 10mbit,100mbit`, dealt out to the fetch hosts in turn) measure each fetcher against its own
link; churn (`--leave K`) stops K fetchers at random moments before they could have finished, and the others'
times are reported.

Usage (root): python tools/bench_distribution.py [--hosts 1,2,4,8] [--rate 100mbit] [--rates R1,R2] [--leave K]
[--params 64M]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netlab
from bytecode import compile_package

ROOT = Path(__file__).resolve().parent.parent
SWARM = str(Path(sys.executable).with_name("swarm"))
TORRENT_PORT = 6881
HTTP_PORT = 8000
MODEL_NAME = "bench"

HTTP_DOWNLOAD = """
import sys, time, urllib.request
base, target, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    with urllib.request.urlopen(f"{base}/{name}") as response, open(f"{target}/{name}", "wb") as out:
        while block := response.read(1 << 20):
            out.write(block)
print("done", flush=True)
"""


def cpu_steal() -> tuple[int, int]:
    """(steal ticks, all ticks) of this machine so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields[:8])


def cpu_steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def rate_bits_per_second(rate: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.lower())
    if not match:
        raise SystemExit(f"rate must look like 100mbit, got {rate}")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


def wait_for_line(process: subprocess.Popen[str], predicate, timeout: float) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Read JSON lines from a process until one satisfies predicate."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode}")
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and predicate(record):
            return record
    raise TimeoutError("no matching line in time")


def fetch_finished(record: dict) -> bool:  # type: ignore[type-arg]
    return record.get("event") == "verified"


def run_swarm(
    lab: netlab.Lab, work: Path, catalog: Path, seed_data: Path, timeout: float, leave: dict[int, float]
) -> tuple[list[float | None], int]:
    """Each fetcher's completion time (None for those that left), and the bytes the fetchers received from the seed
    host. `leave` maps fetchers (by index) to the second after the start when they stop, whether done or not."""
    seed_host, fetchers = lab.hosts[0], lab.hosts[1:]
    seed_address = f"{seed_host.address}:{TORRENT_PORT}"
    seedbox = subprocess.Popen(
        seed_host.command([SWARM, "seedbox", "--catalog", str(catalog), "--data", str(seed_data),
                           "--listen", seed_address, "--status", f"{seed_host.address}:8700", "--json"]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    processes = []
    try:
        for host in fetchers:  # before the clock starts: deleting earlier runs' files takes seconds
            shutil.rmtree(work / f"swarm-{host.address}", ignore_errors=True)
        # The clock starts once the seedbox has checked its files and seeds: its start-up is not distribution.
        wait_for_line(seedbox, lambda record: record.get("event") == "seeding", timeout)
        threading.Thread(target=lambda: [None for _ in seedbox.stdout or ()], daemon=True).start()  # keep the pipe open
        started = time.monotonic()
        for host in fetchers:
            data = work / f"swarm-{host.address}"
            # Each fetcher dials the fetchers started before it, as a tracker would hand out addresses, so
            # every pair gets one connection (two dialling each other churn duplicate connections). The
            # DHT (bootstrapped at the seed) finds them too, but more slowly than a benchmark should wait.
            others = [f"--peer={other.address}:{TORRENT_PORT}" for other in fetchers[: fetchers.index(host)]]
            processes.append(
                subprocess.Popen(
                    host.command(
                        [
                            SWARM,
                            "fetch",
                            MODEL_NAME,
                            "--catalog",
                            str(catalog),
                            "--data",
                            str(data),
                            "--bootstrap",
                            seed_address,
                            *others,
                            "--peer",
                            seed_address,
                            "--listen",
                            f"{host.address}:{TORRENT_PORT}",
                            "--seed",
                            "--json",
                            "--timeout",
                            str(int(timeout)),
                        ]
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        times: list[float | None] = [0.0] * len(processes)
        timers = [
            threading.Timer(moment, processes[index].send_signal, args=(signal.SIGTERM,))
            for index, moment in leave.items()
        ]
        for timer in timers:
            timer.start()

        # Every JSON line of every fetcher, stamped with seconds since the start: progress over time, and the
        # final "verified" record with the bytes received from each source.
        timeline: list[list[dict]] = [[] for _ in processes]  # type: ignore[type-arg]

        def watch(index: int, process: subprocess.Popen[str]) -> None:
            def note(record: dict) -> bool:  # type: ignore[type-arg]
                timeline[index].append({"at": round(time.monotonic() - started, 2), **record})
                return fetch_finished(record)

            try:
                wait_for_line(process, note, timeout)
                times[index] = time.monotonic() - started
            except RuntimeError:
                if index not in leave:
                    raise
                times[index] = None  # it left before finishing, as told

        watchers = [threading.Thread(target=watch, args=(i, p)) for i, p in enumerate(processes)]
        for watcher in watchers:
            watcher.start()
        for watcher in watchers:
            watcher.join()
        for timer in timers:
            timer.cancel()
        (work / f"timeline-{len(processes)}.json").write_text(json.dumps(timeline))
        if not all(times[index] for index in range(len(times)) if index not in leave):
            raise RuntimeError("a swarm fetch did not finish")
        from_seed = sum(
            size
            for lines in timeline
            for record in lines
            if record.get("event") == "verified"
            for source, size in record.get("sources", {}).items()
            if source.rpartition(":")[0] == seed_host.address
        )
        return times, from_seed
    finally:
        for process in [*processes, seedbox]:
            process.send_signal(signal.SIGTERM)
        for process in [*processes, seedbox]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def run_http(lab: netlab.Lab, work: Path, content: Path, timeout: float) -> list[float]:
    seed_host, fetchers = lab.hosts[0], lab.hosts[1:]
    server = subprocess.Popen(
        seed_host.command([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", seed_host.address,
                           "--directory", str(content)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    names = sorted(path.name for path in content.iterdir() if path.is_file())
    try:
        for host in fetchers:  # before the clock starts, as for the swarm
            target = work / f"http-{host.address}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
        time.sleep(1.5)
        started = time.monotonic()
        processes = []
        for host in fetchers:
            target = work / f"http-{host.address}"
            processes.append(
                subprocess.Popen(
                    host.command(
                        [
                            sys.executable,
                            "-c",
                            HTTP_DOWNLOAD,
                            f"http://{seed_host.address}:{HTTP_PORT}",
                            str(target),
                            *names,
                        ]
                    ),
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        finished: dict[int, float] = {}
        while len(finished) < len(processes) and time.monotonic() - started < timeout:
            for index, process in enumerate(processes):
                if index not in finished and process.poll() is not None:
                    finished[index] = time.monotonic() - started
            time.sleep(0.05)
        if len(finished) < len(processes) or any(process.returncode != 0 for process in processes):
            raise RuntimeError("an HTTP download failed or did not finish")
        return [finished[index] for index in range(len(processes))]
    finally:
        server.terminate()
        server.wait(timeout=10)


def fetch_rates(seed_rate: str, rates: str | None, count: int) -> list[str]:
    """Each fetch host's link rate: `rates` (comma-separated) dealt out in turn, or the seed's rate for all."""
    choices = rates.split(",") if rates else [seed_rate]
    return [choices[index % len(choices)] for index in range(count)]


def leaving(count: int, leavers: int, bounds: list[float], chooser: random.Random) -> dict[int, float]:
    """Which fetchers leave (K of them, at random) and when: a random moment between 20 % and 80 % of the
    time their own link needs for the model, so they leave with part of it."""
    if leavers >= count:
        raise SystemExit(f"--leave {leavers} leaves no fetcher to measure among {count}")
    return {index: chooser.uniform(0.2, 0.8) * bounds[index] for index in chooser.sample(range(count), leavers)}


def distribution_row(
    count: int, times: list[float | None], bounds: list[float], seed_copies: float, steal: float
) -> dict[str, float]:
    """One table row: the fetchers that stayed, their times against their own bounds."""
    stayed = [(taken, bound) for taken, bound in zip(times, bounds, strict=True) if taken is not None]
    return {
        "fetchers": count,
        "stayed": len(stayed),
        "swarm_median_s": round(statistics.median(taken for taken, _ in stayed), 1),
        "swarm_max_s": round(max(taken for taken, _ in stayed), 1),
        "bound_s": round(max(bound for _, bound in stayed), 1),
        # The slowest fetcher measured against its own link (with one rate for all: max time / (S/B)).
        "swarm_max_over_bound": round(max(taken / bound for taken, bound in stayed), 2),
        # How many copies of the model the seed host uploaded (1.0: every byte left the seed once).
        "seed_copies": round(seed_copies, 2),
        # Share of CPU time the hypervisor took from this VM during the swarm run.
        "swarm_cpu_steal_percent": round(steal * 100),
    }


def generated_llama(work: Path, params: str, *options: str) -> Path:
    """work/model: a Llama of `params` parameters from tools/make_model.py (with `options`), made once."""
    model = work / "model"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_model.py"), "--family", "llama", "--params",
                        params, "--out", str(model), *options, "--force"], check=True)  # fmt: skip
    return model


def prepare_content(work: Path, params: str) -> tuple[Path, Path, Path]:
    """A generated Llama of `params` parameters published with `swarm seed --prepare-only` under work/:
    (catalog, seed data folder, the folder of its chunk files)."""
    model = generated_llama(work, params)
    catalog, seed_data = work / "catalog", work / "seed-data"
    environment = dict(os.environ, SWARM_HOME=str(work / "home"))
    subprocess.run([SWARM, "seed", str(model), "--name", MODEL_NAME, "--catalog", str(catalog), "--data",
                    str(seed_data), "--prepare-only", "--force", "--json"], check=True, env=environment,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return catalog, seed_data, seed_data / "models" / MODEL_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,2,4,8", help="fetch host counts to run (comma-separated)")
    parser.add_argument("--rate", default="100mbit", help="every host's link rate (tc syntax)")
    parser.add_argument(
        "--rates",
        default=None,
        help="fetch hosts' link rates, dealt out in turn (e.g. 10mbit,100mbit); the seed keeps --rate",
    )
    parser.add_argument(
        "--leave", type=int, default=0, help="fetchers that stop at a random moment before they could have finished"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the random choice of leavers and moments")
    parser.add_argument("--params", default="64M", help="model size for tools/make_model.py (64M ≈ 256 MB fp32)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-http", action="store_true", help="run only the swarm side (quick experiments)")
    arguments = parser.parse_args()
    compile_package()
    usable, reason = netlab.available()
    if not usable:
        print(f"skipped: {reason}")
        return
    counts = [int(item) for item in arguments.hosts.split(",")]
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog, seed_data, content = prepare_content(work, arguments.params)
    size = sum(path.stat().st_size for path in content.iterdir() if path.is_file())
    rows = []
    for count in counts:
        rates = fetch_rates(arguments.rate, arguments.rates, count)
        # Each fetcher's own bound S/B: the model over the slower of its link and the seed's.
        bounds = [size * 8 / min(rate_bits_per_second(rate), rate_bits_per_second(arguments.rate)) for rate in rates]
        leave = leaving(count, arguments.leave, bounds, random.Random(arguments.seed))
        with netlab.Lab(count + 1, rate=arguments.rate, rates=[arguments.rate, *rates]) as lab:
            steal_before = cpu_steal()
            swarm_times, from_seed = run_swarm(lab, work, catalog, seed_data, arguments.timeout, leave)
        row = distribution_row(count, swarm_times, bounds, from_seed / size, cpu_steal_share(steal_before, cpu_steal()))
        if leave:
            row["left_at_s"] = sorted(round(moment, 1) for moment in leave.values())
        if not arguments.skip_http:
            with netlab.Lab(count + 1, rate=arguments.rate, rates=[arguments.rate, *rates]) as lab:
                http_times = run_http(lab, work, content, arguments.timeout)
            row["http_median_s"] = round(statistics.median(http_times), 1)
            row["http_max_s"] = round(max(http_times), 1)
            row["http_max_over_swarm_max"] = round(max(http_times) / row["swarm_max_s"], 2)
        rows.append(row)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if arguments.json:
        print(json.dumps({"model_bytes": size, "rate": arguments.rate, "rows": rows}))
        return
    links = (
        f"fetch links {arguments.rates} in turn, seed link {arguments.rate}"
        if arguments.rates
        else f"every link {arguments.rate}"
    )
    leavers = f", {arguments.leave} fetcher(s) leaving midway (not counted)" if arguments.leave else ""
    print(f"model {size / 1e6:.0f} MB, {links}{leavers}; S/B = the model over a fetcher's own link")
    print(
        "| fetch hosts | swarm median s | swarm max s | HTTP median s | HTTP max s | swarm max / (S/B) "
        "| HTTP max / swarm max | copies uploaded by the seed | CPU steal % (swarm run) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['fetchers']} | {row['swarm_median_s']} | {row['swarm_max_s']} | {row.get('http_median_s', '-')} | "
              f"{row.get('http_max_s', '-')} | {row['swarm_max_over_bound']} | {row.get('http_max_over_swarm_max', '-')}x "
              f"| {row['seed_copies']} | {row['swarm_cpu_steal_percent']} |")  # fmt: skip


if __name__ == "__main__":
    main()
