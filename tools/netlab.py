"""A network lab of our own: hosts in network namespaces on one bridge, each link shaped with tc tbf.

Every address lives only inside namespaces this lab creates (10.77.0.0/24 by default), so traffic never
leaves the machine. Needs root (ip netns, tc); `available()` says whether this machine allows it.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def available() -> tuple[bool, str]:
    """Whether namespaces and tbf can be used here, and why not."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False, "iproute2 (ip, tc) is not installed"
    name = f"swarm-probe-{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as error:
        return False, f"network namespaces are not permitted here: {getattr(error, 'stderr', error)}"
    try:
        _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit",
             "burst", "32kbit", "latency", "50ms")  # fmt: skip
    except subprocess.CalledProcessError as error:
        return False, f"tc tbf is not available: {error.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True, ""


@dataclass
class Host:
    namespace: str
    address: str

    def command(self, arguments: Sequence[str]) -> list[str]:
        """A command line that runs `arguments` inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *arguments]


@dataclass
class Lab:
    """N hosts on one switch (a bridge in a namespace of its own); each host's link shaped to `rate`."""

    host_count: int
    rate: str = "100mbit"
    subnet: str = "10.77.0"
    hosts: list[Host] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    @property
    def switch(self) -> str:
        return f"swarm-sw-{self.tag}"

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        _run("ip", "netns", "add", self.switch)
        _run("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        _run("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for index in range(self.host_count):
            host = Host(namespace=f"swarm-h{index}-{self.tag}", address=f"{self.subnet}.{index + 1}")
            inside, outside = f"sw{index}{self.tag}"[:15], f"hp{index}{self.tag}"[:15]
            _run("ip", "netns", "add", host.namespace)
            self.hosts.append(host)
            _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            _run("ip", "link", "set", inside, "netns", host.namespace)
            _run("ip", "link", "set", outside, "netns", self.switch)
            _run("ip", "netns", "exec", self.switch, "ip", "link", "set", outside, "master", "br0")
            _run("ip", "netns", "exec", self.switch, "ip", "link", "set", outside, "up")
            _run(*host.command(["ip", "link", "set", "lo", "up"]))
            _run(*host.command(["ip", "addr", "add", f"{host.address}/24", "dev", inside]))
            _run(*host.command(["ip", "link", "set", inside, "up"]))
            # Shape both directions of the host's link: its egress, and the switch port's egress toward it.
            shape = ["tc", "qdisc", "add", "dev"]
            limits = ["root", "tbf", "rate", self.rate, "burst", "256kbit", "latency", "100ms"]
            _run(*host.command([*shape, inside, *limits]))
            _run("ip", "netns", "exec", self.switch, *shape, outside, *limits)

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        self.hosts.clear()
