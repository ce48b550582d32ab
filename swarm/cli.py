"""The `swarm` command line: parses flags, calls into the packages, prints."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from swarm.catalog import resolve
from swarm.config import Settings, load_settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest, chunk_problem

console = Console()
errors = Console(stderr=True)


class SwarmGroup(click.Group):
    """Turns a SwarmError anywhere below into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    base: Settings = ctx.obj
    return base.with_overrides(**overrides)


@click.group(cls=SwarmGroup)
@click.version_option(package_name="swarm")
@click.pass_context
def main(ctx: click.Context) -> None:
    """BitTorrent-backed model distribution and compute swarm."""
    ctx.obj = load_settings()


def stop_event() -> threading.Event:
    """Set by SIGINT or SIGTERM, so long-running commands can shut down cleanly."""
    event = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda _signum, _frame: event.set())
    return event


@main.command()
@click.argument("model")
@click.option("--name", required=True, help="Name the model is published under.")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--prepare-only", is_flag=True, help="Write chunks, manifest and torrent; do not seed.")
@click.option("--format", "torrent_format", type=click.Choice(["v2", "hybrid", "v1"]), help="Torrent format.")
@click.option("--blocks-per-chunk", type=click.IntRange(min=1), help="Blocks in each chunk file.")
@click.option("--piece-length", type=click.IntRange(min=16384), help="Piece length in bytes (power of 2).")
@click.option("--listen", "torrent_listen", help="BitTorrent listen address HOST:PORT.")
@click.option("--force", is_flag=True, help="Replace a catalog entry of the same name with other content.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_context
def seed(
    ctx: click.Context, model: str, name: str, prepare_only: bool, force: bool, as_json: bool, **flags: Any
) -> None:
    """Split MODEL (a model directory or a cached hub id) into chunks, sign, make the torrent, seed."""
    from swarm.progress import BarProgress, SilentProgress
    from swarm.publish import publish

    settings = settings_from(ctx, **flags)
    if as_json:
        published = publish(model, name, settings, force=force, progress=SilentProgress())
    else:
        with BarProgress() as bars:
            published = publish(model, name, settings, force=force, progress=bars)
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
                    "bytes": published.total_bytes,
                    "seconds": round(published.seconds, 3),
                }
            )
        )
    else:
        print_chunk_table(manifest)
        console.print(
            f"{manifest.name}: {len(manifest.chunks)} chunks, {published.total_bytes:,} bytes, "
            f"{published.seconds:.2f} s; publisher {manifest.fingerprint}"
        )
        console.print(f"manifest {published.manifest_path}\ntorrent  {published.torrent_path}")
        console.print(f"magnet   {manifest.torrent.magnet}", soft_wrap=True)
    if prepare_only:
        return
    seed_forever(settings, published.torrent_data, published.content_dir.parent, manifest.name, as_json)


def seed_forever(settings: Settings, torrent_data: bytes, save_path: Path, name: str, as_json: bool) -> None:
    from swarm.torrent.session import TorrentNode

    stop = stop_event()
    node = TorrentNode(settings.torrent_listen, settings.bootstrap)
    node.seed(torrent_data, save_path)
    message = {"event": "seeding", "name": name, "port": node.listen_port}
    click.echo(json.dumps(message) if as_json else f"seeding {name} on port {node.listen_port}; Ctrl-C stops")
    sys.stdout.flush()
    try:
        while not stop.is_set():
            node.pump(wait_seconds=0.5)
    finally:
        node.close()
    if not as_json:
        click.echo("stopped seeding")


@main.command()
@click.argument("model")
@click.option("--catalog", "catalog_dir", type=click.Path(path_type=Path), help="Catalog directory.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Data directory for chunk files.")
@click.option("--present-only", is_flag=True, help="Check only chunks on disk; missing ones are not errors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def verify(ctx: click.Context, model: str, present_only: bool, as_json: bool, **flags: Any) -> None:
    """Check MODEL's manifest signature and the SHA-256 of its chunk files."""
    settings = settings_from(ctx, **flags)
    manifest, path = resolve(model, settings.catalog)
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

    settings = settings_from(ctx, **flags)
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
        table = Table("file", "size", "pieces")
        for row in rows:
            table.add_row(str(row["file"]), f"{row['size']:,}", f"{row['first_piece']}-{row['last_piece']}")
        console.print(table)
        return
    manifest, _ = resolve(model, settings.catalog)
    if as_json:
        click.echo(json.dumps(manifest.to_dict(with_signature=False) | {"fingerprint": manifest.fingerprint}))
        return
    print_chunk_table(manifest)


def print_chunk_table(manifest: Manifest) -> None:
    table = Table(title=f"{manifest.name} ({manifest.family or manifest.architecture}, {manifest.dtype})")
    for column in ("chunk", "kind", "blocks", "size", "pieces", "sha256"):
        table.add_column(column, justify="right" if column in ("size", "pieces") else "left")
    for chunk in manifest.chunks:
        blocks = f"{chunk.blocks[0]}-{chunk.blocks[1]}" if chunk.blocks else ""
        table.add_row(
            chunk.id,
            chunk.kind,
            blocks,
            f"{chunk.size:,}",
            f"{chunk.first_piece}-{chunk.last_piece}",
            chunk.sha256[:12],
        )
    console.print(table)
