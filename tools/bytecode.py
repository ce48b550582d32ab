"""Write the swarm package's bytecode before a benchmark times processes that import it.

A process that finds a module's bytecode missing or older than its source compiles it at every start when it
may not write the result (PYTHONDONTWRITEBYTECODE, a read-only tree). An installed package has its bytecode, so
start-up figures measured without it charge the compiler to swarm: ~90 ms of CPU per `swarm fetch` here, with
eleven modules edited since the last write.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "swarm"


def compile_package() -> None:
    """Bring every module's bytecode up to date (py_compile writes it whatever the environment says)."""
    if not compileall.compile_dir(str(PACKAGE), quiet=1):
        raise RuntimeError(f"compiling {PACKAGE} failed")
