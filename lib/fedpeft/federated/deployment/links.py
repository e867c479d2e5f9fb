"""Farmers' links made real: one Linux network namespace per farmer, joined to the server by a veth pair on a
bridge, each direction capped at the farmer's rate with a token-bucket filter (``tc qdisc ... tbf``).

The server's side of every veth sits on one bridge in the root namespace, whose address the SuperLink listens on;
a farmer's SuperNode (and every ClientApp process it starts) runs inside its namespace and reaches the SuperLink
only through its own veth. ``tbf`` on the host end shapes the downlink (server to farmer), ``tbf`` on the farmer's
end the uplink. The host end's kernel counters (``/sys/class/net/<if>/statistics``) count every byte on the link:
model payloads plus HTTP, TCP/IP and Ethernet headers and Flower's polling.

What ``tbf`` cannot shape: latency and loss (netem, which would add them, is not available on these machines), so
a shaped run has the rates of the simulated network but none of its latency.

Rates are in Mbit/s (10**6 bits per second). Needs root (``CAP_NET_ADMIN``) and the ``ip`` and ``tc`` commands;
:func:`shaping_unavailable` says why not where they are missing. Everything made is removed by
:meth:`ShapedLinks.close` (also called on error and from an ``atexit`` hook), and :func:`leftovers` lists what a
killed run left behind.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

#: Every namespace and interface this module makes starts with this, so leftovers can be found and removed.
PREFIX = "fpft"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def shaping_unavailable() -> str | None:
    """Why namespaces with shaped links cannot be made here, or ``None`` when they can (tried for real: a namespace
    is made and removed)."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed (Debian: iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); this process runs as uid " + str(os.geteuid())
    probe = f"{PREFIX}probe{secrets.token_hex(2)}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "delete", probe, check=False)
    return None


def leftovers() -> list[str]:
    """Namespaces and interfaces of this module that exist now (none once every run has cleaned up)."""
    names = [line.split()[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = [p.name for p in Path("/sys/class/net").iterdir()] if Path("/sys/class/net").is_dir() else []
    return sorted(n for n in names + links if n.startswith(PREFIX))


def tbf_burst_bytes(rate_mbps: float) -> int:
    """The bucket size: 10 ms of traffic at the rate, at least two full Ethernet frames (tbf needs a burst of at least
    rate / HZ; too small a bucket caps the rate below the one asked for)."""
    return max(3028, int(rate_mbps * 1e6 / 8 * 0.010))


@dataclass
class Link:
    farmer: int
    rate_mbps: float
    namespace: str
    host_if: str  # on the bridge, in the root namespace
    farmer_if: str  # inside the namespace
    address: str  # the farmer's IPv4 address

    def counters(self) -> dict[str, int]:
        """Bytes the link has carried so far: ``down`` (server to farmer) and ``up`` (farmer to server), every header
        included, read from the host end's kernel counters."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return {"down": int((stats / "tx_bytes").read_text()), "up": int((stats / "rx_bytes").read_text())}


@dataclass
class ShapedLinks:
    """``len(rates_mbps)`` farmers' namespaces on one bridge; use as a context manager or call :meth:`close`."""

    rates_mbps: Sequence[float]
    token: str = field(default_factory=lambda: secrets.token_hex(2))
    links: list[Link] = field(default_factory=list)
    bridge: str = ""
    server_address: str = ""
    on_token: Callable[[str], None] | None = field(default=None, repr=False, compare=False)  # told before anything is made

    def __post_init__(self) -> None:
        if not self.rates_mbps or any(not r > 0 for r in self.rates_mbps):
            raise ValueError(f"rates_mbps = {list(self.rates_mbps)!r} is not allowed; give one rate > 0 Mbit/s per farmer")
        if len(self.rates_mbps) > 60_000:
            raise ValueError(f"{len(self.rates_mbps)} farmers is more than one /16 subnet holds; use at most 60000")
        octet = 100 + int(self.token, 16) % 150  # a private /16 per run, so that two runs' routes never overlap
        self.subnet = f"10.{octet}"
        self.bridge = f"{PREFIX}{self.token}br"
        self.server_address = f"{self.subnet}.0.1"
        atexit.register(self.close)
        if self.on_token is not None:
            self.on_token(self.token)
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.server_address}/16", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, rate in enumerate(self.rates_mbps):
            n = i + 2
            link = Link(i, float(rate), f"{PREFIX}{self.token}-{i}", f"{PREFIX}{self.token}h{i}", f"{PREFIX}{self.token}f{i}",
                        f"{self.subnet}.{n // 256}.{n % 256}")
            self.links.append(link)
            _run("ip", "netns", "add", link.namespace)
            _run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.farmer_if)
            _run("ip", "link", "set", link.farmer_if, "netns", link.namespace)
            _run("ip", "link", "set", link.host_if, "master", self.bridge)
            _run("ip", "link", "set", link.host_if, "up")
            inside = ("ip", "netns", "exec", link.namespace)
            _run(*inside, "ip", "addr", "add", f"{link.address}/16", "dev", link.farmer_if)
            _run(*inside, "ip", "link", "set", link.farmer_if, "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            rate_arg, burst = f"{rate * 1e6:.0f}bit", str(tbf_burst_bytes(rate))
            _run("tc", "qdisc", "add", "dev", link.host_if, "root", "tbf", "rate", rate_arg, "burst", burst, "latency", "200ms")
            _run(*inside, "tc", "qdisc", "add", "dev", link.farmer_if, "root", "tbf", "rate", rate_arg, "burst", burst,
                 "latency", "200ms")

    def command_in(self, farmer: int, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside farmer ``farmer``'s namespace."""
        return ["ip", "netns", "exec", self.links[farmer].namespace, *cmd]

    def counters(self) -> list[dict[str, int]]:
        return [link.counters() for link in self.links]

    def close(self) -> None:
        """Remove every namespace, veth and the bridge (idempotent; deleting a namespace deletes its veth pair)."""
        for link in self.links:
            _run("ip", "netns", "delete", link.namespace, check=False)
            _run("ip", "link", "delete", link.host_if, check=False)
        if self.bridge:
            _run("ip", "link", "delete", self.bridge, check=False)
        self.links = []
        atexit.unregister(self.close)

    def __enter__(self) -> ShapedLinks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
