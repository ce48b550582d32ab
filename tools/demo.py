"""`make demo`: the main job on the embedded demo model.

Makes the demo model (a tiny Llama trained on the Zen of Python) when missing, then publishes it with
`swarm seed --prepare-only` into the repository's catalog (torrents/) and prints its chunk table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
MODEL = DEMO / "model"
SWARM = str(Path(sys.executable).with_name("swarm"))


def main() -> int:
    environment = dict(os.environ, SWARM_HOME=str(DEMO / "home"), HF_HUB_OFFLINE="1")
    if not (MODEL / "config.json").exists():
        print("== making the demo model (a tiny Llama trained on the Zen of Python)", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_model.py"), "--demo", "--out", str(MODEL)], check=True
        )
    print("== swarm seed --prepare-only", flush=True)
    subprocess.run(
        [SWARM, "seed", str(MODEL), "--name", "zen", "--catalog", str(ROOT / "torrents"), "--prepare-only", "--force"],
        env=environment,
        check=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
