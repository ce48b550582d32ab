"""Benchmark: `swarm seed --prepare-only` against libtorrent hashing the original files alone.

Same bytes, same run, alternating repetitions; reports medians of wall time and peak RSS.
Usage: python tools/bench_seed.py [--params 250M] [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distribution import generated_llama
from bytecode import compile_package

ROOT = Path(__file__).resolve().parent.parent

# Runs in a child process so its peak RSS is its own.
HASH_ONLY = """
import sys, libtorrent as lt
directory, piece_length = sys.argv[1], int(sys.argv[2])
files = lt.list_files(directory, flags=0)
creator = lt.create_torrent(files, piece_length, lt.create_torrent.v2_only)
lt.set_piece_hashes(creator, directory.rsplit('/', 1)[0], lambda piece: None)
lt.bencode(creator.generate())
"""


def peak_rss_of(command: list[str], environment: dict[str, str]) -> tuple[float, int, str]:
    """Wall time and peak RSS measured by a fresh wrapper, so earlier children do not mask it."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "t = time.perf_counter() - t\n"
        "sys.stderr.write(p.stderr)\n"
        "print(t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "print(p.stdout)\n"
        "sys.exit(p.returncode)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", wrapper, *command], env=environment, capture_output=True, text=True, check=True
    )
    first, _, rest = completed.stdout.partition("\n")
    seconds, peak = first.split()
    return float(seconds), int(peak), rest


def warm_cache(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            while handle.read(64 * 1024 * 1024):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="250M", help="model size for tools/make_model.py")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    compile_package()
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-seed-"))
    work.mkdir(parents=True, exist_ok=True)
    model = generated_llama(work, arguments.params, "--max-shard-size", "10GB")
    weights = sorted(model.glob("*.safetensors"))
    total = sum(path.stat().st_size for path in weights)
    largest = largest_tensor_bytes(weights)
    sys.path.insert(0, str(ROOT))
    from swarm.torrent.create import choose_piece_length

    piece_length = choose_piece_length(total)
    weights_only = work / "weights" / "model"
    weights_only.mkdir(parents=True, exist_ok=True)
    for path in weights:
        target = weights_only / path.name
        if not target.exists():
            os.link(path, target)
    environment = dict(os.environ, SWARM_HOME=str(work / "home"))
    swarm = str(Path(sys.executable).with_name("swarm"))
    warm_cache(weights_only)
    seed_runs, hash_runs = [], []
    for _ in range(arguments.repeat):
        shutil.rmtree(work / "home", ignore_errors=True)
        hash_runs.append(
            peak_rss_of([sys.executable, "-c", HASH_ONLY, str(weights_only), str(piece_length)], environment)
        )
        seed_runs.append(
            peak_rss_of([swarm, "seed", str(model), "--name", "bench", "--prepare-only", "--json",
                         "--piece-length", str(piece_length)], environment)
        )  # fmt: skip
    seed_seconds = statistics.median(run[0] for run in seed_runs)
    hash_seconds = statistics.median(run[0] for run in hash_runs)
    seed_peak = max(run[1] for run in seed_runs)
    hash_peak = max(run[1] for run in hash_runs)
    result = {
        "model_bytes": total,
        "largest_tensor_bytes": largest,
        "piece_length": piece_length,
        "repeat": arguments.repeat,
        "seed_seconds_median": round(seed_seconds, 3),
        "hash_only_seconds_median": round(hash_seconds, 3),
        "time_ratio": round(seed_seconds / hash_seconds, 2),
        "seed_peak_rss_bytes": seed_peak,
        "hash_only_peak_rss_bytes": hash_peak,
        "seed_peak_rss_over_largest_tensor_bytes": seed_peak - largest,
    }
    if arguments.json:
        print(json.dumps(result))
        return
    mib = 1024 * 1024
    print(
        f"model {total / mib:.0f} MiB, largest tensor {largest / mib:.0f} MiB, piece length {piece_length // 1024} KiB"
    )
    print(f"| run | wall s (median of {arguments.repeat}) | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| swarm seed --prepare-only | {seed_seconds:.2f} | {seed_peak / mib:.0f} |")
    print(f"| libtorrent v2 hashing only | {hash_seconds:.2f} | {hash_peak / mib:.0f} |")
    print(f"| ratio | {seed_seconds / hash_seconds:.2f}x | |")


def largest_tensor_bytes(weights: list[Path]) -> int:
    largest = 0
    for path in weights:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        for info in header.values():
            begin, end = info["data_offsets"]
            largest = max(largest, end - begin)
    return largest


if __name__ == "__main__":
    main()
