"""Seeing the swarm: the status document as a table of cases, `swarm status --json` against real peers, and the
seedbox's live coverage page in a real headless browser (Debian's chromium, driven through chromedriver)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.client.routing import PeerInfo
from swarm.manifest import Manifest, TorrentInfo
from swarm.status import ModelSurvey, model_view
from tests.conftest import SWARM
from tests.peer_harness import PeerProcess, peer_environment, start_peers
from tests.test_fetch import NAME, home_env, publish
from tests.test_seedbox import start_seedbox

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def manifest_with(blocks: int) -> Manifest:
    """A manifest to view (viewing does not check signatures)."""
    return Manifest(
        name="view", family="llama", architecture="LlamaForCausalLM", config={}, dtype="float32",
        num_blocks=blocks, torrent=TorrentInfo("v2", 32768, "magnet:", "cd" * 20, "ab" * 32), chunks=(),
        publisher_key="00" * 32, created="2026-12-01T00:00:00+00:00",
    )  # fmt: skip


def peer(address: str, start: int, end: int, **fields: Any) -> PeerInfo:
    return PeerInfo(address=address, blocks=(start, end), **fields)


@pytest.mark.parametrize(
    ("blocks", "peers", "coverage", "uncovered", "once", "summary"),
    [
        (4, [], [0, 0, 0, 0], [0, 1, 2, 3], [], "blocks 0..3 have no server"),
        (4, [peer("a", 0, 2), peer("b", 0, 4)], [2, 2, 1, 1], [], [2, 3], "blocks 2..3 by one peer only"),
        (4, [peer("a", 0, 4), peer("b", 0, 4)], [2, 2, 2, 2], [], [], "at least 2 peers"),
        (4, [peer("a", 1, 2), peer("b", 3, 9)], [0, 1, 0, 1], [0, 2], [1, 3], "blocks 0, 2 have no server"),
        # A model served whole counts as one block every replica serves.
        (0, [peer("a", 0, 1, replica=True)], [1], [], [0], "by one peer only"),
    ],
)
def test_model_view(
    blocks: int,
    peers: list[PeerInfo],
    coverage: list[int],
    uncovered: list[int],
    once: list[int],
    summary: str,
) -> None:
    view = model_view(ModelSurvey(manifest_with(blocks), [], peers, ["tcp://10.0.0.9:1"]))
    assert (view["coverage"], view["uncovered"], view["held_once"]) == (coverage, uncovered, once)
    assert summary in view["summary"]
    assert view["silent_peers"] == ["tcp://10.0.0.9:1"]
    ordered = sorted(peers, key=lambda item: (item.blocks, item.address))
    assert [item["address"] for item in view["peers"]] == [item.address for item in ordered]


@pytest.fixture
def swarm_with_two_peers(model_dirs: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A seedbox and two peers serving blocks 0:2 of a 3-block model (block 2 has no server)."""
    publisher = tmp_path / "publisher"
    publish(model_dirs["llama"], publisher)
    seedbox, listening = start_seedbox(publisher)
    peers: list[PeerProcess] = []
    try:
        seedbox.wait_for("seeding")
        bootstrap = f"127.0.0.1:{listening['torrent_port']}"
        peers = start_peers(
            [["--model", NAME, "--blocks", "0:2", "--bootstrap", bootstrap]] * 2,
            peer_environment(os.environ, home=publisher),
            tmp_path / "logs",
        )
        yield {"bootstrap": bootstrap, "status_port": listening["status_port"], "peers": peers, "home": publisher}
    finally:
        for process in peers:
            if process.process.poll() is None:
                process.stop()
        seedbox.stop()


def status(home: Path, bootstrap: str) -> dict[str, Any]:
    done = subprocess.run(
        [SWARM, "status", NAME, "--bootstrap", bootstrap, "--json", "--timeout", "10"],
        env=home_env(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_lists_every_peer_and_marks_uncovered_blocks(swarm_with_two_peers: dict[str, Any]) -> None:
    setup = swarm_with_two_peers
    expected = sorted(peer.address.rpartition(":")[2] for peer in setup["peers"])
    deadline = time.monotonic() + 60
    while True:
        (model,) = status(setup["home"], setup["bootstrap"])["models"]
        found = sorted(item["address"].rpartition(":")[2] for item in model["peers"])
        if found == expected or time.monotonic() > deadline:
            break
    assert found == expected, model
    assert model["coverage"] == [2, 2, 0] and model["uncovered"] == [2] and model["held_once"] == []
    assert all(item["blocks"] == [0, 2] and item["version"].startswith("swarm/") for item in model["peers"])
    assert model["seeders"], model
    done = subprocess.run(
        [SWARM, "status", NAME, "--bootstrap", "127.0.0.1:9", "--timeout", "2"],
        env=home_env(setup["home"]), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        done.returncode == 1 and done.stderr.strip() == "error: bootstrap node(s) 127.0.0.1:9 did not answer within 2 s"
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver: Any, script: str) -> Any:
    """Read the page in one script call: it re-renders every 2 s, so element handles would go stale."""
    return driver.execute_script(script)


def coverage_shown(driver: Any) -> list[int]:
    cells = f"document.querySelectorAll('.strip[data-model=\"{NAME}\"] .block')"
    return list(shown(driver, f"return Array.from({cells}).map(cell => Number(cell.dataset.count));"))


def wait_for_coverage(driver: Any, expected: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    shown: list[int] = []
    while time.monotonic() < deadline:
        shown = coverage_shown(driver)
        if shown == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"the page shows coverage {shown}, not {expected}: {driver.page_source[-2000:]}")


def test_the_live_page_shows_coverage_and_follows_a_peer_leaving(
    swarm_with_two_peers: dict[str, Any], browser: Any
) -> None:
    setup = swarm_with_two_peers
    browser.get(f"http://127.0.0.1:{setup['status_port']}/")
    wait_for_coverage(browser, [2, 2, 0])
    cell = f'document.querySelector(\'.strip[data-model="{NAME}"] .block[data-block="2"]\')'
    assert shown(browser, f"return [{cell}.className, {cell}.title];") == ["block none", "block 2: 0 peer(s)"]
    rows = "return document.querySelectorAll('table.peers tr[data-peer]').length;"
    assert shown(browser, rows) == 2
    setup["peers"][0].process.send_signal(signal.SIGKILL)
    setup["peers"][0].process.wait()
    wait_for_coverage(browser, [1, 1, 0])
    assert shown(browser, rows) == 1
