"""The `swarm` command line: parses flags, calls into the packages, prints."""

from __future__ import annotations

import faulthandler
import functools
import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from swarm.catalog import resolve
from swarm.config import Settings, load_settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest, chunk_problem

if TYPE_CHECKING:
    from rich.console import Console

    from swarm.client.ensemble import EnsembleClient
    from swarm.client.generate import SamplingParams
    from swarm.client.run import SwarmClient
    from swarm.publish import Published
    from swarm.tasks.pipeline_run import PipelineResult
    from swarm.transport.keys import SwarmKeys

BOOTSTRAP_HELP = "Any running swarm node's BitTorrent/DHT address HOST:PORT (repeatable); one is enough."
TRACKER_HELP = "BitTorrent tracker announce URL to use as well (repeatable)."


@functools.cache
def terminal(stderr: bool = False) -> Console:
    """The rich console for tables and messages (stdout, or stderr), made on first use: importing rich is a
    noticeable share of a command's start-up, and commands printing JSON never need it."""
    from rich.console import Console

    return Console(stderr=stderr)


class SwarmGroup(click.Group):
    """Turns a SwarmError anywhere below into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)


def settings_from(ctx: click.Context, *, compute: bool = True, **overrides: Any) -> Settings:
    """The settings of this command; every compute socket it opens then belongs to the swarm they name: a private
    one with a swarm secret, else the public one (encrypted unless SWARM_ENCRYPT=0). A command that opens none
    (`compute=False`) checks a private swarm's keys all the same, but the public swarm's it does not load: that
    import (zmq's socket layer, asyncio) and the node's key file were a quarter of a fetch's start-up CPU."""
    base: Settings = ctx.obj
    settings = base.with_overrides(**overrides)
    if settings.allow_file is not None and settings.swarm_secret is None:
        raise SwarmError("--allow names the members of a private swarm: give its --swarm-secret too")
    if compute or settings.swarm_secret is not None:
        from swarm import transport

        transport.use_swarm_keys(swarm_keys(settings))
    return settings


def swarm_keys(settings: Settings) -> SwarmKeys | None:
    """The keys of the swarm `settings` name, connecting with this node's own member key; None: plaintext."""
    from swarm.transport.keys import SwarmKeys, member_keypair, read_allow_list, secret_from_file

    if settings.swarm_secret is None and not settings.encrypt:
        return None
    if settings.swarm_secret is None:
        keys = SwarmKeys.public()
    elif settings.encrypt:
        keys = secret_from_file(str(settings.swarm_secret))
    else:
        raise SwarmError("a private swarm is always encrypted: --swarm-secret and SWARM_ENCRYPT=0 cannot go together")
    keys = keys.with_member(*member_keypair(settings.keys_dir))
    if settings.allow_file is not None:
        keys = keys.with_allowed(read_allow_list(str(settings.allow_file)))
    return keys


DRAFT_HELP = (
    "A small local model (Hugging Face directory) sharing the model's tokenizer: it drafts tokens that the swarm "
    "checks several at a time (speculative decoding; the same output)."
)
TASK_HELP = (
    "The transformers task the model is for (text-classification, automatic-speech-recognition, text-to-audio, ...); "
    "default: the one its architecture names, else text generation. An unknown name lists them."
)
INPUT_HELP = (
    "Input of a task model (speech recognition, image classification, text to speech, ...): a file (WAV, FLAC, PNG, "
    "JPEG, ...) or, for text tasks, the text itself."
)
SECRET_HELP = (
    "File holding a private swarm's secret: only its members connect, and BitTorrent traffic is encrypted too "
    "(compute traffic always is)."
)


@click.group(cls=SwarmGroup)
@click.version_option(package_name="swarm")
@click.pass_context
def main(ctx: click.Context) -> None:
    """BitTorrent-backed model distribution and compute swarm."""
    ctx.obj = load_settings()


# Seconds a long-running command may take to shut down once told to. Past that it prints every thread's stack to
# stderr and exits with status 1: a stuck close then needs no SIGKILL, and its log says where it was stuck.
SHUTDOWN_SECONDS = 25.0


def stop_event() -> threading.Event:
    """Set by SIGINT or SIGTERM, so long-running commands can shut down cleanly (within SHUTDOWN_SECONDS).
    SIGUSR1 prints every thread's stack to stderr, to see what a running node is doing."""
    event = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        if not event.is_set():
            faulthandler.dump_traceback_later(SHUTDOWN_SECONDS, exit=True)
        event.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return event


@main.command()
@click.argument("model")
@click.option("--name", required=True, help="Name the model is published under.")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--prepare-only", is_flag=True, help="Write chunks, manifest and torrent; do not seed.")
@click.option("--format", "torrent_format", type=click.Choice(["v2", "hybrid", "v1"]), help="Torrent format.")
@click.option("--blocks-per-chunk", type=click.IntRange(min=1), help="Blocks in each chunk file.")
@click.option("--piece-length", type=int, help="Piece length in bytes: a power of 2, >= 32 KiB (16 KiB for v1).")
@click.option("--listen", "torrent_listen", help="BitTorrent listen address HOST:PORT.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option(
    "--tracker", "trackers", multiple=True, help="Tracker announce URL written into the torrent (repeatable)."
)
@click.option(
    "--private", "private_torrent", is_flag=True, default=None,
    help="Make the torrent private: found through trackers and given peers only, never the DHT, PEX or LSD.",
)  # fmt: skip
@click.option("--swarm-secret", "swarm_secret", type=click.Path(dir_okay=False), help=SECRET_HELP)
@click.option("--force", is_flag=True, help="Replace a catalog entry of the same name with other content.")
@click.option("--task", help=TASK_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_context
def seed(
    ctx: click.Context,
    model: str,
    name: str,
    prepare_only: bool,
    force: bool,
    task: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Split MODEL (a model directory or a cached hub id) into chunks, sign, make the torrent, seed."""
    from swarm.progress import SilentProgress
    from swarm.publish import publish

    settings = settings_from(ctx, compute=False, **flags)
    if as_json:
        published = publish(model, name, settings, force=force, progress=SilentProgress(), task=task)
    else:
        from swarm.bars import BarProgress

        with BarProgress() as bars:
            published = publish(model, name, settings, force=force, progress=bars, task=task)
    manifest = published.manifest
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": manifest.name,
                    "manifest": str(published.manifest_path),
                    "torrent": str(published.torrent_path),
                    "magnet": manifest.torrent.magnet,
                    "chunks": len(manifest.chunks),
                    "task": manifest.task,
                    "bytes": published.total_bytes,
                    "seconds": round(published.seconds, 3),
                }
            )
        )
    else:
        print_chunk_table(manifest)
        terminal().print(
            f"{manifest.name}: {len(manifest.chunks)} chunks, {published.total_bytes:,} bytes, "
            f"{published.seconds:.2f} s; publisher {manifest.fingerprint}"
        )
        terminal().print(f"manifest {published.manifest_path}\ntorrent  {published.torrent_path}")
        terminal().print(f"magnet   {manifest.torrent.magnet}", soft_wrap=True)
    if prepare_only:
        return
    seed_forever(settings, published, as_json)


def seed_forever(settings: Settings, published: Published, as_json: bool) -> None:
    """Seed until SIGINT/SIGTERM, keeping the model findable by name (this node is its publisher) and usable
    as a bootstrap node; with bootstrap nodes, first wait until the DHT returns the name records."""
    from swarm import signing
    from swarm.discovery.keeper import confirm_records, hold_name
    from swarm.distribute import open_node
    from swarm.torrent import dht
    from swarm.torrent.presence import Presence

    stop = stop_event()
    manifest = published.manifest
    node = open_node(settings)
    presence = Presence(node, settings.announce_interval)
    try:
        node.seed(published.torrent_data, published.content_dir.parent)
        held = hold_name(node, presence, manifest, settings, signing.load_or_create_key(settings.keys_dir))
        message = {"event": "seeding", "name": manifest.name, "port": node.listen_port}
        click.echo(
            json.dumps(message) if as_json else f"seeding {manifest.name} on port {node.listen_port}; Ctrl-C stops"
        )
        sys.stdout.flush()
        if settings.bootstrap and held is not None:
            dht.wait_for_dht(node, settings.network_timeout)
            presence.publish()
            report_discoverable(manifest, confirm_records(node, held, settings.network_timeout), as_json)
        while not stop.is_set():
            node.pump(wait_seconds=0.5)
            presence.tick()
    finally:
        presence.close()
        node.close()
    if not as_json:
        click.echo("stopped seeding")


def report_discoverable(manifest: Manifest, confirmed: dict[str, bool], as_json: bool) -> None:
    """Say where the DHT returns the model's name records (a warning for the slots it does not yet)."""
    if as_json:
        event = {"event": "discoverable", "name": manifest.name, "fingerprint": manifest.fingerprint}
        click.echo(json.dumps(event | {"confirmed": confirmed}))
    else:
        click.echo(f"published {manifest.name}@{manifest.fingerprint} on the DHT")
    missing = [slot for slot, found in confirmed.items() if not found]
    if missing:
        terminal(stderr=True).print(
            f"warning: the DHT does not return the {', '.join(missing)} record(s) of {manifest.name} yet; "
            "they are put again every refresh"
        )
    sys.stdout.flush()


@main.command("resolve")
@click.argument("reference")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory.")
@click.option("--listen", "torrent_listen", help="BitTorrent listen address HOST:PORT.")
@click.option("--timeout", "network_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait on the DHT.")
@click.option("--accept-new-key", is_flag=True, default=None, help="Trust a publisher key other than the pinned one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def resolve_command(ctx: click.Context, reference: str, as_json: bool, **flags: Any) -> None:
    """Find REFERENCE (name, name@fingerprint, manifest/torrent path or magnet): catalog first, then the DHT.

    A model found on the DHT is verified (record and manifest signatures, hashes) and saved in the catalog;
    its publisher key is pinned on first use.
    """
    from swarm.discovery.resolve import parse_reference, resolve_model
    from swarm.distribute import open_node
    from swarm.torrent.session import TorrentNode

    settings = settings_from(ctx, compute=False, **flags)
    node = transfer = None
    if parse_reference(reference).kind != "path" and settings.bootstrap:
        # A one-shot lookup should not join routing tables it is about to leave: a read-only DHT node for
        # the lookups, and a session without DHT for the record bundle's transfer.
        node = open_node(settings, short_lived=True)
        transfer = TorrentNode(settings.torrent_listen.with_port(0), (), dht=False)
    try:
        resolution = resolve_model(reference, settings, node, transfer_node=transfer)
    finally:
        for session in (node, transfer):
            if session is not None:
                session.close()
    manifest = resolution.manifest
    record = resolution.record
    result = {
        "name": manifest.name,
        "fingerprint": manifest.fingerprint,
        "publisher_key": manifest.publisher_key,
        "source": resolution.source,
        "manifest": str(resolution.manifest_file) if resolution.manifest_file else None,
        "info_hashes": [item for item in (manifest.torrent.info_hash_v2, manifest.torrent.info_hash_v1) if item],
        "magnet": manifest.torrent.magnet,
        "issued": record.issued if record else None,
        "holders": [str(holder) for holder in resolution.holders],
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{manifest.name}@{manifest.fingerprint} from {resolution.source}")
    for key in ("manifest", "info_hashes", "magnet", "holders"):
        if result[key]:
            value = result[key]
            click.echo(f"  {key}: {', '.join(value) if isinstance(value, list) else value}")


@main.command()
@click.argument("model")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--present-only", is_flag=True, help="Check only chunks on disk; missing ones are not errors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def verify(ctx: click.Context, model: str, present_only: bool, as_json: bool, **flags: Any) -> None:
    """Check MODEL's manifest signature and the SHA-256 of its chunk files."""
    settings = settings_from(ctx, compute=False, **flags)
    manifest, path = resolve(model, settings.catalog)  # the local files as they are, even with a bad signature
    signature_ok = manifest.signature_valid()
    problems = {}
    for chunk in manifest.chunks:
        problem = chunk_problem(manifest, chunk, settings.models_dir())
        if problem and not (present_only and problem == "missing"):
            problems[chunk.id] = problem
    if as_json:
        click.echo(json.dumps({"name": manifest.name, "signature": signature_ok, "problems": problems}))
    else:
        click.echo(f"{path}: signature {'valid' if signature_ok else 'INVALID'}")
        for chunk_id, problem in problems.items():
            click.echo(f"  {chunk_id}: {problem}")
        if signature_ok and not problems:
            click.echo(f"all {len(manifest.chunks)} chunks verified")
    if not signature_ok or problems:
        ctx.exit(1)


@main.command()
@click.argument("model")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def inspect(ctx: click.Context, model: str, as_json: bool, **flags: Any) -> None:
    """Show the chunks of MODEL (a catalog name, manifest or torrent): kind, blocks, size, pieces."""
    from swarm.torrent.create import read_torrent

    settings = settings_from(ctx, compute=False, **flags)
    path = Path(model)
    if path.suffix == ".torrent" and path.is_file() and not path.with_suffix(".json").is_file():
        made = read_torrent(path)
        rows = [
            {
                "file": item.path,
                "size": item.size,
                "first_piece": item.first_piece,
                "last_piece": item.last_piece,
            }
            for item in made.files.values()
        ]
        if as_json:
            click.echo(json.dumps({"torrent": str(path), "files": rows}))
            return
        from rich.table import Table

        table = Table("file", "size", "pieces")
        for row in rows:
            table.add_row(str(row["file"]), f"{row['size']:,}", f"{row['first_piece']}-{row['last_piece']}")
        terminal().print(table)
        return
    manifest, _ = resolve(model, settings.catalog)
    if as_json:
        click.echo(json.dumps(manifest.to_dict(with_signature=False) | {"fingerprint": manifest.fingerprint}))
        return
    print_chunk_table(manifest)


@main.command()
@click.option("--model", required=True, help="Model: catalog or DHT name, manifest path or torrent path.")
@click.option("--blocks", help="Blocks to host, START:END (default: chosen from --memory and the swarm's needs).")
@click.option("--memory", help="Memory budget for weights, e.g. 2GB or 512MB (default: a share of free RAM).")
@click.option("--kv-memory", help="Memory budget for all sessions' KV caches, e.g. 1GB (default: token caps only).")
@click.option("--listen", "compute_listen", help="Compute (ZeroMQ) listen address HOST:PORT; port 0 picks one.")
@click.option("--torrent-listen", "torrent_listen", help="BitTorrent listen address HOST:PORT.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--tracker", "trackers", multiple=True, help=TRACKER_HELP)
@click.option("--peer", "peers", multiple=True, help="BitTorrent peer HOST:PORT to fetch from directly (repeatable).")
@click.option("--advertise", help="Host or IP others use to reach this peer (when --listen is a wildcard).")
@click.option(
    "--metrics", "metrics_listen", help="Serve Prometheus metrics at http://HOST:PORT/metrics (default: off)."
)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True
)
@click.option("--max-sessions", type=click.IntRange(min=1), help="Sessions served at once.")
@click.option("--swarm-secret", "swarm_secret", type=click.Path(dir_okay=False), help=SECRET_HELP)
@click.option(
    "--allow", "allow_file", type=click.Path(dir_okay=False),
    help="File of the member keys (swarm key prints a node's) this peer admits; others are refused at the handshake.",
)  # fmt: skip
@click.option(
    "--session-timeout", "session_idle_timeout", type=click.FloatRange(min=0.1), help="Idle seconds before a "
    "session's cache is freed."
)  # fmt: skip
@click.option(
    "--busy-poll", "busy_poll_seconds", type=click.FloatRange(min=0), help="Seconds to check for a session's next "
    "step without sleeping after each step: lower latency per hop for one CPU core kept busy (default 0)."
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_context
def join(
    ctx: click.Context,
    model: str,
    blocks: str | None,
    memory: str | None,
    kv_memory: str | None,
    peers: tuple[str, ...],
    advertise: str | None,
    device: str,
    dtype: str,
    as_json: bool,
    **flags: Any,
) -> None:
    """Serve blocks of MODEL to the swarm: pick them, fetch and verify their chunks, compute, keep seeding."""
    import logging

    from swarm.distribute import parse_block_range
    from swarm.peer.join import JoinOptions
    from swarm.peer.join import join as run_join
    from swarm.peer.selection import parse_byte_size

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if kv_memory is not None:
        flags["kv_memory"] = parse_byte_size(kv_memory)
    settings = settings_from(ctx, **flags)
    options = JoinOptions(
        model=model,
        blocks=parse_block_range(blocks) if blocks else None,
        memory_bytes=parse_byte_size(memory) if memory else None,
        peers=peers,
        device=device,
        dtype=dtype,
        advertise_host=advertise,
    )

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        elif event["event"] == "fetching":
            click.echo(f"{event['model']}: hosting blocks {event['blocks'][0]}:{event['blocks'][1]}")
        elif event["event"] == "serving":
            what = "a full replica" if event["replica"] else f"blocks {event['blocks'][0]}:{event['blocks'][1]}"
            speed = f"{event['throughput']:.1f} tokens/s"
            if event["task"]:
                what, speed = f"the task {event['task']}", "whole inputs"
            metrics = f", metrics on {event['metrics']}" if event["metrics"] else ""
            keyed = f" (its own key only: {event['keyed_address']})" if event.get("keyed_address") else ""
            click.echo(
                f"serving {what} of {event['model']} on {event['address']}{keyed}, BitTorrent and DHT on port "
                f"{event['torrent_port']}{metrics} ({speed}); Ctrl-C stops"
            )
        elif event["event"] == "moving":
            click.echo(f"moving to blocks {event['blocks'][0]}:{event['blocks'][1]}: the swarm needs them more")
        elif event["event"] == "moved":
            click.echo(f"serving blocks {event['blocks'][0]}:{event['blocks'][1]} now")
        elif event["event"] == "stopped":
            click.echo("stopped")
        sys.stdout.flush()

    run_join(options, settings, stop_event(), emit)


def open_run_client(
    settings: Settings,
    model: str,
    ensemble: str | None,
    embed: bool,
    route_text: str | None,
    torrent_peers: tuple[str, ...],
    sampling: tuple[float, int, float, int | None],
) -> tuple[SwarmClient | EnsembleClient, SamplingParams]:
    """`swarm run`'s client (one model's, or an ensemble's when --ensemble is given) and sampling parameters."""
    from swarm.client.resolve import Resolver, check_one_kind, check_run_mode, model_references, parse_route

    references = model_references(model, ensemble, embed=embed)
    resolver = Resolver(settings, torrent_peers)
    try:
        # Resolve before importing torch and transformers: a mistyped name fails in a second, not ten.
        resolved = [resolver.manifest(reference) for reference in references]
        check_one_kind([manifest for manifest, _ in resolved])
        for manifest, _ in resolved:
            check_run_mode(manifest, embed=embed)
        route = parse_route(route_text) if route_text else []
        from transformers.utils import logging as transformers_logging

        from swarm.client.ensemble import EnsembleClient
        from swarm.client.generate import SamplingParams
        from swarm.client.run import SwarmClient

        # Loading the local parts would print progress bars and tokenizer notes around the streamed text.
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        seed = sampling[-1]
        params = SamplingParams(*sampling).check()
        if ensemble is None:
            return SwarmClient.from_resolved(resolver, *resolved[0], route, spread_seed=seed), params
        return EnsembleClient.from_resolved(resolver, resolved, ensemble, route, spread_seed=seed), params
    finally:
        resolver.close()


ENSEMBLE_HELP = (
    "Combine the --model A,B,... (one tokenizer, each on its own peers): mean-logits averages their next-token "
    "logits and samples from the mean; vote takes each model's own choice (argmax, or a draw from its own "
    "distribution when sampling) and the majority wins, ties going to the higher mean logit; mean averages "
    "encoders' embeddings (--embed)."
)


@main.command()
@click.option(
    "--model",
    required=True,
    help="Model: catalog or DHT name, manifest path or torrent path; A,B,... for an ensemble (with --ensemble).",
)
@click.option("--ensemble", type=click.Choice(["mean-logits", "vote", "mean"]), help=ENSEMBLE_HELP)
@click.option(
    "--verify",
    "verify_fraction",
    type=click.FloatRange(min=0, max=1),
    help="Share of steps to check by re-running one hop on other peers with its blocks; peers the majority "
    "contradicts are excluded (0 to 1; default 0).",
)
@click.option("--swarm-secret", "swarm_secret", type=click.Path(dir_okay=False), help=SECRET_HELP)
@click.option("--prompt", help="Text to continue (causal language models).")
@click.option("--embed", "embed_text", help="Text to embed (encoder models such as BERT).")
@click.option("--input", "task_input", help=INPUT_HELP)
@click.option("--task", help="The task --input is for; checked against the model's (default: the model's own).")
@click.option(
    "--param", "task_params", multiple=True, help="A task's parameter NAME=VALUE (repeatable; labels: a,b,c)."
)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Where a task's file goes.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), help="Most tokens to generate (default 64).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 is greedy.")
@click.option(
    "--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Keep the K likeliest (0: off)."
)
@click.option(
    "--top-p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=1.0,
    show_default=True,
    help="Keep the likeliest tokens whose probabilities add up to P (1: off).",
)
@click.option("--seed", type=int, help="Seed for sampling (and for spreading requests over replicas).")
@click.option("--ban-eos", is_flag=True, help="Never stop on EOS: always generate --max-new-tokens (benchmarks).")
@click.option("--draft", type=click.Path(file_okay=False, path_type=Path), help=DRAFT_HELP)
@click.option(
    "--route",
    "route_text",
    help="Pinned peers HOST:PORT[,HOST:PORT...]; each is asked for its blocks (an ensemble's models each use those "
    "that serve it).",
)
@click.option("--peer", "torrent_peers", multiple=True, help="BitTorrent peer HOST:PORT to fetch chunks from.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--tracker", "trackers", multiple=True, help=TRACKER_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--timeout", "request_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for each reply.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of streaming.")
@click.pass_context
def run(
    ctx: click.Context,
    model: str,
    ensemble: str | None,
    prompt: str | None,
    embed_text: str | None,
    max_new_tokens: int | None,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    ban_eos: bool,
    route_text: str | None,
    torrent_peers: tuple[str, ...],
    as_json: bool,
    task_input: str | None,
    task: str | None,
    task_params: tuple[str, ...],
    out_file: Path | None,
    **flags: Any,
) -> None:
    """Run MODEL on the swarm: stream a continuation of --prompt, print the embedding of --embed, or run the
    model's task (speech recognition, image classification, ...) on --input. With --model A,B,... and --ensemble,
    several models that share a tokenizer run together, each on its own peers."""
    if sum(given is not None for given in (prompt, embed_text, task_input)) != 1:
        raise SwarmError("give exactly one of --prompt TEXT, --embed TEXT or --input FILE|TEXT")
    settings = settings_from(ctx, **flags)
    if task_input is not None:
        run_task(settings, model, route_text, TaskRequest(task_input, task, task_params, out_file), as_json)
        return
    if settings.draft is not None and (ensemble is not None or embed_text is not None):
        raise SwarmError("--draft speeds up generating with one model: not with --ensemble or --embed")
    client, params = open_run_client(
        settings, model, ensemble, embed_text is not None, route_text, torrent_peers, (temperature, top_k, top_p, seed)
    )
    with client:
        if embed_text is not None:
            embedded = client.embed(embed_text)
            if as_json:
                click.echo(json.dumps(embedded.to_json()))
            else:
                click.echo(" ".join(f"{value:.6g}" for value in embedded.embedding))
            return

        def stream(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        result = client.generate(
            prompt or "",
            settings.max_new_tokens if max_new_tokens is None else max_new_tokens,
            params,
            on_text=None if as_json else stream,
            ban_eos=ban_eos,
        )
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo("")
        timings = result.generation
        rate = timings.tokens_per_second
        terminal(stderr=True).print(
            f"[dim]{len(timings.token_ids)} tokens via {len(result.route)} hop(s); prefill "
            f"{timings.prefill_seconds:.3f} s" + (f", {rate:.1f} tokens/s[/dim]" if rate else "[/dim]")
        )


@dataclass(frozen=True)
class TaskRequest:
    """What `swarm run --input` asks of a task model."""

    input: str
    task: str | None
    params: tuple[str, ...]
    out: Path | None


def run_task(settings: Settings, model: str, route_text: str | None, request: TaskRequest, as_json: bool) -> None:
    """`swarm run --input`: the model's task on a file (or text) at one of its peers; JSON out, and a file to --out."""
    from swarm.client.resolve import Resolver, parse_route
    from swarm.tasks.catalog import parse_params
    from swarm.tasks.client import TaskClient, check_task

    resolver = Resolver(settings)
    try:
        manifest, torrent_data = resolver.manifest(model)
        spec = check_task(manifest, request.task)
        params = parse_params(spec, request.params)
        if spec.output != "json" and request.out is None:
            raise SwarmError(f"{spec.name} makes a{'n image' if spec.output == 'image' else ' sound'}: give --out FILE")
        data = task_input_bytes(request.input, spec.input)
        route = parse_route(route_text) if route_text else []
        client = TaskClient.for_manifest(resolver, manifest, torrent_data)
        with client:
            client.find_peers(route or resolver.compute_addresses(manifest), pinned=bool(route))
            result = client.run(data, params)
    finally:
        resolver.close()
    if request.out is not None and result.file is not None:
        request.out.write_bytes(result.file)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(json.dumps(result.output, indent=1, ensure_ascii=False))
    saved = f"; {result.file_type} written to {request.out}" if request.out is not None and result.file else ""
    terminal(stderr=True).print(f"[dim]{spec.name} at {result.peer} in {result.seconds:.3f} s{saved}[/dim]")


def task_input_bytes(value: str, media: str) -> bytes:
    """--input's bytes: the file it names, or (for text tasks) the text itself."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_bytes()
    except OSError as error:
        raise SwarmError(f"cannot read --input {value}: {error}") from None
    if media != "text":
        raise SwarmError(f"--input {value}: no such file (this task takes {media} files)")
    return value.encode("utf-8")


@main.command()
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "pipeline_input", required=True, help="The pipeline's input: a file, or text.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Where a file output goes.")
@click.option("--peer", "torrent_peers", multiple=True, help="BitTorrent peer HOST:PORT to fetch chunks from.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--timeout", "request_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for each reply.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: every step's output and seconds.")
@click.pass_context
def pipeline(
    ctx: click.Context,
    definition: Path,
    pipeline_input: str,
    out_file: Path | None,
    torrent_peers: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Run the pipeline of models DEFINITION (YAML: steps, each a model and its input made from earlier outputs;
    see docs/design.md) on --input: independent steps at once, each where its model is served."""
    from swarm.tasks.pipeline import read_pipeline
    from swarm.tasks.pipeline_run import close_clients, connect_clients, run_pipeline

    spec = read_pipeline(definition)
    settings = settings_from(ctx, **flags)
    data = task_input_bytes(pipeline_input, "text")
    from transformers.utils import logging as transformers_logging

    # Loading a language model's local parts would print progress bars around the output.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    streamed: list[str] = []

    def stream(piece: str) -> None:
        streamed.append(piece)
        click.echo(piece, nl=False)

    clients = connect_clients(settings, spec, torrent_peers)
    try:
        result = run_pipeline(spec, clients, data, on_text=None if as_json else stream)
    finally:
        close_clients(clients)
    write_pipeline_output(result, out_file)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    final = result.final
    if not streamed and final.file is None:
        click.echo(final.text if final.text is not None else json.dumps(final.output), nl=False)
    times = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in result.seconds.items())
    saved = f"; {final.file_type} written to {out_file}" if final.file is not None else ""
    terminal(stderr=True).print(f"\n[dim]{result.name}: {times}{saved}[/dim]")


def write_pipeline_output(result: PipelineResult, out_file: Path | None) -> None:
    """The output step's file (or text) to --out; a file output needs --out."""
    final = result.final
    if final.file is not None and out_file is None:
        raise SwarmError(f"the pipeline's output ({result.output_step}) is a {final.file_type} file: give --out FILE")
    if out_file is not None:
        out_file.write_bytes(final.file if final.file is not None else (final.text or "").encode("utf-8"))


@main.command()
@click.option("--model", "model_list", default="", help="Model(s) to serve: NAME or NAME,NAME,... (each by name).")
@click.option(
    "--pipeline", "pipeline_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A pipeline of models (YAML, as swarm pipeline takes) to serve at /v1/pipelines/NAME (repeatable).",
)  # fmt: skip
@click.option("--listen", "serve_listen", help="HTTP address HOST:PORT (default 127.0.0.1:8000; port 0 picks one).")
@click.option("--api-key", help="Key clients must send as 'Authorization: Bearer KEY' (also SWARM_API_KEY).")
@click.option("--route", "route_text", help="Pinned peers HOST:PORT[,HOST:PORT...] (one model only).")
@click.option("--peer", "torrent_peers", multiple=True, help="BitTorrent peer HOST:PORT to fetch chunks from.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--tracker", "trackers", multiple=True, help=TRACKER_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--timeout", "request_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for each reply.")
@click.option("--max-generations", "serve_max_generations", type=click.IntRange(min=1), help="Generations at once.")
@click.option(
    "--verify",
    "verify_fraction",
    type=click.FloatRange(min=0, max=1),
    help="Share of steps to check by re-running one hop on other peers with its blocks; peers the majority "
    "contradicts are excluded (0 to 1; default 0).",
)
@click.option("--swarm-secret", "swarm_secret", type=click.Path(dir_okay=False), help=SECRET_HELP)
@click.option("--draft", type=click.Path(file_okay=False, path_type=Path), help=DRAFT_HELP)
@click.option(
    "--ensemble",
    type=click.Choice(["mean-logits", "vote", "mean"]),
    help="Serve the --model A,B,... as one ensemble named A+B+... (see swarm run --help).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_context
def serve(
    ctx: click.Context,
    model_list: str,
    route_text: str | None,
    torrent_peers: tuple[str, ...],
    ensemble: str | None,
    pipeline_files: tuple[Path, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Serve models of the swarm over an OpenAI-compatible HTTP API (chat, completions, embeddings, speech to
    text, text to speech, any task at /v1/tasks/TASK, pipelines), with a chat page at / and /metrics."""
    from swarm.client.resolve import parse_route

    references = [name.strip() for name in model_list.split(",") if name.strip()]
    if not references and not pipeline_files:
        raise SwarmError("--model names no model: give NAME or NAME,NAME,... (or --pipeline FILE)")
    if ensemble is not None and len(references) < 2:
        raise SwarmError(f"--ensemble {ensemble} needs several models: give --model A,B,...")
    route = parse_route(route_text) if route_text else []
    if route and len(references) > 1 and ensemble is None:
        raise SwarmError(
            "--route pins the peers of one model (or of an --ensemble): serve one model with it, or find peers "
            "with --bootstrap"
        )
    settings = settings_from(ctx, **flags)
    if settings.draft is not None and (ensemble is not None or len(references) > 1):
        raise SwarmError("--draft drafts for one model's tokenizer: serve one model with it")
    from transformers.utils import logging as transformers_logging

    from swarm.serve.server import connect_models, serve_until_stopped

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    registry, watched = connect_models(settings, references, route, torrent_peers, ensemble, pipeline_files)

    def announce(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event), nl=True)
            sys.stdout.flush()
            return
        names = [f"{model['id']} ({model['peers']} peers)" for model in event["models"]]
        names += [f"the pipeline {name}" for name in event["pipelines"]]
        click.echo(f"serving {', '.join(names)} at {event['address']}/v1; chat page at {event['address']}/")

    serve_until_stopped(settings, registry, watched, announce)


@main.command()
@click.argument("models", nargs=-1)
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--timeout", "network_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait on the DHT.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, models: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Show the swarm: for MODELS (default: every model in the catalog), their seeders, their compute peers with
    blocks, throughput, load and version, and which blocks have no server or only one."""
    from swarm.catalog import NAME_PATTERN
    from swarm.client.exclusions import load_exclusions
    from swarm.discovery.resolve import resolve_model
    from swarm.distribute import open_node
    from swarm.status import status_document
    from swarm.survey import survey

    settings = settings_from(ctx, **flags)
    if not settings.bootstrap:
        raise SwarmError(
            "swarm status asks the swarm: give --bootstrap HOST:PORT (any running node) or SWARM_BOOTSTRAP"
        )
    names = list(models) or sorted(
        path.stem for path in settings.catalog.glob("*.json") if NAME_PATTERN.match(path.stem)
    )
    if not names:
        raise SwarmError(f"no model to show: name one (swarm status NAME) or resolve one into {settings.catalog}")
    node = open_node(settings, short_lived=True)
    try:
        manifests = [resolve_model(name, settings, node).manifest for name in names]
        surveys = survey(node, manifests, min(settings.network_timeout, 5.0))
        document = status_document(surveys, load_exclusions(settings.home))
    finally:
        node.close(timeout=1.0)
    if as_json:
        click.echo(json.dumps(document))
        return
    for model in document["models"]:
        kind = f"task {model['task']}, " if model["task"] else ""
        kind += {
            "spans": f"{model['num_blocks']} blocks in spans",
            "replicas or spans": f"{model['num_blocks']} blocks, whole replicas or spans",
        }.get(model["served_as"], "whole replicas")
        seeders = f"{len(model['seeders'])} seeder(s)"
        click.echo(f"{model['name']}@{model['fingerprint']} ({kind}): {model['summary']}; {seeders}")
        for peer in model["peers"]:
            blocks = "whole model" if peer["replica"] else f"blocks {peer['blocks'][0]}:{peer['blocks'][1]}"
            speed = f"task {peer['task']}" if peer["task"] else f"{peer['throughput']:.1f} tokens/s"
            click.echo(
                f"  {peer['address']}  {blocks}  {speed}  "
                f"sessions {peer['sessions']}/{peer['max_sessions']}  version {peer['version'] or '?'}"
            )
        for address in model["silent_peers"]:
            click.echo(f"  {address}  announced, but did not answer")
    for entry in document["excluded"]:
        blocks = "{}:{}".format(*entry["blocks"])
        click.echo(f"excluded here: {entry['peer']} ({entry['model']} blocks {blocks}): {entry['reason']}")


@main.command()
@click.option("--model", required=True, help="Model: catalog or DHT name, manifest path or torrent path.")
@click.option(
    "--input", "input_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="JSON lines: "
    '{"prompt": ...}, {"messages": [...]} or {"input": ...} (to embed), each with an optional "id" and "max_tokens".'
)  # fmt: skip
@click.option(
    "--output", "output_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="JSON lines, "
    "one per input line in input order; an existing one is resumed (its lines are not done again)."
)  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1), help="Items at once (default: a few per route found).")
@click.option("--max-new-tokens", type=click.IntRange(min=0), help="Most tokens per item (default 64).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 is greedy.")
@click.option(
    "--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Keep the K likeliest (0: off)."
)
@click.option(
    "--top-p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=1.0,
    show_default=True,
    help="Keep the likeliest tokens whose probabilities add up to P (1: off).",
)
@click.option("--seed", type=int, help="Seed for sampling; each line samples with its own seed derived from it.")
@click.option("--ban-eos", is_flag=True, help="Never stop on EOS: always generate --max-new-tokens (benchmarks).")
@click.option(
    "--route", "routes", multiple=True, help="Peers HOST:PORT[,HOST:PORT...] of one replica or chain (repeatable); "
    "items are spread over all of them."
)  # fmt: skip
@click.option("--peer", "torrent_peers", multiple=True, help="BitTorrent peer HOST:PORT to fetch chunks from.")
@click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--tracker", "trackers", multiple=True, help=TRACKER_HELP)
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--timeout", "request_timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for each reply.")
@click.option("--retry-errors", is_flag=True, help="Do again the lines the output holds as errors.")
@click.option("--draft", type=click.Path(file_okay=False, path_type=Path), help=DRAFT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event instead of a bar.")
@click.pass_context
def batch(
    ctx: click.Context,
    model: str,
    input_path: Path,
    output_path: Path,
    concurrency: int | None,
    max_new_tokens: int | None,
    routes: tuple[str, ...],
    torrent_peers: tuple[str, ...],
    retry_errors: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Run every line of --input through MODEL on the swarm, spread over all its replicas and routes, into --output
    (in input order; a re-run does only the lines not there yet). Ctrl-C stops after the items in flight."""
    from swarm.batch.job import BatchOptions, BatchRequest, run_batch
    from swarm.batch.progress import JsonReporter, bar_reporter, summary_text

    sampling = {key: flags.pop(key) for key in ("temperature", "top_k", "top_p", "seed", "ban_eos")}
    settings = settings_from(ctx, **flags)
    request = BatchRequest(model, input_path, output_path, routes, torrent_peers, concurrency, retry_errors)
    options = BatchOptions(settings.max_new_tokens if max_new_tokens is None else max_new_tokens, **sampling)
    if as_json:
        summary = run_batch(request, settings, options, JsonReporter(click.echo))
        click.echo(json.dumps(summary))
    else:
        with bar_reporter() as bars:
            summary = run_batch(request, settings, options, bars)
        click.echo(summary_text(summary))
    if not summary["complete"]:
        click.echo(f"interrupted: {summary['done']} of {summary['total']} lines are in {output_path}; the same command "
                   "does the rest", err=True)  # fmt: skip
        ctx.exit(130)
    if summary["errors_total"]:
        click.echo(
            f"error: {summary['errors_total']} line(s) failed (error records in {output_path}); --retry-errors "
            "does them again",
            err=True,
        )
        ctx.exit(1)


def _transfer_options(command: Any) -> Any:
    """Flags shared by fetch and seedbox: where things live, the BitTorrent address, DHT, rate limits."""
    for option in reversed(
        [
            click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory."),
            click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunks."),
            click.option("--listen", "torrent_listen", help="BitTorrent (and DHT) listen address HOST:PORT."),
            click.option("--bootstrap", multiple=True, help=BOOTSTRAP_HELP),
            click.option("--upload-limit", type=click.IntRange(min=0), help="Upload limit in bytes/s (0: none)."),
            click.option("--download-limit", type=click.IntRange(min=0), help="Download limit in bytes/s (0: none)."),
            click.option(
                "--limit-local-peers", is_flag=True, default=None, help="Apply the limits to loopback/LAN peers too."
            ),
            click.option("--swarm-secret", "swarm_secret", type=click.Path(dir_okay=False), help=SECRET_HELP),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event."),
        ]
    ):
        command = option(command)
    return command


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def key(ctx: click.Context, as_json: bool) -> None:
    """Print this node's member key: what a private swarm's allow-list (--allow) names to admit it."""
    from swarm.transport.keys import member_keypair

    settings: Settings = ctx.obj
    public, _ = member_keypair(settings.keys_dir)
    text = public.decode("ascii")
    click.echo(json.dumps({"member_key": text, "keys_dir": str(settings.keys_dir)}) if as_json else text)


@main.command()
@click.argument("model")
@click.option("--blocks", help="Fetch the chunks of blocks START:END (plus meta).")
@click.option("--chunks", "chunk_ids", help="Fetch these chunk ids, comma-separated (plus meta).")
@click.option("--peer", "peers", multiple=True, help="Connect to this BitTorrent peer HOST:PORT (repeatable).")
@click.option("--tracker", "trackers", multiple=True, help=TRACKER_HELP)
@click.option("--timeout", "network_timeout", type=click.FloatRange(min=0.1), help="Seconds without progress.")
@click.option("--seed", "keep_seeding", is_flag=True, help="Keep seeding afterwards until SIGINT/SIGTERM.")
@_transfer_options
@click.pass_context
def fetch(
    ctx: click.Context,
    model: str,
    blocks: str | None,
    chunk_ids: str | None,
    peers: tuple[str, ...],
    keep_seeding: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Fetch MODEL's chunks over BitTorrent and verify them (MODEL: catalog name, manifest, torrent, magnet)."""
    from swarm.distribute import JsonTransfer, run_fetch

    settings = settings_from(ctx, compute=False, **flags)
    stop = stop_event()

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        elif event["event"] == "verified":
            sources = event["sources"]
            click.echo(
                f"{event['name']}: {len(event['chunks'])} chunks verified ({len(event['already_verified'])} were "
                f"already here); {event['downloaded_bytes']:,} bytes in {event['seconds']:.1f} s from "
                f"{len(sources)} peer{'s' if len(sources) != 1 else ''}"
            )
        elif event["event"] == "seeding":
            click.echo(f"seeding {event['name']} on port {event['port']}; Ctrl-C stops")
        sys.stdout.flush()

    options = dict(blocks=blocks, chunk_ids=chunk_ids, peers=peers, keep_seeding=keep_seeding, stop=stop, emit=emit)
    if as_json:
        run_fetch(model, settings, reporter=JsonTransfer(), **options)  # type: ignore[arg-type]
    else:
        from swarm.bars import BarTransfer

        with BarTransfer() as bars:
            run_fetch(model, settings, reporter=bars, **options)  # type: ignore[arg-type]


@main.command()
@click.option("--status", "status_listen", help="HTTP address HOST:PORT of /status, /metrics and the tracker.")
@click.option(
    "--tracker/--no-tracker", default=None, help="Answer BitTorrent tracker announces at /announce (default: on)."
)
@click.option("--mirror", is_flag=True, help="Also fetch every chunk of every catalog entry this box lacks.")
@click.option("--peer", "peers", multiple=True, help="Connect to this BitTorrent peer HOST:PORT (repeatable).")
@click.option("--rescan", "catalog_rescan_interval", type=click.FloatRange(min=0.1), help="Seconds between scans.")
@_transfer_options
@click.pass_context
def seedbox(ctx: click.Context, mirror: bool, peers: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Seed every catalog entry whose chunks are here, serve /status and /metrics, run until SIGTERM."""
    from swarm.seedbox import Seedbox

    settings = settings_from(ctx, **flags)
    stop = stop_event()

    def emit(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event) if as_json else event.get("text", json.dumps(event)))
        sys.stdout.flush()

    Seedbox(settings, mirror=mirror, peers=peers, emit=emit).run(stop)


def print_chunk_table(manifest: Manifest) -> None:
    from rich.table import Table

    table = Table(title=f"{manifest.name} ({manifest.family or manifest.architecture}, {manifest.dtype})")
    for column in ("chunk", "kind", "blocks", "size", "pieces", "root"):
        table.add_column(column, justify="right" if column in ("size", "pieces") else "left")
    for chunk in manifest.chunks:
        blocks = f"{chunk.blocks[0]}-{chunk.blocks[1]}" if chunk.blocks else ""
        table.add_row(
            chunk.id,
            chunk.kind,
            blocks,
            f"{chunk.size:,}",
            f"{chunk.first_piece}-{chunk.last_piece}",
            chunk.root[:12],
        )
    terminal().print(table)
