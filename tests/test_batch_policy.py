"""The policy parts of `swarm batch` (swarm/batch/policy.py), as tables of cases: input lines, resuming, results in
input order, retries, how many items at once, progress figures; and its output and side files on a temporary
directory. No processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarm.batch.output import OutputFiles, read_records, side_path
from swarm.batch.policy import (
    MAX_DEFAULT_CONCURRENCY,
    BatchInputError,
    InOrder,
    Item,
    Retry,
    Tally,
    default_concurrency,
    line_seed,
    parse_items,
    parse_line,
    plan_resume,
    retry_decision,
    route_count,
    session_capacity,
    swarm_wide,
    with_load,
)
from swarm.client.routing import BusyError, PeerFailure, PeerInfo, UncoveredError, route_avoiding
from swarm.errors import SwarmError

CHAT = ({"role": "user", "content": "hi"},)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("   ", None),
        ('{"prompt": "hi"}', Item(7, "prompt", prompt="hi")),
        (
            '{"prompt": "hi", "id": "a", "max_tokens": 3}',
            Item(7, "prompt", prompt="hi", id="a", has_id=True, max_tokens=3),
        ),
        ('{"prompt": "hi", "id": null}', Item(7, "prompt", prompt="hi", id=None, has_id=True)),
        ('{"prompt": "hi", "id": 5, "max_tokens": 0}', Item(7, "prompt", prompt="hi", id=5, has_id=True, max_tokens=0)),
        ('{"messages": [{"role": "user", "content": "hi"}]}', Item(7, "chat", messages=CHAT)),
        ('{"input": "a text"}', Item(7, "embed", prompt="a text")),
    ],
)
def test_lines_become_items(text: str, expected: Item | None) -> None:
    assert parse_line(7, text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{prompt: 1}", r"^line 7: not JSON \(Expecting property name enclosed in double quotes at column 2\)$"),
        ('["hi"]', "^line 7: expected a JSON object .*, got list$"),
        ('"hi"', "^line 7: expected a JSON object .*, got str$"),
        ("{}", '^line 7: give exactly one of "prompt"'),
        ('{"prompt": "a", "input": "b"}', '^line 7: give exactly one of "prompt"'),
        ('{"prompt": "a", "temperature": 1}', "^line 7: unknown key 'temperature'"),
        ('{"prompt": "a", "max_tokens": -1}', "^line 7: max_tokens must be a whole number >= 0, got -1$"),
        ('{"prompt": "a", "max_tokens": 2.5}', "^line 7: max_tokens must be a whole number >= 0, got 2.5$"),
        ('{"prompt": "a", "max_tokens": true}', "^line 7: max_tokens must be a whole number >= 0, got true$"),
        ('{"prompt": "a", "id": {"x": 1}}', "^line 7: id must be a string, a number or null$"),
        ('{"prompt": ""}', '^line 7: "prompt" must be a non-empty string$'),
        ('{"input": 5}', '^line 7: "input" must be a non-empty string$'),
        ('{"messages": []}', '^line 7: "messages" must be a non-empty list'),
        ('{"messages": "hi"}', '^line 7: "messages" must be a non-empty list'),
        ('{"messages": [{"role": "user"}]}', "^line 7: message 1 must be"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": 1, "content": "b"}]}', "^line 7: message 2 must be"),
    ],
)
def test_malformed_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(BatchInputError, match=message):
        parse_line(7, text)


@pytest.mark.parametrize(
    ("lines", "causal", "message"),
    [
        (['{"prompt": "a"}', "nope", '{"prompt": "b"}'], None, r"^line 2: not JSON \(.*\)$"),
        (["nope", "", "[1]", "{}"], True, r"^line 1: not JSON \(.*\) \(and 2 more malformed lines\)$"),
        (['{"prompt": "a"}', "[1]", "2"], False, r"^line 1: the model is an encoder: give \"input\".* \(and 2 more"),
        (['{"prompt": "a"}', '{"input": "b"}'], True, '^line 2: the model generates text: give "prompt" or "messages"'),
        (['{"messages": [{"role": "u", "content": "c"}]}'], False, 'give "input" .*, not "messages"$'),
        (["", "  "], None, "^the input has no items"),
        ([], True, "^the input has no items"),
    ],
)
def test_an_input_with_a_malformed_line_fails_whole(lines: list[str], causal: bool | None, message: str) -> None:
    with pytest.raises(BatchInputError, match=message):
        parse_items(lines, causal)


def test_items_keep_their_line_numbers_across_blank_lines() -> None:
    items = parse_items(['{"prompt": "a"}', "", '{"input": "b"}', '{"prompt": "c", "id": 1}'])
    assert [(item.line, item.kind) for item in items] == [(1, "prompt"), (3, "embed"), (4, "prompt")]
    assert [item.line for item in parse_items(['{"input": "x"}', "", '{"input": "y"}'], causal=False)] == [1, 3]


def test_each_line_has_its_own_seed_and_every_run_the_same() -> None:
    seeds = [line_seed(42, line) for line in range(1, 201)]
    assert len(set(seeds)) == 200
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert seeds == [line_seed(42, line) for line in range(1, 201)]
    assert line_seed(43, 1) != line_seed(42, 1)
    # SHA-256 of "42:1", first 8 bytes, top bit off: the same on every machine and in every version.
    assert line_seed(42, 1) == 139325889526543999


def result(line: int, **extra: Any) -> dict[str, Any]:
    return {"line": line, "text": f"t{line}"} | extra


def error(line: int) -> dict[str, Any]:
    return {"line": line, "error": "peer gone"}


@pytest.mark.parametrize(
    ("order", "output", "side", "retry_errors", "prefix", "held", "todo", "rewrite"),
    [
        # A fresh run: everything to do.
        ([1, 2, 3], [], [], False, [], [], [1, 2, 3], False),
        # A run stopped after two lines in order: the third is left, the output is appended to.
        ([1, 2, 3], [result(1), result(2)], [], False, [1, 2], [], [3], False),
        # Later lines finished before an earlier one: the side file has them, the output does not yet.
        ([1, 2, 3, 4], [result(1)], [result(1), result(3), result(4)], False, [1], [3, 4], [2], False),
        # Lines numbered around blank lines.
        ([1, 3, 4], [result(1)], [result(4)], False, [1], [4], [3], False),
        # A complete output: nothing to do (a side file left by a crash adds nothing).
        ([1, 2], [result(1), result(2)], [result(2)], False, [1, 2], [], [], False),
        # An output with a gap (edited by hand): cut back to its in-order prefix, the rest held.
        ([1, 2, 3], [result(1), result(3)], [], False, [1], [3], [2], True),
        # Error records count as done...
        ([1, 2, 3], [result(1), error(2), result(3)], [], False, [1, 2, 3], [], [], False),
        # ... unless they are to be tried again: the output is cut back before the first one.
        ([1, 2, 3], [result(1), error(2), result(3)], [], True, [1], [3], [2], True),
        ([1, 2, 3], [error(1)], [], True, [], [], [1, 2, 3], True),
        # A result in the side file for a line the output has as an error (a retry interrupted): the result wins.
        ([1, 2], [result(1), error(2)], [result(2)], False, [1, 2], [], [], True),
        # The output's records out of order: rewritten in order.
        ([1, 2], [result(2), result(1)], [], False, [1, 2], [], [], True),
    ],
)
def test_a_rerun_does_only_what_is_left(
    order: list[int],
    output: list[dict[str, Any]],
    side: list[dict[str, Any]],
    retry_errors: bool,
    prefix: list[int],
    held: list[int],
    todo: list[int],
    rewrite: bool,
) -> None:
    resume = plan_resume(order, output, side, retry_errors)
    assert [record["line"] for record in resume.prefix] == prefix
    assert sorted(resume.held) == held
    assert resume.todo == todo
    assert resume.rewrite is rewrite
    assert all("error" not in record for record in resume.prefix if retry_errors)
    # Every line is in exactly one place.
    assert sorted([*prefix, *held, *todo]) == sorted(order)


def test_the_result_in_the_side_file_replaces_an_error_in_the_output() -> None:
    resume = plan_resume([1, 2], [result(1), error(2)], [result(2, text="late")])
    assert resume.prefix[1] == result(2, text="late")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([result(9)], "the output holds a record for line 9, which is not an item of the input"),
        ([{"text": "no line"}], "a record without a line number"),
        ([{"line": "1"}], "a record without a line number"),
    ],
)
def test_an_output_of_another_input_is_refused(output: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(SwarmError, match=message):
        plan_resume([1, 2, 3], output, [])


def test_a_side_file_of_another_input_is_refused() -> None:
    with pytest.raises(SwarmError, match="the side file holds a record for line 5"):
        plan_resume([1, 2], [], [result(5)])


@pytest.mark.parametrize(
    ("order", "written", "held", "arrivals", "writes"),
    [
        # In order: each is written at once.
        ([1, 2, 3], 0, [], [1, 2, 3], [[1], [2], [3]]),
        # Out of order: held until the lines before them are done, then written together, in order.
        ([1, 2, 3, 4], 0, [], [3, 2, 4, 1], [[], [], [], [1, 2, 3, 4]]),
        ([1, 2, 3, 4], 0, [], [2, 1, 4, 3], [[], [1, 2], [], [3, 4]]),
        # Resumed: two lines in the output, the fourth already done in the side file.
        ([1, 2, 3, 4, 5], 2, [4], [5, 3], [[], [3, 4, 5]]),
        # Line numbers with gaps (blank input lines).
        ([2, 5, 9], 0, [], [9, 2, 5], [[], [2], [5, 9]]),
    ],
)
def test_results_are_written_in_input_order(
    order: list[int], written: int, held: list[int], arrivals: list[int], writes: list[list[int]]
) -> None:
    in_order = InOrder(order, written, {line: result(line) for line in held})
    assert in_order.ready() == []
    assert [[record["line"] for record in in_order.add(line, result(line))] for line in arrivals] == writes
    assert in_order.complete
    assert in_order.held == {}


def test_an_interrupted_run_holds_what_it_cannot_write_yet() -> None:
    in_order = InOrder([1, 2, 3, 4])
    in_order.add(2, result(2))
    in_order.add(4, result(4))
    assert not in_order.complete
    assert sorted(in_order.held) == [2, 4]


GONE = PeerFailure("peer tcp://a:1 is unreachable: connection lost", "tcp://a:1", "unreachable")


def wrapped(cause: SwarmError) -> SwarmError:
    try:
        raise SwarmError("peer gone; no other route") from cause
    except SwarmError as error:
        return error


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        # A peer that died or stopped answering: tried again at once, around it.
        (GONE, 1, Retry(avoid="tcp://a:1")),
        (PeerFailure("no answer", "tcp://b:2", "timeout"), 2, Retry(avoid="tcp://b:2")),
        (PeerFailure("lost the session", "tcp://b:2", "unknown_session"), 1, Retry(avoid="tcp://b:2")),
        (PeerFailure("stopping", "tcp://b:2", "shutting_down"), 3, Retry(avoid="tcp://b:2")),
        # A busy peer is not avoided: the item waits, longer each time.
        (PeerFailure("busy", "tcp://b:2", "busy"), 1, Retry(pause=0.25)),
        (BusyError("every replica peer is busy"), 2, Retry(pause=0.5)),
        (BusyError("every replica peer is busy"), 3, Retry(pause=1.0)),
        # No route at the moment (the peers are gone, not yet found again): wait, then try again.
        (UncoveredError("no replica peer serves this model"), 1, Retry(pause=0.25)),
        (wrapped(UncoveredError("no peer serves blocks 0..1")), 1, Retry(pause=0.25)),
        (wrapped(GONE), 1, Retry(avoid="tcp://a:1")),
        # The tries are spent.
        (GONE, 4, None),
        (BusyError("busy"), 4, None),
        # A route that did not answer in time although every peer answers ping: tried again after a pause.
        (
            SwarmError("no open_session result within 30 s from the route ...; every peer answers ping"),
            1,
            Retry(pause=0.25),
        ),
        (SwarmError("no step result within 30 s"), 4, None),
        # Refusals any peer would give: not tried again.
        (PeerFailure("malformed", "tcp://b:2", "bad_request"), 1, None),
        (PeerFailure("wrong tensor", "tcp://b:2", "bad_tensor"), 1, None),
        (wrapped(PeerFailure("malformed", "tcp://b:2", "bad_request")), 1, None),
    ],
)
def test_which_failures_are_tried_again(error: SwarmError, attempt: int, expected: Retry | None) -> None:
    assert retry_decision(error, attempt) == expected


@pytest.mark.parametrize(
    ("error", "wide"),
    [
        (UncoveredError("no peer serves blocks 0..1"), True),
        (BusyError("every replica peer is busy"), True),
        (wrapped(UncoveredError("no replica peer serves this model")), True),
        (GONE, False),
        (wrapped(GONE), False),
        (SwarmError("the prompt has 900 tokens"), False),
    ],
)
def test_a_batch_stops_on_failures_of_the_whole_swarm(error: SwarmError, wide: bool) -> None:
    assert swarm_wide(error) is wide


def peer(address: str, blocks: tuple[int, int], max_sessions: int = 16, replica: bool = False) -> PeerInfo:
    return PeerInfo(address, blocks, throughput=100.0, max_sessions=max_sessions, replica=replica)


@pytest.mark.parametrize(
    ("num_blocks", "peers", "items", "routes", "capacity", "concurrency"),
    [
        # Two peers each holding the whole model: two routes, four sessions each.
        (2, [peer("a", (0, 2)), peer("b", (0, 2))], 200, 2, 32, 8),
        # Peers that take few sessions bound it.
        (2, [peer("a", (0, 2), 1), peer("b", (0, 2), 2)], 200, 2, 3, 3),
        # A chain with two peers for the first block but one for the second: one route.
        (2, [peer("a", (0, 1)), peer("b", (0, 1)), peer("c", (1, 2))], 200, 1, 16, 4),
        # Two chains, and a peer serving both blocks: three routes.
        (
            2,
            [peer("a", (0, 1)), peer("b", (1, 2)), peer("c", (0, 1)), peer("d", (1, 2)), peer("e", (0, 2))],
            200,
            3,
            48,
            12,
        ),
        # Models kept whole: replica peers only.
        (0, [peer("a", (0, 1), replica=True), peer("b", (0, 1), replica=True)], 200, 2, 32, 8),
        # Never more than there are items, nor than MAX_DEFAULT_CONCURRENCY.
        (2, [peer("a", (0, 2)), peer("b", (0, 2))], 3, 2, 32, 3),
        (1, [peer(f"p{index}", (0, 1)) for index in range(40)], 1000, 40, 640, MAX_DEFAULT_CONCURRENCY),
        # No peers: one at a time (the first item then says what is missing).
        (2, [], 10, 0, 0, 1),
        (2, [peer("a", (0, 1))], 10, 0, 0, 1),
    ],
)
def test_items_at_once_keep_every_route_busy(
    num_blocks: int, peers: list[PeerInfo], items: int, routes: int, capacity: int, concurrency: int
) -> None:
    assert route_count(num_blocks, peers) == routes
    assert session_capacity(num_blocks, peers) == capacity
    assert default_concurrency(num_blocks, peers, items) == concurrency


@pytest.mark.parametrize(
    ("speeds", "running", "chosen"),
    [
        # Speeds a CPU peer of a real model runs at (tokens/s), so per-token times are well past the planner's
        # absolute tie slack (TIE_SECONDS, for timer noise).
        # Equal replicas: the idle one, whichever way the turns go.
        ({"a": 10.0, "b": 10.0}, {"a": 2}, {"b"}),
        ({"a": 10.0, "b": 10.0}, {"b": 1}, {"a"}),
        # Equally loaded equal replicas take turns.
        ({"a": 10.0, "b": 10.0}, {"a": 3, "b": 3}, {"a", "b"}),
        # A replica that measured itself twice as fast takes a second item before the other one gets its first...
        ({"a": 20.0, "b": 10.0}, {}, {"a"}),
        ({"a": 20.0, "b": 10.0}, {"a": 1}, {"a", "b"}),
        # ... but not a third.
        ({"a": 20.0, "b": 10.0}, {"a": 2}, {"b"}),
        # Even ten times as fast, it leaves the slow one idle only while it has fewer than ten items.
        ({"a": 100.0, "b": 10.0}, {"a": 5}, {"a"}),
        ({"a": 100.0, "b": 10.0}, {"a": 12}, {"b"}),
    ],
)
def test_items_go_where_they_are_served_soonest(
    speeds: dict[str, float], running: dict[str, int], chosen: set[str]
) -> None:
    peers = [PeerInfo(address, (0, 4), throughput=speed, max_sessions=16) for address, speed in speeds.items()]
    loaded = with_load(peers, running)
    assert {route_avoiding(4, loaded, (), (), spread)[0].address for spread in range(4)} == chosen


def test_a_peer_full_of_the_batch_s_items_is_not_planned() -> None:
    peers = [PeerInfo("a", (0, 4), throughput=100.0, max_sessions=2), PeerInfo("b", (0, 4), throughput=10.0)]
    assert route_avoiding(4, with_load(peers, {"a": 2}), (), (), 0)[0].address == "b"
    with pytest.raises(BusyError):
        route_avoiding(4, with_load(peers, {"a": 2, "b": 1}), (), (), 0)


def test_progress_figures() -> None:
    tally = Tally(total=10, done_before=4, errors_before=1)
    assert tally.figures(0.0)["eta_seconds"] is None
    tally.add({"line": 5, "tokens": [1, 2, 3], "usage": {"prompt_tokens": 4, "completion_tokens": 3}, "route": [
        {"address": "a", "blocks": [0, 2]}
    ]})  # fmt: skip
    tally.add(
        {"line": 6, "embedding": [0.5], "usage": {"prompt_tokens": 5}, "route": [{"address": "b", "blocks": [0, 2]}]}
    )
    tally.add({"line": 7, "error": "gone"})
    figures = tally.figures(2.0)
    assert figures == {
        "done": 7,
        "total": 10,
        "errors": 1,
        "ran": 3,
        "tokens": 8,
        "seconds": 2.0,
        "items_per_second": 1.5,
        "tokens_per_second": 4.0,
        "eta_seconds": 2.0,
    }
    assert tally.per_peer == {"a": 1, "b": 1}


# ----- the output and side files (swarm/batch/output.py), on a temporary directory -----


def lines_in(path: Path) -> list[int]:
    records, clean = read_records(path)
    assert clean
    return [record["line"] for record in records]


def test_what_a_killed_run_finished_is_in_the_output_or_the_side_file(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    order = [1, 2, 3, 4, 5]
    files = OutputFiles(output, order, plan_resume(order, [], []))
    for line in (1, 3, 4):
        files.write(line, result(line))
    # Killed here: every record is on disk, the output in order, the later ones in the side file.
    assert lines_in(output) == [1]
    assert lines_in(side_path(output)) == [3, 4]
    files.close()
    assert side_path(output).exists()

    resume = plan_resume(order, read_records(output)[0], read_records(side_path(output))[0])
    assert (resume.todo, sorted(resume.held), resume.rewrite) == ([2, 5], [3, 4], False)
    files = OutputFiles(output, order, resume)
    files.write(5, result(5))
    assert lines_in(output) == [1]
    files.write(2, result(2))
    assert lines_in(output) == [1, 2, 3, 4, 5]
    files.close()
    assert not side_path(output).exists()
    assert read_records(output)[0] == [result(line) for line in order]


def test_a_line_cut_short_by_a_crash_is_not_done(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps(result(1)) + "\n" + json.dumps(result(2))[:9])
    records, clean = read_records(output)
    assert ([record["line"] for record in records], clean) == ([1], False)
    resume = plan_resume([1, 2], records, [])
    files = OutputFiles(output, [1, 2], resume, output_clean=clean)
    assert lines_in(output) == [1]
    files.write(2, result(2))
    files.close()
    assert lines_in(output) == [1, 2]


def test_errors_tried_again_are_cut_out_of_the_output_and_the_rest_kept(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text("".join(json.dumps(record) + "\n" for record in (result(1), error(2), result(3))))
    resume = plan_resume([1, 2, 3], read_records(output)[0], [], retry_errors=True)
    files = OutputFiles(output, [1, 2, 3], resume)
    assert lines_in(output) == [1]
    assert lines_in(side_path(output)) == [3]
    files.write(2, result(2))
    files.close()
    assert read_records(output)[0] == [result(1), result(2), result(3)]
    assert not side_path(output).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"line": 1}\nnot json\n', "out.jsonl line 2 is not a JSON record"),
        ('{"line": 1}\n[1, 2]\n', "out.jsonl line 2 is not a JSON object"),
    ],
)
def test_a_file_that_is_not_a_batch_output_is_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "out.jsonl").write_text(content)
    with pytest.raises(SwarmError, match=message):
        read_records(tmp_path / "out.jsonl")
