"""A private swarm (`--swarm-secret FILE`) over real peers: members compute together, exactly as local transformers
does, over CURVE-encrypted connections (checked on the wire with tcpdump); a client without the secret, or with
another swarm's, is refused at the handshake with a one-line error. A public swarm is encrypted too, by default."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.torrent.create import read_torrent
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, published_llama, start_liar, start_peers

PROMPT = "Readability counts."
NEW_TOKENS = 6
# Text that every plaintext compute message carries (its JSON header).
PLAINTEXT_MARKERS = (b'"kind"', b"open_session", b'"route"')


@dataclass
class PrivateSwarm:
    model_dir: Path
    home: Path
    secret: Path
    other_secret: Path
    peers: list[PeerProcess]

    def run(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.run_route(self.peers, *flags)

    def run_route(
        self, peers: list[PeerProcess], *flags: str, environment: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        route = ",".join(peer.address for peer in peers)
        arguments = ["--model", "priv", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--route", route]
        return subprocess.run(
            [SWARM, "run", *arguments, *flags], env=environment or peer_environment(os.environ, home=self.home),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture(scope="module")
def private(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSwarm]:
    root = tmp_path_factory.mktemp("private")
    model_dir, environment = published_llama(make_model_tool, root, "priv", seed=31)
    secret, other = root / "swarm.secret", root / "other.secret"
    secret.write_text("correct horse battery staple, but longer\n")
    other.write_text("another swarm entirely, same length ok\n")
    peers = start_peers(
        [["--model", "priv", "--blocks", span, "--swarm-secret", str(secret)] for span in ("0:2", "2:4")],
        environment,
        root / "logs",
    )
    try:
        yield PrivateSwarm(model_dir, root / "home", secret, other, peers)
    finally:
        for peer in peers:
            peer.stop()


def local_text(model_dir: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    output = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS)
    return [int(token) for token in output[0, prompt.shape[1] :]]


def capture(ports: list[int], path: Path) -> subprocess.Popen[bytes]:
    tcpdump = shutil.which("tcpdump")
    assert tcpdump, "tcpdump is needed (.ci/run installs it)"
    expression = " or ".join(f"tcp port {port}" for port in ports)
    process = subprocess.Popen(
        [tcpdump, "-i", "lo", "-U", "-s", "0", "-w", str(path), expression],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    # tcpdump says "listening on lo" once it captures.
    deadline = time.monotonic() + 10
    while b"listening on" not in process.stderr.readline() and time.monotonic() < deadline:
        pass
    return process


def test_members_compute_together_over_encrypted_connections(private: PrivateSwarm, tmp_path: Path) -> None:
    ports = [int(peer.address.rpartition(":")[2]) for peer in private.peers]
    pcap = tmp_path / "private.pcap"
    tcpdump = capture(ports, pcap)
    try:
        done = private.run("--swarm-secret", str(private.secret), "--json")
    finally:
        time.sleep(0.5)
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == local_text(private.model_dir)
    wire_bytes = pcap.read_bytes()
    # Hidden states of every step crossed the wire (kilobytes), and no plaintext header did.
    assert len(wire_bytes) > 20_000
    assert not [marker for marker in PLAINTEXT_MARKERS if marker in wire_bytes]


@pytest.mark.parametrize("secret", [None, "other"])
def test_outsiders_are_refused_at_the_handshake(private: PrivateSwarm, secret: str | None) -> None:
    flags = [] if secret is None else ["--swarm-secret", str(private.other_secret)]
    done = private.run(*flags)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "ZeroMQ handshake" in lines[0] and "--swarm-secret" in lines[0]


# The start of every plaintext BitTorrent handshake (BEP 3): absent when the stream is encrypted.
BITTORRENT_HANDSHAKE = b"\x13BitTorrent protocol"


def seed_and_fetch(model_dir: Path, root: Path, flags: list[str]) -> tuple[Path, bytes]:
    """`swarm seed MODEL --name ptor FLAGS` seeds; another home fetches every chunk from it with `swarm fetch ptor
    --peer` and the same `--swarm-secret` (if any) while tcpdump captures; the publisher's torrent and the capture."""
    publisher_home, fetcher_home = root / "publisher", root / "fetcher"
    seeder = subprocess.Popen(
        [SWARM, "seed", str(model_dir), "--name", "ptor", "--listen", "127.0.0.1:0", "--json", *flags],
        env=peer_environment(os.environ, home=publisher_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert seeder.stdout is not None
        events = (json.loads(line) for line in seeder.stdout if line.startswith("{"))
        port = next(event["port"] for event in events if event.get("event") == "seeding")
        (fetcher_home / "torrents").mkdir(parents=True)
        for suffix in (".json", ".torrent"):
            shutil.copy(publisher_home / "torrents" / f"ptor{suffix}", fetcher_home / "torrents")
        secret = [flags[flags.index("--swarm-secret") + 1]] if "--swarm-secret" in flags else []
        pcap = root / "bittorrent.pcap"
        tcpdump = capture([port], pcap)
        try:
            done = subprocess.run(
                [SWARM, "fetch", "ptor", "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--json",
                 *(["--swarm-secret", *secret] if secret else [])],
                env=peer_environment(os.environ, home=fetcher_home), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            time.sleep(0.5)
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=10)
        assert done.returncode == 0, done.stderr
    finally:
        seeder.send_signal(signal.SIGTERM)
        seeder.wait(timeout=30)
    return publisher_home / "torrents" / "ptor.torrent", pcap.read_bytes()


def test_a_private_swarms_bittorrent_is_private_and_encrypted(private: PrivateSwarm, tmp_path: Path) -> None:
    flags = ["--private", "--swarm-secret", str(private.secret)]
    torrent, wire_bytes = seed_and_fetch(private.model_dir, tmp_path / "members", flags)
    assert read_torrent(torrent).private
    # The model's bytes crossed the wire, and not one plaintext handshake.
    assert len(wire_bytes) > 100_000
    assert BITTORRENT_HANDSHAKE not in wire_bytes
    # The control: the same fetch between nodes of a public swarm shows its handshakes in the clear.
    torrent, wire_bytes = seed_and_fetch(private.model_dir, tmp_path / "public", [])
    assert not read_torrent(torrent).private
    assert BITTORRENT_HANDSHAKE in wire_bytes


def member_key(environment: dict[str, str]) -> str:
    done = subprocess.run([SWARM, "key"], env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_allow_list_admits_the_members_it_names(private: PrivateSwarm, tmp_path: Path) -> None:
    """A peer started with --allow serves the member whose key the list names; another member of the same swarm
    (same secret, its own key) is refused at the handshake, in one line that says why."""
    named = peer_environment(os.environ, home=tmp_path / "named", catalog=private.home / "torrents",
                             data=private.home / "data")  # fmt: skip
    other = named | {"SWARM_HOME": str(tmp_path / "other")}
    allow = tmp_path / "members.allow"
    allow.write_text(f"# the one member this peer admits\n{member_key(named)}\n")
    assert member_key(named) != member_key(other)  # each home has its own key, kept
    (peer,) = start_peers(
        [["--model", "priv", "--blocks", "0:4", "--swarm-secret", str(private.secret), "--allow", str(allow)]],
        peer_environment(os.environ, home=private.home), tmp_path / "logs",
    )  # fmt: skip
    try:
        arguments = ["--model", "priv", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS),
                     "--route", peer.address, "--swarm-secret", str(private.secret)]  # fmt: skip
        admitted = subprocess.run([SWARM, "run", *arguments, "--json"], env=named, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
        refused = subprocess.run([SWARM, "run", *arguments], env=other, capture_output=True, text=True, timeout=120)
    finally:
        peer.stop()
    assert admitted.returncode == 0, admitted.stderr
    assert json.loads(admitted.stdout)["tokens"] == local_text(private.model_dir)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "allow-list" in lines[0] and "swarm key" in lines[0], refused.stderr


def test_private_swarm_mistakes_are_one_line_errors(private: PrivateSwarm, tmp_path: Path) -> None:
    bad = tmp_path / "bad.allow"
    bad.write_text("not a key\n")
    environment = peer_environment(os.environ, home=private.home)
    cases = [
        (["--allow", str(bad)], "give its --swarm-secret too"),
        (["--allow", str(bad), "--swarm-secret", str(private.secret)], "line 1: not a member key"),
        (["--allow", str(tmp_path / "missing"), "--swarm-secret", str(private.secret)], "cannot read the allow-list"),
        (["--swarm-secret", str(tmp_path / "missing")], "cannot read the swarm secret file"),
    ]
    # `fetch` (no allow-list) opens no compute socket and skips loading the public swarm's keys, but a private
    # swarm's it checks.
    runs = [(["join", "--model", "priv", "--blocks", "0:4"], case) for case in cases] + [(["fetch", "priv"], cases[-1])]
    for command, (flags, message) in runs:
        done = subprocess.run([SWARM, *command, *flags], env=environment, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 1 and message in done.stderr, (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_result_forged_by_a_middle_hop_is_refused_in_encrypted_swarms(private: PrivateSwarm, tmp_path: Path) -> None:
    """The first hop sends the client a forged result of every step before forwarding it. In a private swarm, and in
    a public one (encrypted by default), the client takes results only over a connection of the last hop's key: the
    tokens stay those of transformers. In plaintext (SWARM_ENCRYPT=0: the control) the forgeries win."""
    environment = peer_environment(os.environ, home=private.home)
    plaintext = environment | {"SWARM_ENCRYPT": "0"}
    # A home of its own: its own member key (the model's files are shared).
    liars_home = environment | {"SWARM_HOME": str(tmp_path / "liar"), "SWARM_CATALOG": str(private.home / "torrents"),
                                "SWARM_DATA": str(private.home / "data")}  # fmt: skip
    secret = ["--swarm-secret", str(private.secret)]
    members = start_liar("forge", ["--model", "priv", "--blocks", "0:2", *secret], liars_home, tmp_path / "m.log")
    public = start_liar("forge", ["--model", "priv", "--blocks", "0:2"], liars_home, tmp_path / "p.log")
    clear = start_liar("forge", ["--model", "priv", "--blocks", "0:2"], liars_home | {"SWARM_ENCRYPT": "0"},
                       tmp_path / "c.log")  # fmt: skip
    honest = start_peers([["--model", "priv", "--blocks", "2:4"]], environment, tmp_path / "logs")
    honest += start_peers([["--model", "priv", "--blocks", "2:4"]], plaintext, tmp_path / "clear-logs")
    try:
        private_run = private.run_route([members, private.peers[1]], *secret, "--json")
        public_run = private.run_route([public, honest[0]], "--json")
        plaintext_run = private.run_route([clear, honest[1]], "--json", environment=plaintext)
    finally:
        for peer in (members, public, clear, *honest):
            peer.stop()
    expected = local_text(private.model_dir)
    for done in (private_run, public_run, plaintext_run):
        assert done.returncode == 0, done.stderr
    assert json.loads(private_run.stdout)["tokens"] == expected
    assert json.loads(public_run.stdout)["tokens"] == expected
    assert json.loads(plaintext_run.stdout)["tokens"] != expected


def test_a_public_swarm_is_encrypted_by_default(private: PrivateSwarm, tmp_path: Path) -> None:
    """Peers and a client with no setting about it compute together over CurveZMQ: no plaintext header crosses the
    wire. The control: the same run with SWARM_ENCRYPT=0 shows its headers."""
    environment = peer_environment(os.environ, home=private.home)
    captured = []
    for setting in ({}, {"SWARM_ENCRYPT": "0"}):
        peers = start_peers([["--model", "priv", "--blocks", span] for span in ("0:2", "2:4")],
                            environment | setting, tmp_path / f"logs-{len(setting)}")  # fmt: skip
        pcap = tmp_path / f"public-{len(setting)}.pcap"
        tcpdump = capture([int(peer.address.rpartition(":")[2]) for peer in peers], pcap)
        try:
            done = private.run_route(peers, "--json", environment=environment | setting)
        finally:
            time.sleep(0.5)
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=10)
            for peer in peers:
                peer.stop()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["tokens"] == local_text(private.model_dir)
        captured.append(pcap.read_bytes())
    encrypted, plaintext = captured
    assert len(encrypted) > 20_000 and len(plaintext) > 20_000
    assert not [marker for marker in PLAINTEXT_MARKERS if marker in encrypted]
    assert all(marker in plaintext for marker in PLAINTEXT_MARKERS)
