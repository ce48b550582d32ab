"""Checking peers (`--verify`): a peer that perturbs its hidden states is caught by the first step it takes part in
with --verify 1, excluded and routed around, and the tokens equal local transformers `generate`. The majority rule
itself is a table of cases."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from swarm.client.checker import ShadowSession, StepChecker
from swarm.client.exclusions import EXCLUSION_SECONDS, current, load_exclusions, record_exclusions
from swarm.client.generate import SamplingParams
from swarm.client.hop_trace import HopTrace
from swarm.client.routing import PeerFailure, PeerInfo
from swarm.client.run import SwarmClient
from swarm.client.verify import majority, relative_difference, second_opinions, settled
from swarm.config import Settings
from swarm.status import status_document
from swarm.wire import Hop
from tests.conftest import SWARM
from tests.peer_harness import (
    PeerProcess,
    local_greedy_tokens,
    peer_environment,
    published_llama,
    start_liar,
    start_peers,
)

PROMPT = "Errors should never pass silently."
NEW_TOKENS = 8


def vector(*values: float) -> torch.Tensor:
    return torch.tensor([list(values)])


@pytest.mark.parametrize(
    ("outputs", "agreeing", "decided"),
    [
        ({"a": vector(1, 2), "b": vector(1, 2), "c": vector(1, 2)}, {"a", "b", "c"}, True),
        ({"a": vector(1, 2), "b": vector(1, 2.0000001), "c": vector(5, 2)}, {"a", "b"}, True),
        ({"liar": vector(5, 2), "b": vector(1, 2), "c": vector(1, 2)}, {"b", "c"}, True),
        ({"a": vector(1, 2), "b": vector(5, 2)}, set(), False),
        ({"a": vector(1, 2), "b": vector(5, 2), "c": vector(9, 2)}, set(), False),
        ({"a": vector(1, 2)}, {"a"}, True),
    ],
)
def test_majority(outputs: dict[str, torch.Tensor], agreeing: set[str], decided: bool) -> None:
    verdict = majority(list(outputs.items()), tolerance=1e-3)
    assert (set(verdict.agreeing), verdict.decided) == (agreeing, decided)
    assert set(verdict.disagreeing) == set(outputs) - agreeing


@pytest.mark.parametrize(
    ("outputs", "done"),
    [
        ({"hop": vector(1, 2)}, False),  # the hop alone: ask someone
        ({"hop": vector(1, 2), "b": vector(1, 2.0000001)}, True),  # the first other opinion agrees: one pass
        ({"hop": vector(5, 2), "b": vector(1, 2)}, False),  # it disagrees: a third decides
        ({"hop": vector(5, 2), "b": vector(1, 2), "c": vector(1, 2)}, False),  # decided, against the hop
        ({"hop": vector(1, 2), "b": vector(1, 2), "c": vector(1, 2)}, True),
    ],
)
def test_a_check_asks_for_a_third_opinion_only_after_a_disagreement(
    outputs: dict[str, torch.Tensor], done: bool
) -> None:
    assert settled(list(outputs.items()), tolerance=1e-3) is done


def test_relative_difference() -> None:
    assert relative_difference(vector(3, 4), vector(3, 4)) == 0
    assert relative_difference(vector(3, 4.5), vector(3, 4)) == pytest.approx(0.1)
    assert relative_difference(vector(1, 2, 3), vector(1, 2)) == float("inf")


def span(address: str, start: int, end: int, replica: bool = False) -> PeerInfo:
    return PeerInfo(address=address, blocks=(start, end), replica=replica)


@pytest.mark.parametrize(
    ("index", "excluded", "replica", "expected"),
    [
        (1, set(), False, ["c", "d"]),  # two second opinions at most, never a peer already on the route
        (1, {"c"}, False, ["d", "e"]),
        (0, set(), False, ["wide"]),  # a peer covering more than the hop's blocks stands in for it
        (0, {"wide"}, False, []),
    ],
)
def test_second_opinions(index: int, excluded: set[str], replica: bool, expected: list[str]) -> None:
    route = [Hop(address="a", blocks=(0, 2)), Hop(address="b", blocks=(2, 4))]
    peers = [span("a", 0, 2), span("b", 2, 4), span("c", 2, 4), span("d", 2, 4), span("e", 2, 4),
             span("wide", 0, 3), span("whole", 0, 4, replica=True)]  # fmt: skip
    routes = second_opinions(route, index, peers, excluded, replica)
    assert [alternative[index].address for alternative in routes] == expected
    assert all(alternative[1 - index] == route[1 - index] for alternative in routes)
    assert all(alternative[index].blocks == route[index].blocks for alternative in routes)


@pytest.mark.parametrize(
    ("lengths", "fed"),
    [
        ([5, 6, 9], [(0, 5), (5, 1), (6, 3)]),  # only the tokens since the last check
        ([5, 5], [(0, 5), (4, 1)]),  # nothing new: the last token again, for its logits
    ],
)
def test_a_shadow_is_fed_only_what_it_has_not_cached(lengths: list[int], fed: list[tuple[int, int]]) -> None:
    steps: list[tuple[int, int]] = []
    shadow = ShadowSession(lambda ids, start: steps.append((start, ids.shape[1])) or torch.zeros(1, 3), lambda: None)
    tokens = torch.arange(20).unsqueeze(0)
    for length in lengths:
        shadow.run(tokens[:, :length])
    assert steps == fed


def test_a_shadow_takes_back_rolled_back_tokens() -> None:
    """Speculative decoding took back tokens 6.. and drafted others: the shadow restarts where they differ."""
    steps: list[tuple[int, list[int]]] = []
    shadow = ShadowSession(lambda ids, start: steps.append((start, ids[0].tolist())) or torch.zeros(1, 3), lambda: None)
    shadow.run(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]))
    shadow.run(torch.tensor([[0, 1, 2, 3, 4, 5, 9, 9, 9]]))
    assert steps[-1] == (6, [9, 9, 9])


class FakeShadows:
    """Shadows that answer `answer` and record what they were opened on, fed and whether they were closed."""

    def __init__(self, answer: torch.Tensor) -> None:
        self.answer = answer
        self.opened: list[list[str]] = []
        self.closed = 0

    def open(self, route: list[Hop]) -> ShadowSession:
        self.opened.append([hop.address for hop in route])
        return ShadowSession(lambda _ids, _start: self.answer, self.close)

    def close(self) -> None:
        self.closed += 1


def checker_with(shadows: FakeShadows, stateless: list[list[str]], answer: torch.Tensor) -> StepChecker:
    peers = [span("a", 0, 2), span("b", 2, 4), span("c", 2, 4), span("d", 2, 4)]

    def run_stateless(route: list[Hop], _ids: torch.Tensor) -> torch.Tensor:
        stateless.append([hop.address for hop in route])
        return answer

    return StepChecker(1.0, lambda: peers, run_stateless, replica=False, distrusted=set(), open_shadow=shadows.open)


def test_checks_of_one_generation_share_one_shadow_session() -> None:
    honest, stateless = vector(1, 2), []
    shadows = FakeShadows(honest)
    checker = checker_with(shadows, stateless, honest)
    route = [Hop("a", (0, 2)), Hop("b", (2, 4))]
    tokens = torch.arange(10).unsqueeze(0)
    for length in (4, 5, 6):
        checker.check(route, tokens[:, :length], honest, set())
    assert shadows.opened == [["a", "c"]] and stateless == [] and checker.checked == 3
    # A new route (after a failover) gets a shadow of its own; the old one's session is closed.
    checker.check([Hop("a", (0, 2)), Hop("d", (2, 4))], tokens[:, :7], honest, {"b"})
    assert shadows.opened == [["a", "c"], ["a", "c"]] and shadows.closed == 1
    checker.close()
    assert shadows.closed == 2


def test_a_disagreeing_shadow_brings_a_sessionless_third_opinion() -> None:
    honest, stateless = vector(1, 2), []
    checker = checker_with(FakeShadows(honest), stateless, honest)
    with pytest.raises(PeerFailure, match="computed blocks 2:4 differently"):
        checker.check([Hop("a", (0, 2)), Hop("b", (2, 4))], torch.arange(4).unsqueeze(0), vector(9, 2), set())
    assert stateless == [["a", "d"]]
    assert checker.excluded == [{"peer": "b", "blocks": [2, 4], "reason": "disagreed with the majority"}]


def one_hop_checker(peers: list[PeerInfo], trace: HopTrace, stateless: list[list[str]], logits: torch.Tensor,
                    opened: list[list[str]]) -> StepChecker:  # fmt: skip
    """A checker of one hop alone whose every hop doubles its input (so does the other peer's shadow), whose
    sessionless passes all answer `logits`, and which records what it opened shadows on."""

    def open_hop_shadow(hop: Hop) -> ShadowSession:
        opened.append([hop.address])
        return ShadowSession(lambda hidden, _start: 2 * hidden, lambda: None)

    def run_stateless(route: list[Hop], _ids: torch.Tensor) -> torch.Tensor:
        stateless.append([hop.address for hop in route])
        return logits

    checker = StepChecker(1.0, lambda: peers, run_stateless, replica=False, distrusted=set())
    checker.trace, checker.open_hop_shadow = trace, open_hop_shadow
    return checker


def doubling_trace(length: int, lie_at: int | None = None) -> HopTrace:
    """The trace of hops a (0:2) and b (2:4) that each double their input; `lie_at`: a boundary reported wrong."""
    first = torch.randn(1, length, 8)
    trace = HopTrace(8)
    hidden = {0: first, 2: 2 * first, 4: 4 * first}
    if lie_at is not None:
        hidden[lie_at] = hidden[lie_at] + 1
    trace.record_step(0, length, hidden)
    return trace


ROUTE = [Hop("a", (0, 2)), Hop("b", (2, 4))]


def test_an_honest_hop_is_checked_alone_by_one_session_of_one_hop() -> None:
    stateless: list[list[str]] = []
    opened: list[list[str]] = []
    trace = doubling_trace(5)
    checker = one_hop_checker([span("a", 0, 2), span("b", 2, 4), span("c", 2, 4)], trace, stateless, vector(1, 2),
                              opened)  # fmt: skip
    tokens = torch.arange(10).unsqueeze(0)
    checker.check(ROUTE, tokens[:, :5], vector(1, 2), set())
    more = torch.randn(1, 1, 8)
    trace.record_step(5, 1, {0: more, 2: 2 * more, 4: 4 * more})
    checker.check(ROUTE, tokens[:, :6], vector(1, 2), set())
    # Only b's blocks have another peer: c re-ran them alone, in one session, and no whole route ran again.
    assert opened == [["c"]] and stateless == []
    assert checker.record() | {"fraction": 1.0} == {"fraction": 1.0, "checked": 2, "unverifiable": 0, "one_hop": 2,
                                                    "escalated": 0, "excluded": []}  # fmt: skip


def test_a_hop_that_disagrees_alone_is_judged_by_whole_routes() -> None:
    stateless: list[list[str]] = []
    peers = [span("a", 0, 2), span("b", 2, 4), span("c", 2, 4), span("d", 2, 4)]
    checker = one_hop_checker(peers, doubling_trace(4, lie_at=4), stateless, vector(1, 2), [])
    with pytest.raises(PeerFailure, match="computed blocks 2:4 differently"):
        checker.check(ROUTE, torch.arange(4).unsqueeze(0), vector(9, 2), set())
    assert stateless == [["a", "c"], ["a", "d"]]
    assert checker.excluded == [{"peer": "b", "blocks": [2, 4], "reason": "disagreed with the majority"}]
    assert (checker.one_hop, checker.escalated) == (0, 1)


def test_a_next_hop_lying_about_its_input_frames_no_one() -> None:
    """b says it received something a did not send: a's check alone disagrees, the whole routes agree."""
    stateless: list[list[str]] = []
    peers = [span("a", 0, 2), span("a2", 0, 2), span("b", 2, 4)]
    checker = one_hop_checker(peers, doubling_trace(4, lie_at=2), stateless, vector(1, 2), [])
    checker.check(ROUTE, torch.arange(4).unsqueeze(0), vector(1, 2), set())
    assert stateless == [["a2", "b"]]
    assert checker.excluded == [] and (checker.one_hop, checker.escalated) == (0, 1)


def test_a_hop_whose_input_is_unknown_is_checked_by_a_whole_route() -> None:
    stateless: list[list[str]] = []
    opened: list[list[str]] = []
    trace = doubling_trace(4)
    trace.record_step(4, 1, {0: torch.randn(1, 1, 8)})  # the tees of this step did not come
    checker = one_hop_checker([span("a", 0, 2), span("b", 2, 4), span("c", 2, 4)], trace, stateless, vector(1, 2),
                              opened)  # fmt: skip
    checker.check(ROUTE, torch.arange(5).unsqueeze(0), vector(1, 2), set())
    assert opened == [] and stateless == [["a", "c"]] and checker.excluded == []


@dataclass
class Checked:
    model_dir: Path
    home: Path
    honest: list[PeerProcess]
    liar: PeerProcess
    draft: Path


@pytest.fixture(scope="module")
def checked(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checked]:
    root = tmp_path_factory.mktemp("verify")
    model_dir, environment = published_llama(make_model_tool, root, "vm", seed=41)
    honest = start_peers([["--model", "vm", "--blocks", blocks] for blocks in ("0:2", "2:4", "2:4")], environment,
                         root / "logs")  # fmt: skip
    liar = start_liar("noise", ["--model", "vm", "--blocks", "2:4"], environment, root / "liar.log")
    draft = make_model_tool.make_model("llama", root / "draft", layers=1, seed=42, log=lambda _line: None)
    try:
        yield Checked(model_dir, root / "home", honest, liar, draft)
    finally:
        for peer in [*honest, liar]:
            peer.stop()


def test_a_lying_peer_is_caught_at_its_first_step_and_routed_around(checked: Checked) -> None:
    settings = Settings(home=checked.home, verify_fraction=1.0)
    addresses = [peer.address for peer in [*checked.honest, checked.liar]]
    with SwarmClient.connect("vm", settings, addresses) as client:
        through_liar = [Hop(address=checked.honest[0].address, blocks=(0, 2)), Hop(checked.liar.address, (2, 4))]
        result = client.generate(PROMPT, NEW_TOKENS, SamplingParams(), route=through_liar, pinned=False)
        again = client.generate(PROMPT, NEW_TOKENS, SamplingParams())
    expected = local_greedy_tokens(checked.model_dir, PROMPT, NEW_TOKENS)
    assert result.generation.token_ids == expected
    assert result.verification is not None
    assert result.verification["excluded"] == [
        {"peer": checked.liar.address, "blocks": [2, 4], "reason": "disagreed with the majority"}
    ]
    # Caught by the check of the first step (the prompt's), before any token came from it.
    assert [(failover["peer"], failover["code"]) for failover in result.failovers] == [
        (checked.liar.address, "bad_result")
    ]
    assert checked.liar.address not in [hop.address for hop in result.route]
    # Excluded for the client's later generations too.
    assert again.generation.token_ids == expected
    assert checked.liar.address not in [hop.address for hop in again.route]
    # Honest hops: every check re-ran one hop alone, on the input that hop said it received (its tee).
    assert again.verification is not None
    assert again.verification["one_hop"] == again.verification["checked"] == NEW_TOKENS
    assert again.verification["excluded"] == []

    # And for later clients on this machine, without checks: the route through the liar is not even tried.
    kept = load_exclusions(checked.home)
    assert kept[checked.liar.address]["reason"] == "disagreed with the majority"
    assert kept[checked.liar.address]["model"] == "vm" and kept[checked.liar.address]["blocks"] == [2, 4]
    with SwarmClient.connect("vm", Settings(home=checked.home), addresses) as later:
        result = later.generate(PROMPT, NEW_TOKENS, SamplingParams(), route=through_liar, pinned=False)
    assert result.generation.token_ids == expected and result.verification is None
    assert checked.liar.address not in [hop.address for hop in result.route]


EXCLUSION_CASES = [
    # entries, seconds after `since` → addresses in force
    ({"a": {"since": 1000.0}}, 10, {"a"}),
    ({"a": {"since": 1000.0}}, EXCLUSION_SECONDS + 1, set()),  # expired
    ({"a": {"since": 1000.0}}, -5, set()),  # from the future: a clock or a hand-edited file
    ({"a": {"since": "yesterday"}, "b": "junk", "c": {}}, 10, set()),
    ({"a": {"since": 1000.0}, "b": {"since": 1000.0 - EXCLUSION_SECONDS}}, 10, {"a"}),
]


@pytest.mark.parametrize(("entries", "after", "addresses"), EXCLUSION_CASES)
def test_exclusions_expire(entries: dict[str, Any], after: float, addresses: set[str]) -> None:
    assert set(current(entries, 1000.0 + after)) == addresses


def test_excluded_peers_are_kept_and_shown_by_status(tmp_path: Path) -> None:
    record_exclusions(tmp_path, "vm", [{"peer": "tcp://10.0.0.9:5555", "blocks": [2, 4], "reason": "disagreed"}])
    (tmp_path / "excluded.json").write_text((tmp_path / "excluded.json").read_text())  # survives a rewrite
    document = status_document([], load_exclusions(tmp_path))
    assert [(entry["peer"], entry["model"], entry["blocks"]) for entry in document["excluded"]] == [
        ("tcp://10.0.0.9:5555", "vm", [2, 4])
    ]
    (tmp_path / "excluded.json").write_text("{not json")
    assert load_exclusions(tmp_path) == {}  # a damaged file is an empty cache, not a reason to stop


def test_swarm_run_with_verify_equals_local_generate(checked: Checked) -> None:
    route = ",".join(peer.address for peer in [*checked.honest, checked.liar])
    arguments = ["--model", "vm", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--route", route]
    done = subprocess.run(
        [SWARM, "run", *arguments, "--verify", "1", "--json"], env=peer_environment(os.environ, home=checked.home),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tokens"] == local_greedy_tokens(checked.model_dir, PROMPT, NEW_TOKENS)
    assert record["verification"]["checked"] >= 1
    assert checked.liar.address not in [hop["address"] for hop in record["route"]]


def test_checks_follow_speculative_decodings_rollbacks(checked: Checked) -> None:
    """A draft of other weights: most drafted tokens are taken back, and checks of one hop alone still agree."""
    route = ",".join(peer.address for peer in checked.honest)
    arguments = ["--model", "vm", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--route", route]
    done = subprocess.run(
        [SWARM, "run", *arguments, "--draft", str(checked.draft), "--verify", "1", "--json"],
        env=peer_environment(os.environ, home=checked.home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tokens"] == local_greedy_tokens(checked.model_dir, PROMPT, NEW_TOKENS)
    assert record["speculation"]["accepted"] < record["speculation"]["drafted"]
    verification = record["verification"]
    assert verification["one_hop"] == verification["checked"] >= 1
    assert verification["escalated"] == 0 and verification["excluded"] == []


def test_a_peer_lying_about_its_input_frames_no_one(
    make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The second hop reports perturbed copies of its input: the first hop's checks alone disagree, the whole routes
    that follow clear both, nobody is excluded and the tokens are local `generate`'s."""
    root = tmp_path_factory.mktemp("framing")
    model_dir, environment = published_llama(make_model_tool, root, "vf", seed=43)
    peers = start_peers([["--model", "vf", "--blocks", "0:2"]] * 2, environment, root / "logs")
    peers.append(start_liar("tee", ["--model", "vf", "--blocks", "2:4"], environment, root / "liar.log"))
    try:
        settings = Settings(home=root / "home", verify_fraction=1.0)
        with SwarmClient.connect("vf", settings, [peer.address for peer in peers]) as client:
            result = client.generate(PROMPT, NEW_TOKENS, SamplingParams())
    finally:
        for peer in peers:
            peer.stop()
    assert result.generation.token_ids == local_greedy_tokens(model_dir, PROMPT, NEW_TOKENS)
    assert result.verification is not None
    assert result.verification["excluded"] == [] and result.failovers == []
    assert result.verification["escalated"] == result.verification["checked"] == NEW_TOKENS
