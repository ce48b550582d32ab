"""An ASGI app served by uvicorn on a thread of its own, beside a process's main loop (the seedbox's libtorrent
loop, a compute peer's ZeroMQ loop).

The socket is bound in the caller before the thread starts, so a taken address fails there with a clear error
and port 0 is resolved at once. uvicorn installs no signal handlers off the main thread: the process keeps its
own (SIGTERM sets its stop event) and stops the server through `should_exit`."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import uvicorn

from swarm.address import Address
from swarm.errors import SwarmError

# Seconds open connections get to finish their request once the server is asked to stop.
GRACEFUL_STOP_SECONDS = 2.0
# Seconds the server thread may take to start answering.
START_SECONDS = 10.0


class ServerThread:
    """`app` served on `listen` from a daemon thread; `start()`, then `stop()` (idempotent)."""

    def __init__(self, app: Any, listen: Address, what: str) -> None:
        self.what = what
        self.socket = bind_tcp(listen, what)
        config = uvicorn.Config(
            app,
            lifespan="off",
            # The process configured logging already: uvicorn's own dictConfig would replace its handlers.
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=int(GRACEFUL_STOP_SECONDS),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name=f"{what}-http", daemon=True
        )

    @property
    def address(self) -> Address:
        """The address bound (the port the OS chose for port 0)."""
        return Address.of(self.socket.getsockname()[:2])

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SwarmError(f"the {self.what} server on {self.address} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=GRACEFUL_STOP_SECONDS + 3)
        self.socket.close()


def bind_tcp(listen: Address, what: str) -> socket.socket:
    """A listening TCP socket on `listen`; SwarmError naming `what` when the address is taken or wrong."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        return socket.create_server(listen.pair, family=family)
    except OSError as error:
        # create_server appends the address to a bind error's strerror; ours names the address already.
        reason = os.strerror(error.errno) if error.errno and error.errno > 0 else str(error.strerror or error)
        raise SwarmError(f"cannot serve {what} on {listen}: {reason}") from error
