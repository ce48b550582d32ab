"""A network lab of our own: hosts in network namespaces on one bridge per subnet, each link shaped with tc tbf.

Every address lives only inside namespaces this lab creates (10.77.0.0/24 by default; with several subnets,
10.77.0.0/24, 10.77.1.0/24, ... joined by a router namespace at .254 of each), so traffic never leaves the
machine. Needs root (ip netns, tc); `available()` says whether this machine allows it.
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
    """N hosts on switches (a bridge in a namespace of its own per subnet); each host's link shaped to `rate`
    (None: not shaped), or host i's to `rates[i]` where given. Host i sits on subnet i % subnets; with several
    subnets a router forwards between them."""

    host_count: int
    rate: str | None = "100mbit"
    rates: Sequence[str | None] = ()
    subnet: str = "10.77.0"
    subnets: int = 1
    hosts: list[Host] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    @property
    def switch(self) -> str:
        return self.switch_of(0)

    def switch_of(self, subnet: int) -> str:
        return f"swarm-sw{subnet}-{self.tag}"

    @property
    def router(self) -> str:
        return f"swarm-rt-{self.tag}"

    def prefix(self, subnet: int) -> str:
        """The first three octets of a subnet's addresses."""
        first, second, third = self.subnet.split(".")
        return f"{first}.{second}.{int(third) + subnet}"

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
        for subnet in range(self.subnets):
            _run("ip", "netns", "add", self.switch_of(subnet))
            _run("ip", "netns", "exec", self.switch_of(subnet), "ip", "link", "add", "br0", "type", "bridge")
            _run("ip", "netns", "exec", self.switch_of(subnet), "ip", "link", "set", "br0", "up")
        if self.subnets > 1:
            self._build_router()
        for index in range(self.host_count):
            subnet = index % self.subnets
            number = index // self.subnets + 1
            host = Host(namespace=f"swarm-h{index}-{self.tag}", address=f"{self.prefix(subnet)}.{number}")
            _run("ip", "netns", "add", host.namespace)
            self.hosts.append(host)
            inside = self._plug(host.namespace, subnet, f"sw{index}{self.tag}", f"hp{index}{self.tag}")
            _run(*host.command(["ip", "link", "set", "lo", "up"]))
            _run(*host.command(["ip", "addr", "add", f"{host.address}/24", "dev", inside]))
            _run(*host.command(["ip", "link", "set", inside, "up"]))
            if self.subnets > 1:
                _run(*host.command(["ip", "route", "add", "default", "via", f"{self.prefix(subnet)}.254"]))
            rate = self.rate_of(index)
            if rate is not None:
                # Shape both directions of the host's link: its egress, and the switch port's egress toward it.
                shape = ["tc", "qdisc", "add", "dev"]
                limits = ["root", "tbf", "rate", rate, "burst", "256kbit", "latency", "100ms"]
                _run(*host.command([*shape, inside, *limits]))
                _run("ip", "netns", "exec", self.switch_of(subnet), *shape, f"hp{index}{self.tag}"[:15], *limits)

    def rate_of(self, index: int) -> str | None:
        """The rate host `index`'s link is shaped to (None: not shaped)."""
        return self.rates[index] if index < len(self.rates) else self.rate

    def _plug(self, namespace: str, subnet: int, inside_name: str, outside_name: str) -> str:
        """A veth pair from `namespace` to the subnet's bridge; returns the name of the end inside."""
        inside, outside = inside_name[:15], outside_name[:15]
        _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        _run("ip", "link", "set", inside, "netns", namespace)
        _run("ip", "link", "set", outside, "netns", self.switch_of(subnet))
        _run("ip", "netns", "exec", self.switch_of(subnet), "ip", "link", "set", outside, "master", "br0")
        _run("ip", "netns", "exec", self.switch_of(subnet), "ip", "link", "set", outside, "up")
        return inside

    def _build_router(self) -> None:
        _run("ip", "netns", "add", self.router)
        _run("ip", "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        for subnet in range(self.subnets):
            inside = self._plug(self.router, subnet, f"rt{subnet}{self.tag}", f"rp{subnet}{self.tag}")
            _run(
                "ip", "netns", "exec", self.router, "ip", "addr", "add", f"{self.prefix(subnet)}.254/24", "dev", inside
            )
            _run("ip", "netns", "exec", self.router, "ip", "link", "set", inside, "up")

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        for namespace in [self.router] + [self.switch_of(subnet) for subnet in range(self.subnets)]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.hosts.clear()
