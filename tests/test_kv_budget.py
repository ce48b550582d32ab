"""A peer's KV memory budget in bytes (`swarm join --kv-memory`): the bytes a cached token takes (tables), and a
real peer that admits sessions up to its budget and refuses the next one with a clean `busy`."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from swarm.peer.admission import cache_token_budget, kv_bytes_per_token
from swarm.wire import Kind
from tests.peer_harness import ComputeClient, published_llama, request, route, start_peers


@pytest.mark.parametrize(
    ("config", "layers", "itemsize", "expected"),
    [
        ({"num_attention_heads": 8, "hidden_size": 512}, 4, 4, 2 * 4 * 8 * 64 * 4),  # every head keeps K and V
        ({"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512}, 4, 2, 2 * 4 * 2 * 64 * 2),
        ({"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128, "hidden_size": 512}, 1, 4, 2048),
        ({"n_head": 4, "n_embd": 256}, 2, 4, 2 * 2 * 4 * 64 * 4),  # gpt2's names
    ],
)
def test_bytes_per_cached_token(config: dict[str, Any], layers: int, itemsize: int, expected: int) -> None:
    assert kv_bytes_per_token(config, layers, itemsize) == expected


@pytest.mark.parametrize(
    ("cap", "budget", "per_token", "tokens"),
    [(65536, None, 4096, 65536), (65536, 1 << 20, 4096, 256), (100, 1 << 30, 4096, 100), (100, 10, 4096, 1)],
)
def test_the_cache_budget_is_the_tighter_of_tokens_and_bytes(
    cap: int, budget: int | None, per_token: int, tokens: int
) -> None:
    assert cache_token_budget(cap, budget, per_token) == tokens


def open_session(client: ComputeClient, address: str, hop: Any, name: str) -> Any:
    header = request(Kind.OPEN_SESSION, session_id=name, route=hop, reply_to=client.address, body={"max_length": 16})
    client.send(address, header)
    return client.receive().header


def test_a_peer_admits_sessions_within_its_kv_memory(make_model_tool: ModuleType, tmp_path: Path) -> None:
    model_dir, environment = published_llama(make_model_tool, tmp_path, "kvb", seed=61)
    config = json.loads((model_dir / "config.json").read_text())
    per_token = kv_bytes_per_token(config, 4, 4)
    # Room for 24 cached tokens: one session of 16 fits, a second does not.
    (peer,) = start_peers([["--model", "kvb", "--blocks", "0:4", "--kv-memory", str(per_token * 24)]], environment,
                          tmp_path / "logs")  # fmt: skip
    client = ComputeClient()
    try:
        client.send(peer.address, request(Kind.INFO))
        assert client.receive_direct(peer.address).header.body["max_cached_tokens"] == 24
        hop = route((peer.address, 0, 4))
        opened = open_session(client, peer.address, hop, "first")
        assert opened.kind is Kind.RESULT and opened.body == {"opened": True}
        # A step, so that the first session counts as used (an unused one would give way to a newcomer).
        step = request(Kind.STEP, session_id="first", step=0, route=hop, reply_to=client.address, positions=(0, 1))
        client.send(peer.address, step, {"hidden": torch.randn(1, 1, config["hidden_size"])})
        assert client.receive().header.kind is Kind.RESULT
        refused = open_session(client, peer.address, hop, "second")
        assert refused.kind is Kind.ERROR and refused.body["code"] == "busy", refused.body
    finally:
        client.close()
        peer.stop()
