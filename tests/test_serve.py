"""`swarm serve` over real peers, driven by OpenAI's own Python client, plain HTTP and a headless browser.

Two peers split a tiny Llama (a spare holds the second span for the failover test), a third holds a BERT
encoder. Greedy answers must equal `swarm run` and local transformers; errors come in OpenAI's shape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm import wire
from tests.conftest import SWARM
from tests.peer_harness import ComputeClient, PeerProcess, peer_environment, request, start_peers
from tests.test_dht import LineProcess
from tests.test_status import browser  # noqa: F401  (the headless chromium fixture)

API_KEY = "test-key-123"
MAX_SESSIONS = 24
PROMPT = "Beautiful is better than"
NEW_TOKENS = 8


@dataclass
class Served:
    llama_dir: Path
    home: Path
    peers: list[PeerProcess]
    lm_server: LineProcess
    lm_url: str
    encoder_server: LineProcess
    encoder_url: str

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.lm_url}/v1", api_key=key, max_retries=0, timeout=120)

    def swarm_run(self, *arguments: str) -> dict[str, Any]:
        done = subprocess.run(
            [SWARM, "run", *arguments, "--json"],
            env=peer_environment(os.environ, home=self.home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


def start_server(arguments: list[str], environment: dict[str, str]) -> tuple[LineProcess, str]:
    server = LineProcess([SWARM, "serve", *arguments, "--listen", "127.0.0.1:0", "--json"], environment)
    serving = server.wait_event("serving", 120)
    return server, str(serving["address"])


@pytest.fixture(scope="module")
def served(make_model_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    llama = make_model_tool.make_model("llama", root / "llama", layers=4, seed=21, log=lambda _line: None)
    bert = make_model_tool.make_model("bert", root / "bert", layers=2, seed=22, log=lambda _line: None)
    environment = peer_environment(os.environ, home=root / "home", max_sessions=MAX_SESSIONS)
    for directory, name in ((llama, "tiny"), (bert, "enc")):
        subprocess.run(
            [SWARM, "seed", str(directory), "--name", name, "--prepare-only"], env=environment, check=True,
            capture_output=True,
        )  # fmt: skip
    peers = start_peers(
        [
            ["--model", "tiny", "--blocks", "0:2"],
            ["--model", "tiny", "--blocks", "2:4"],
            ["--model", "tiny", "--blocks", "2:4"],
            ["--model", "enc"],
        ],
        environment,
        root / "logs",
    )
    servers: list[LineProcess] = []
    try:
        route = ",".join(peer.address.removeprefix("tcp://") for peer in peers[:3])
        lm_server, lm_url = start_server(["--model", "tiny", "--route", route, "--api-key", API_KEY], environment)
        servers.append(lm_server)
        encoder_route = peers[3].address.removeprefix("tcp://")
        encoder_server, encoder_url = start_server(["--model", "enc", "--route", encoder_route], environment)
        servers.append(encoder_server)
        yield Served(llama, root / "home", peers, lm_server, lm_url, encoder_server, encoder_url)
    finally:
        for server in servers:
            server.stop()
        for peer in peers:
            if peer.process.poll() is None:
                peer.stop()


def local_greedy(model_dir: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = torch.tensor([prompt_ids])
    output = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new_tokens)
    return [int(token) for token in output[0, prompt.shape[1] :]]


def chat_ids(model_dir: Path, messages: list[dict[str, str]]) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return [int(token) for token in tokenizer(str(text), add_special_tokens=False)["input_ids"]]


def decode(model_dir: Path, ids: list[int]) -> str:
    return str(AutoTokenizer.from_pretrained(model_dir).decode(ids, skip_special_tokens=True))


def test_completion_equals_swarm_run_and_local_generate(served: Served) -> None:
    answer = served.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    route = ",".join(peer.address for peer in served.peers[:2])
    ran = served.swarm_run("--model", "tiny", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--route", route)
    tokenizer = AutoTokenizer.from_pretrained(served.llama_dir)
    expected = local_greedy(served.llama_dir, tokenizer(PROMPT)["input_ids"], NEW_TOKENS)
    assert ran["tokens"] == expected
    assert answer.choices[0].text == ran["text"] == decode(served.llama_dir, expected)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (ran["prompt_tokens"], len(expected))
    assert answer.usage.total_tokens == ran["prompt_tokens"] + len(expected)
    assert answer.choices[0].finish_reason == ("stop" if ran["stopped_on_eos"] else "length")


def test_chat_streamed_and_not_equals_local_generate(served: Served) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is better than ugly?"}]
    client = served.client()
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=NEW_TOKENS, temperature=0)  # type: ignore[arg-type]
    pieces = []
    for chunk in client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=NEW_TOKENS,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    prompt_ids = chat_ids(served.llama_dir, messages)
    expected = local_greedy(served.llama_dir, prompt_ids, NEW_TOKENS)
    assert whole.choices[0].message.content == "".join(pieces) == decode(served.llama_dir, expected)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.prompt_tokens == len(prompt_ids)
    assert whole.usage.completion_tokens == len(expected)


def test_logprobs_equal_the_local_models(served: Served) -> None:
    client = served.client()
    answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    tokenizer = AutoTokenizer.from_pretrained(served.llama_dir)
    model = AutoModelForCausalLM.from_pretrained(served.llama_dir).eval()
    ids = tokenizer(PROMPT)["input_ids"]
    expected = local_greedy(served.llama_dir, ids, 4)
    with torch.no_grad():
        logits = model(torch.tensor([ids + expected])).logits[0, len(ids) - 1 : -1].float()
    local = torch.log_softmax(logits, dim=-1)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    assert logprobs.tokens == [tokenizer.decode([token]) for token in expected]
    assert logprobs.token_logprobs == pytest.approx([float(local[i, t]) for i, t in enumerate(expected)], abs=1e-3)
    assert [len(top) for top in logprobs.top_logprobs] == [2] * 4
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, logprobs=True,
        top_logprobs=1,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content if chat.choices[0].logprobs else None
    assert content is not None and len(content) == 3
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 1 for entry in content)
    # Greedy: each token is its step's likeliest.
    assert all(entry.top_logprobs[0].logprob == pytest.approx(entry.logprob) for entry in content)


def test_stop_strings_end_the_text_before_them(served: Served) -> None:
    client = served.client()
    full = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"the generated text {text!r} is too short to cut"
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_embeddings_equal_swarm_run(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.encoder_url}/v1", api_key="unused", max_retries=0)
    texts = ["simple is better than complex", "flat is better than nested"]
    answer = client.embeddings.create(model="enc", input=texts)
    as_floats = client.embeddings.create(model="enc", input=texts[0], encoding_format="float")
    route = served.peers[3].address
    for index, text in enumerate(texts):
        expected = served.swarm_run("--model", "enc", "--embed", text, "--route", route)["embedding"]
        assert answer.data[index].embedding == pytest.approx(expected, abs=1e-5)
    assert as_floats.data[0].embedding == pytest.approx(answer.data[0].embedding, abs=1e-6)
    assert answer.usage.prompt_tokens > 0


def test_errors_come_in_openai_shape(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").completions.create(model="tiny", prompt="x", max_tokens=1)
    with pytest.raises(openai.NotFoundError) as unknown:
        served.client().completions.create(model="nope", prompt="x", max_tokens=1)
    assert "does not exist" in str(unknown.value)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    malformed = httpx.post(f"{served.lm_url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in malformed.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        served.client().completions.create(model="tiny", prompt="x", max_tokens=1, temperature=7)
    with pytest.raises(openai.BadRequestError) as too_long:
        served.client().completions.create(model="tiny", prompt="x " * 5000, max_tokens=1)
    assert too_long.value.code == "context_length_exceeded"
    encoder = openai.OpenAI(base_url=f"{served.encoder_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        encoder.chat.completions.create(model="enc", messages=[{"role": "user", "content": "hi"}])
    # The server is still there for everyone else.
    assert served.client().completions.create(model="tiny", prompt="x", max_tokens=1).choices


def test_sixteen_concurrent_streamed_chats_each_equal_alone(served: Served) -> None:
    prompts = [f"Line {index}: " + "errors should never pass silently " * (index % 4) for index in range(16)]
    client = served.client()

    def chat(prompt: str, stream: bool) -> str:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
            return str(answer.choices[0].message.content)
        pieces = []
        for chunk in client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces)

    alone = [chat(prompt, stream=False) for prompt in prompts]
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda prompt: chat(prompt, stream=True), prompts))
    assert together == alone


def peer_sessions(address: str) -> int:
    """Sessions open on the peer at `address`, from its own `info`."""
    client = ComputeClient()
    try:
        client.send(address, request(wire.Kind.INFO))
        body = client.receive_direct(address, timeout=10).header.body
        return int(body["max_sessions"]) - int(body["free_sessions"])
    finally:
        client.close()


def wait_for_no_sessions(peers: list[PeerProcess], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = [peer_sessions(peer.address) for peer in peers]
        if not any(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_a_client_leaving_mid_stream_frees_its_sessions_on_every_peer(served: Served) -> None:
    lm_peers = served.peers[:3]
    assert wait_for_no_sessions(lm_peers) == [0, 0, 0]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 100, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.lm_url}/v1/completions", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
        assert received
        during = [peer_sessions(peer.address) for peer in lm_peers]
    # One session on the first span's peer and one on a peer of the second span, while streaming.
    assert during[0] == 1 and sum(during[1:]) == 1, during
    assert wait_for_no_sessions(lm_peers) == [0, 0, 0]
    metrics = httpx.get(f"{served.lm_url}/metrics").text
    values = {
        sample.name: sample.value for family in text_string_to_metric_families(metrics) for sample in family.samples
    }
    assert values["swarm_serve_active_generations"] == 0
    assert values["swarm_serve_completion_tokens_total"] > 0


def test_the_chat_page_streams_an_answer_in_a_browser(served: Served, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{served.lm_url}/")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    # The models list was asked for before the key was typed: load again with the key remembered.
    browser.execute_script("localStorage.setItem('swarm-api-key', arguments[0]);", API_KEY)
    browser.refresh()
    WebDriverWait(browser, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys(str(NEW_TOKENS))
    browser.find_element(By.ID, "prompt").send_keys("Is flat better than nested?\n")
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".assistant[data-done='true']")
    )
    shown = browser.find_element(By.CSS_SELECTOR, ".assistant").get_attribute("textContent")
    messages = [{"role": "user", "content": "Is flat better than nested?"}]
    expected = local_greedy(served.llama_dir, chat_ids(served.llama_dir, messages), NEW_TOKENS)
    assert shown == decode(served.llama_dir, expected)
    route = json.loads(browser.find_element(By.CSS_SELECTOR, ".meta").get_attribute("data-route"))
    assert [hop["blocks"] for hop in route] == [[0, 2], [2, 4]]
    assert "tokens/s" in browser.find_element(By.CSS_SELECTOR, ".meta").text


def test_a_peer_killed_mid_stream_fails_over_with_identical_tokens(served: Served) -> None:
    """Last in the module: it kills a peer."""
    client = served.client()
    undisturbed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)
    second_span = served.peers[1:3]
    killed = threading.Event()
    pieces = []
    for chunk in client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text if chunk.choices else "")
        if len(pieces) == 5 and not killed.is_set():
            busy = [peer for peer in second_span if peer_sessions(peer.address) > 0]
            assert len(busy) == 1
            busy[0].process.send_signal(signal.SIGKILL)
            busy[0].process.wait()
            killed.set()
    assert killed.is_set()
    assert "".join(pieces) == undisturbed.choices[0].text
