"""Claims checked by the client: route planning caps what a peer says of its speed by what the client measures of it.

A peer that claims a million steps per second while taking 50 ms longer per step than its honest twin would win every
route on its claim; measured, it is routed around, and the tokens equal local transformers `generate`. The pure
parts (which peers are measured, how a measurement caps a claim) are tables of cases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from swarm.client.generate import SamplingParams
from swarm.client.routing import (
    ROUTE_TRUST_MARGIN,
    PeerInfo,
    peers_with_rivals,
    route_avoiding,
    with_trusted_rates,
)
from swarm.client.run import SwarmClient
from swarm.config import Settings
from tests.peer_harness import (
    PeerProcess,
    local_greedy_tokens,
    published_llama,
    start_liar,
    start_peers,
)

PROMPT = "Now is better than never."
NEW_TOKENS = 6


def peer(address: str, start: int, end: int, replica: bool = False, throughput: float = 0.0) -> PeerInfo:
    return PeerInfo(address=address, blocks=(start, end), replica=replica, throughput=throughput)


@pytest.mark.parametrize(
    ("peers", "rivals"),
    [
        ([peer("a", 0, 2), peer("b", 2, 4)], []),  # a chain with no choice: nothing to measure
        ([peer("a", 0, 2), peer("b", 2, 4), peer("c", 2, 4)], ["b", "c"]),
        ([peer("a", 0, 3), peer("b", 2, 4)], ["a", "b"]),  # overlapping spans
        ([peer("a", 0, 4, replica=True)], []),
        ([peer("a", 0, 4, replica=True), peer("b", 0, 4, replica=True)], ["a", "b"]),
        ([peer("a", 0, 4, replica=True), peer("b", 0, 2)], ["a", "b"]),  # a replica competes with any span
    ],
)
def test_peers_with_rivals(peers: list[PeerInfo], rivals: list[str]) -> None:
    assert [item.address for item in peers_with_rivals(peers)] == rivals


@pytest.mark.parametrize(
    ("claimed", "measured", "before", "free", "trusted"),
    [
        (100.0, 50.0, None, 1, 100.0),  # within the margin: the claim stands (noisy probes keep equals equal)
        (1e6, 20.0, None, 1, 20.0 * ROUTE_TRUST_MARGIN),  # a boast counts for the margin times the measurement
        (1e6, None, None, 1, 0.0),  # did not run the probe although free: counts as unknown
        (1e6, None, 20.0, 0, 20.0 * ROUTE_TRUST_MARGIN),  # busy: the last measurement stands
    ],
)
def test_with_trusted_rates(
    claimed: float, measured: float | None, before: float | None, free: int, trusted: float
) -> None:
    peers = [
        PeerInfo(address="a", blocks=(0, 2), throughput=claimed, free_sessions=free),
        peer("b", 2, 4, throughput=7),
    ]
    result = with_trusted_rates(peers, {"a"}, {"a": measured}, {"a": before} if before is not None else {})
    assert result[0].throughput == pytest.approx(trusted)
    assert result[1] == peers[1]  # not probed: as it was


@dataclass
class Boasting:
    model_dir: Path
    home: Path
    honest: list[PeerProcess]
    boaster: PeerProcess


@pytest.fixture(scope="module")
def boasting(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boasting]:
    root = tmp_path_factory.mktemp("claims")
    model_dir, environment = published_llama(make_model_tool, root, "claims", seed=43)
    honest = start_peers([["--model", "claims", "--blocks", blocks] for blocks in ("0:2", "2:4")], environment,
                         root / "logs")  # fmt: skip
    boaster = start_liar("boast", ["--model", "claims", "--blocks", "2:4"], environment, root / "boaster.log")
    try:
        yield Boasting(model_dir, root / "home", honest, boaster)
    finally:
        for process in [*honest, boaster]:
            process.stop()


def test_a_peer_boasting_of_its_speed_is_measured_and_routed_around(boasting: Boasting) -> None:
    addresses = [process.address for process in [*boasting.honest, boasting.boaster]]
    with SwarmClient.connect("claims", Settings(home=boasting.home), addresses) as client:
        trusted = {info.address: info for info in client.peers}
        claimed = {info.address: info for info in client.discover(addresses, pinned=True).peers}
        routes = [client.generate(PROMPT, NEW_TOKENS, SamplingParams()) for _ in range(4)]
    boaster = boasting.boaster.address
    # On its claim alone the boaster is planned for blocks 2:4 (a tiny model's twin may tie with it: then they
    # take turns) ...
    assert claimed[boaster].throughput == 1e6
    planned = [route_avoiding(4, list(claimed.values()), (), (), spread) for spread in range(4)]
    assert any(boaster in [hop.address for hop in route] for route in planned)
    # ... measured, it counts for little, below its honest twin, and no generation goes through it.
    twin = boasting.honest[1].address
    assert trusted[boaster].throughput < trusted[twin].throughput
    assert trusted[boaster].throughput <= ROUTE_TRUST_MARGIN / 0.05
    expected = local_greedy_tokens(boasting.model_dir, PROMPT, NEW_TOKENS)
    for result in routes:
        assert result.generation.token_ids == expected
        assert boaster not in [hop.address for hop in result.route]
