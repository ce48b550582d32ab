"""The seedbox's surveyor surveys only while its document is read (surveys nobody reads cost a seedbox its idle
CPU). The survey itself is replaced by a counter: what is tested is when the thread surveys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from swarm import survey as survey_module
from swarm.address import Address
from swarm.config import Settings


def test_surveys_run_while_read_and_stop_when_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    surveys: list[float] = []

    def counted(*_arguments: Any) -> list[Any]:
        surveys.append(time.monotonic())
        return []

    monkeypatch.setattr(survey_module, "survey", counted)
    settings = Settings(home=tmp_path / "home", torrent_listen=Address("127.0.0.1", 0))
    surveyor = survey_module.Surveyor(settings, [], lambda: [], interval=0.05, wanted_for=0.5)
    surveyor.start()
    try:
        time.sleep(0.5)
        assert surveys == [], "surveyed before anyone read the document"
        assert surveyor.document["surveyed"] is False
        deadline = time.monotonic() + 10
        while not surveys and time.monotonic() < deadline:
            time.sleep(0.02)
        assert surveys, "a read did not start the surveys"
        assert surveyor.document["surveyed"] is True
        time.sleep(1.5)  # past wanted_for without a read: the surveys stop
        count = len(surveys)
        assert count >= 3
        time.sleep(0.5)
        assert len(surveys) == count
    finally:
        surveyor.stop()
    assert not surveyor.is_alive()
