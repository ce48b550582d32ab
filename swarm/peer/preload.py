"""Import the compute stack on a thread while a join does its network work.

torch and transformers take 3-5 s to import on a small machine, as long as a join's DHT lookups and often its
download. Those wait on the network or run in libtorrent's own threads, so the imports overlap them instead of
coming first. The main thread may import a module that needs only torch meanwhile (Python's import lock waits for
the thread), but must join the thread before it touches transformers: its lazily loaded attributes fail when two
threads load them at once ("cannot import name 'AutoModelForCausalLM'", seen here). An import that fails here
fails again, with its traceback, where it is used.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger("swarm.peer")

# torch first: the main thread's `swarm.wire` (for `info` requests) then waits for no more than torch.
COMPUTE_MODULES = ("torch", "swarm.wire", "transformers", "swarm.peer.server", "swarm.peer.heal")


def start_preload(modules: tuple[str, ...] = COMPUTE_MODULES) -> threading.Thread:
    """Start importing `modules` on a daemon thread; returns the thread."""

    def preload() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as error:  # the main thread's own import reports it properly
                log.debug("preloading %s failed: %s", name, error)
                return

    thread = threading.Thread(target=preload, name="preload", daemon=True)
    thread.start()
    return thread
