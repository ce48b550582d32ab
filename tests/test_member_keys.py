"""Members' own keys and allow-lists (pure parsing, and the key file made once)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.errors import SwarmError
from swarm.transport.keys import member_keypair, read_allow_list

# Z85 keys of 32 bytes; the second holds "#", a Z85 character (never the first: no 32-bit group starts with it).
KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
HASH_KEY = "Z*/4dllY!0W#8CU7#k8Ajarn2ZwW>X@T*9v:<t!-"


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        (f"{KEY}\n", {KEY}),
        (f"# members\n\n  {KEY}   # alice\n{HASH_KEY}\n", {KEY, HASH_KEY}),
        (f"{HASH_KEY} #bob\n{HASH_KEY}\n", {HASH_KEY}),
        ("# nobody yet\n", set()),
    ],
)
def test_allow_lists_are_keys_with_comments(tmp_path: Path, text: str, keys: set[str]) -> None:
    path = tmp_path / "allow"
    path.write_text(text)
    assert read_allow_list(str(path)) == {key.encode() for key in keys}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("not a key\n", 1),
        (f"{KEY}\n{KEY[:-1]}\n", 2),  # 39 characters
        (f"{KEY} alice\n", 1),  # words after a key must be a comment
        (f'{KEY[:-1]}"\n', 1),  # not a Z85 character
    ],
)
def test_an_allow_list_line_that_is_not_a_key_is_named(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "allow"
    path.write_text(text)
    with pytest.raises(SwarmError, match=rf"line {line}: not a member key"):
        read_allow_list(str(path))


def test_a_member_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = member_keypair(tmp_path / "keys")
    assert member_keypair(tmp_path / "keys") == first
    assert stat.S_IMODE((tmp_path / "keys" / "member.key").stat().st_mode) == 0o600
    assert member_keypair(tmp_path / "other") != first


def test_processes_of_one_home_started_together_share_one_key(tmp_path: Path) -> None:
    """Every command makes the key when it is missing (compute is encrypted by default), and peers of one home are
    often started at once: each must read the same, complete key."""
    script = "import sys; from pathlib import Path; from swarm.transport.keys import member_keypair; "
    script += "print(member_keypair(Path(sys.argv[1]))[0].decode())"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "keys")], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert keys == {member_keypair(tmp_path / "keys")[0].decode()}
    assert [path.name for path in (tmp_path / "keys").iterdir()] == ["member.key"]
