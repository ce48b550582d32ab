"""Discovery over libtorrent's DHT with real processes on 127.0.0.1: a bootstrap node and three more DHT nodes
(tools/dht_node.py), publishers (`swarm seed --bootstrap`) and clients (`swarm resolve`), each its own
libtorrent session on an OS-assigned port.

Lookups on a fresh loopback DHT can take a few rounds to converge, so every wait polls until the answer is
there or a bounded deadline passes; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save_file

from swarm import signing
from swarm.discovery.records import RecordRejected, decode_record
from swarm.pins import PinStore
from swarm.torrent.bencode import bdecode, bencode
from tests.conftest import ROOT, SWARM

# Generous: the machine is shared and a loopback DHT converges in rounds. Success returns early.
LOOKUP_TIMEOUT = 45.0


class LineProcess:
    """A subprocess whose stdout lines are read on a thread, so waits can have deadlines."""

    def __init__(self, command: list[str], env: dict[str, str], stdin: bool = False) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def next_json(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.command[:3]} printed nothing in {timeout} s: {self.stderr_lines}") from None
        if line is None:
            raise AssertionError(f"{self.command[:3]} exited: {''.join(self.stderr_lines)}")
        return dict(json.loads(line))

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next_json(max(0.1, deadline - time.monotonic()))
            if message.get("event") == event:
                return message

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class DhtNode(LineProcess):
    """tools/dht_node.py: a DHT node answering JSON commands."""

    def __init__(self, env: dict[str, str], bootstrap: tuple[str, ...] = ()) -> None:
        command = [sys.executable, str(ROOT / "tools" / "dht_node.py")]
        for address in bootstrap:
            command += ["--bootstrap", address]
        super().__init__(command, env, stdin=True)
        self.port = int(self.wait_event("ready", 30)["port"])
        self.address = f"127.0.0.1:{self.port}"

    def ask(self, reply_timeout: float = 90.0, **command: Any) -> dict[str, Any]:
        """Send one command (its own "timeout" goes to the node); wait up to reply_timeout for the answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply = self.next_json(reply_timeout)
        assert reply.get("ok"), reply
        return reply

    def stop(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.write('{"op": "quit"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        super().stop()


@dataclass
class Network:
    boot: DhtNode
    nodes: list[DhtNode]
    env: dict[str, str]
    root: Path
    started: list[LineProcess] = field(default_factory=list)

    def home(self, label: str) -> dict[str, str]:
        env = dict(self.env)
        env["SWARM_HOME"] = str(self.root / label)
        return env

    def publish(self, model_dir: Path, name: str, home: str) -> tuple[LineProcess, dict[str, Any], dict[str, Any]]:
        """`swarm seed --bootstrap`: returns the process, its publish summary and its 'discoverable' event."""
        seeder = LineProcess(
            [SWARM, "seed", str(model_dir), "--name", name, "--listen", "127.0.0.1:0", "--json",
             "--bootstrap", self.boot.address],
            self.home(home),
        )  # fmt: skip
        self.started.append(seeder)
        published = seeder.next_json(120)
        discoverable = seeder.wait_event("discoverable", 90)
        assert discoverable["name"] == name
        assert all(discoverable["confirmed"].values()), discoverable
        return seeder, published, discoverable

    def resolve(
        self, reference: str, home: str, *extra: str, timeout: float = LOOKUP_TIMEOUT, bootstrap: str | None = ""
    ) -> subprocess.CompletedProcess[str]:
        command = [SWARM, "resolve", reference, "--listen", "127.0.0.1:0", "--json", "--timeout", str(timeout)]
        address = self.boot.address if bootstrap == "" else bootstrap
        if address:
            command += ["--bootstrap", address]
        return subprocess.run(
            command + list(extra), env=self.home(home), capture_output=True, text=True, timeout=timeout + 60
        )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal HF-format directory. Discovery does not care what the model is: an architecture the swarm
    has no family for is published as one `full` chunk, and nothing here needs torch."""
    directory = tmp_path_factory.mktemp("model")
    save_file({"weight": np.arange(4096, dtype=np.float32)}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["DiscoveryTestModel"]}))
    return directory


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    env = dict(os.environ)
    for variable in ("SWARM_CATALOG", "SWARM_DATA", "SWARM_BOOTSTRAP", "SWARM_HOME", "SWARM_ACCEPT_NEW_KEY"):
        env.pop(variable, None)
    env["HF_HUB_OFFLINE"] = "1"
    boot = DhtNode(env)
    nodes = []
    try:
        nodes = [DhtNode(env, (boot.address,)) for _ in range(3)]
        for node in nodes:
            assert node.ask(op="wait_dht", timeout=30)["messages_in"] > 0
        net = Network(boot, nodes, env, tmp_path_factory.mktemp("homes"))
        yield net
    finally:
        for process in [*getattr(locals().get("net"), "started", []), *nodes, boot]:
            process.stop()


@pytest.fixture(scope="module")
def alpha(network: Network, model_dir: Path) -> dict[str, Any]:
    """'alpha' published by the publisher in home 'publisher-a', seeding for the whole module."""
    _, published, discoverable = network.publish(model_dir, "alpha", "publisher-a")
    return published | {"fingerprint": discoverable["fingerprint"], "home": network.root / "publisher-a"}


def test_a_published_name_resolves_on_a_node_that_knows_only_the_bootstrap(
    network: Network, alpha: dict[str, Any]
) -> None:
    started = time.monotonic()
    result = network.resolve("alpha", "client-b")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["source"] == "dht"
    assert found["fingerprint"] == alpha["fingerprint"]
    assert found["magnet"] == alpha["magnet"]
    # The verified manifest and the model torrent land in the client's catalog byte for byte.
    catalog = network.root / "client-b" / "torrents"
    assert (catalog / "alpha.json").read_bytes() == Path(alpha["manifest"]).read_bytes()
    assert (catalog / "alpha.torrent").read_bytes() == Path(alpha["torrent"]).read_bytes()
    assert "pinning publisher" in result.stderr
    pins = PinStore.load(network.root / "client-b")
    assert pins.get("alpha") is not None and pins.pins["alpha"]["fingerprint"] == alpha["fingerprint"]
    print(f"resolved alpha over the DHT in {seconds:.1f} s (process start included)")

    # The catalog answers next time, without any network.
    again = network.resolve("alpha", "client-b", bootstrap=None)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["source"] == "catalog"


def test_a_magnet_link_resolves_through_the_model_slot(network: Network, alpha: dict[str, Any]) -> None:
    result = network.resolve(alpha["magnet"], "client-magnet")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["name"], found["source"], found["fingerprint"]) == ("alpha", "dht", alpha["fingerprint"])


def test_a_wrong_fingerprint_is_refused(network: Network, alpha: dict[str, Any]) -> None:
    result = network.resolve("alpha@0000000000000000", "client-wrong-fp")
    assert result.returncode == 1
    assert "no record of alpha signed by publisher 0000000000000000" in result.stderr
    assert f"published by {alpha['fingerprint']}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (network.root / "client-wrong-fp" / "torrents" / "alpha.json").exists()


def test_a_forged_name_record_is_ignored(network: Network, model_dir: Path) -> None:
    _, published, discoverable = network.publish(model_dir, "beta", "publisher-beta")
    genuine = (network.root / "publisher-beta" / "torrents" / "beta.record").read_bytes()
    # The forger keeps the publisher's key and signature but points the record at other content.
    fields = bdecode(genuine)
    fields[b"manifest_sha256"] = bytes(32)
    forged = bencode(fields)
    forger = network.nodes[0]
    assert forger.ask(op="put_name_slot", name="beta", value_hex=forged.hex())["confirmed"]
    _wait_for_name_slot(network.nodes[1], "beta", lambda value: value == forged)

    # The forged pointer is ignored; the name's claims lead to the publisher's own fingerprint slot.
    result = network.resolve("beta", "client-forged")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["magnet"] == published["magnet"]
    # So does naming the publisher.
    named = network.resolve(f"beta@{discoverable['fingerprint']}", "client-forged-2")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["magnet"] == published["magnet"]

    # A name nobody claims, whose slot holds only a forgery: not found, and the forgery is named as ignored.
    fields[b"name"] = b"beta-forged"
    assert forger.ask(op="put_name_slot", name="beta-forged", value_hex=bencode(fields).hex())["confirmed"]
    result = network.resolve("beta-forged", "client-forged-3", timeout=4)
    assert result.returncode == 1
    assert "no record for beta-forged was found" in result.stderr
    assert "ignored" in result.stderr and "does not verify" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_rival_key_does_not_take_a_pinned_name(network: Network, model_dir: Path) -> None:
    _, _, first = network.publish(model_dir, "gamma", "publisher-gamma-1")
    assert network.resolve("gamma", "client-tofu").returncode == 0
    pins_home = network.root / "client-tofu"
    assert PinStore.load(pins_home).pins["gamma"]["fingerprint"] == first["fingerprint"]

    # Someone else (another key) publishes the same name; the name slot now points to them, or to the first
    # publisher again after its next refresh: whichever, the pinned publisher still publishes, so the pin wins.
    _, _, second = network.publish(model_dir, "gamma", "publisher-gamma-2")
    assert second["fingerprint"] != first["fingerprint"]
    _wait_for_name_slot(
        network.nodes[2], "gamma", lambda value: decode_record(value).fingerprint == second["fingerprint"]
    )
    fresh = str(network.root / "client-tofu" / "fresh-catalog")
    kept = network.resolve("gamma", "client-tofu", "--catalog", fresh)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["fingerprint"] == first["fingerprint"]
    if "WARNING" in kept.stderr:  # the name slot held the rival's record: it is named, and how to pick it
        assert f"gamma@{second['fingerprint']}" in kept.stderr
    assert PinStore.load(pins_home).pins["gamma"]["fingerprint"] == first["fingerprint"]

    # name@fingerprint reaches the rival through its own slots.
    named = network.resolve(f"gamma@{second['fingerprint']}", "client-other", "--catalog", fresh + "-2")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["fingerprint"] == second["fingerprint"]


def test_a_changed_publisher_key_warns_and_is_refused_unless_accepted(network: Network, model_dir: Path) -> None:
    """A client pinned the name to a key that publishes it no more (the publisher moved to a new key): records of
    the new key alone are a key change, refused loudly unless accepted."""
    _, _, current = network.publish(model_dir, "zeta", "publisher-zeta")
    home = network.root / "client-moved"
    pins = PinStore.load(home)
    pins.set("zeta", signing.public_key_hex(Ed25519PrivateKey.generate()))
    pins.save()
    old = pins.pins["zeta"]["fingerprint"]

    refused = network.resolve("zeta", "client-moved")
    assert refused.returncode == 1
    assert "WARNING" in refused.stderr and "Traceback" not in refused.stderr
    assert old in refused.stderr and current["fingerprint"] in refused.stderr
    assert "--accept-new-key" in refused.stderr
    assert PinStore.load(home).pins["zeta"]["fingerprint"] == old

    accepted = network.resolve("zeta", "client-moved", "--accept-new-key")
    assert accepted.returncode == 0, accepted.stderr
    assert "WARNING" in accepted.stderr
    assert json.loads(accepted.stdout)["fingerprint"] == current["fingerprint"]
    assert PinStore.load(home).pins["zeta"]["fingerprint"] == current["fingerprint"]


def test_a_name_two_publishers_claim_is_refused_until_one_is_named(network: Network, model_dir: Path) -> None:
    _, _, first = network.publish(model_dir, "epsilon", "publisher-epsilon-1")
    _, _, second = network.publish(model_dir, "epsilon", "publisher-epsilon-2")
    both = {first["fingerprint"], second["fingerprint"]}
    assert len(both) == 2
    deadline = time.monotonic() + LOOKUP_TIMEOUT
    while set(network.nodes[1].ask(op="get_claims", name="epsilon")["fingerprints"]) != both:
        assert time.monotonic() < deadline, "the claims slot never held both publishers"
        time.sleep(0.5)

    # Nothing pinned: whichever record the name slot holds, the other claimant is seen and the name refused.
    refused = network.resolve("epsilon", "client-clash")
    assert refused.returncode == 1
    assert first["fingerprint"] in refused.stderr and second["fingerprint"] in refused.stderr
    assert "epsilon@" in refused.stderr and "Traceback" not in refused.stderr
    assert "epsilon" not in PinStore.load(network.root / "client-clash").pins

    # The user picks one; from then on the pin settles the plain name.
    named = network.resolve(f"epsilon@{second['fingerprint']}", "client-clash")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["fingerprint"] == second["fingerprint"]
    fresh = str(network.root / "client-clash" / "fresh-catalog")
    plain = network.resolve("epsilon", "client-clash", "--catalog", fresh)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["fingerprint"] == second["fingerprint"]


def test_an_unreachable_bootstrap_node_fails_fast_with_a_clear_message(network: Network) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        silent = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = network.resolve("nowhere", "client-unreachable", timeout=3, bootstrap=silent)
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: bootstrap node(s) {silent} did not answer within 3 s"


def test_compute_peers_announce_and_find(network: Network, alpha: dict[str, Any]) -> None:
    announcer, finder = network.nodes[0], network.nodes[1]
    announcer.ask(op="announce_compute", manifest=alpha["manifest"], port=47001)
    deadline = time.monotonic() + LOOKUP_TIMEOUT
    peers: list[list[Any]] = []
    while ["127.0.0.1", 47001] not in peers and time.monotonic() < deadline:
        peers = finder.ask(op="find_compute", manifest=alpha["manifest"], timeout=10)["peers"]
    assert ["127.0.0.1", 47001] in peers
    # Another model's key holds nobody: an empty answer, not an error.
    other = network.root / "other.json"
    manifest = json.loads(Path(alpha["manifest"]).read_text())
    manifest["torrent"]["info_hash_v2"] = "ef" * 32
    other.write_text(json.dumps(manifest))
    assert finder.ask(op="find_compute", manifest=str(other), timeout=3)["peers"] == []


def test_a_holder_keeps_a_name_resolvable_after_the_publisher_left(network: Network, model_dir: Path) -> None:
    """Last in the file: the departed publisher slows later lookups on this small swarm (see below)."""
    publisher, published, discoverable = network.publish(model_dir, "delta", "publisher-delta")
    assert network.resolve("delta", "holder-delta").returncode == 0
    holder = network.nodes[2]
    held = holder.ask(op="hold", home=str(network.root / "holder-delta"), name="delta")
    assert held["record"], held
    # A forger overwrites the name slot; the holder's next refresh finds it invalid and puts the record back.
    forger = network.nodes[0]
    assert forger.ask(op="put_name_slot", name="delta", value_hex=b"garbage".hex())["confirmed"]
    holder.ask(op="refresh")
    _wait_for_name_slot(
        network.nodes[1], "delta", lambda value: decode_record(value).fingerprint == discoverable["fingerprint"]
    )
    # The publisher leaves; the holder seeds the record bundle. (Done last: a departed node slows every
    # lookup that meets it by libtorrent's 15 s RPC timeout on a swarm this small.)
    publisher.stop()

    result = network.resolve("delta", "client-after-publisher")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["fingerprint"], found["magnet"]) == (discoverable["fingerprint"], published["magnet"])
    assert holder.address.rsplit(":", 1)[1] in " ".join(found["holders"])


def _wait_for_name_slot(node: DhtNode, name: str, predicate: Any, timeout: float = LOOKUP_TIMEOUT) -> None:
    """Poll the name slot from another node until its newest value satisfies predicate."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        found = node.ask(op="get_name_slot", name=name, timeout=10)["value_hex"]
        value = bytes.fromhex(found) if found else None
        try:
            if value is not None and predicate(value):
                return
        except RecordRejected:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the name slot of {name} never showed the expected record (last: {value!r:.80})")
