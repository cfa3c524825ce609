"""A lab of hosts in Linux network namespaces: real networks between Tether processes on one
machine, with NATs, firewalls, partitions, latency and loss. Needs root, ``ip`` (iproute2) and
``nft`` (nftables); nothing outside the namespaces it makes is touched.

Topology (every namespace is named ``<prefix><name>``, the prefix ``tl-<6 hex>-`` unique per lab)::

                         "internet": namespace <prefix>inet, bridge br0, core router 100.64.0.1
        public host  100.64.0.N/16 ---+--- NAT router  wan 100.64.0.N, lan 198.18.K.1/24
        public host  100.64.0.N/16 ---+        `-- host behind it 198.18.K.M (masquerade)
                                      +--- firewall router wan 100.64.0.N, lan 100.65.K.1/24
                                               `-- host behind it 100.65.K.M (public address,
                                                   unsolicited inbound UDP dropped)

Only addresses set aside for this are used: 100.64.0.0/10 (shared address space) for the
internet, 198.18.0.0/15 (network benchmarking) behind NATs. Veth pairs are created straight
into their namespaces, so the default namespace never holds a lab interface, route or rule.

* ``Lab()`` (a context manager) -> ``add_internet()``, ``add_host(name, behind=None)``,
  ``add_nat(name, kind)`` with kind ``"consistent"`` (``masquerade``: keeps the source port when
  free, so one inside socket has one outside address), ``"random"`` (``masquerade
  fully-random``: a random outside port per flow) or ``"firewall"`` (no translation; drops
  inbound UDP that is not a reply).
* ``run(host, argv)`` starts a process in a host's namespace (``ip netns exec``), tracked so
  that ``close()`` stops it; ``Host.argv(argv)`` gives the command line for other launchers.
* ``partition(a, b)`` / ``heal()``: nftables drop rules in the two hosts' namespaces;
  ``isolate(host)``: every packet in or out of one host dropped there (a dead machine).
* ``firewall(host, open_udp)``: the host drops inbound UDP except answers and those ports.
* ``postgres(host, replica_of=None)``: Debian's PostgreSQL on a host, a primary or a
  streaming replica of one (``Postgres.url`` is a ``--metadata-url``).
* ``add_relay(host, target, ...)``: a user-space UDP relay on ``host`` forwarding to
  ``target`` with a fixed delay, seeded random loss and an on/off block (``Relay.set``); the
  kernel here has no ``tc netem``, so impairments live in user space.
* ``close()`` stops the processes and deletes the namespaces (and with them every veth,
  bridge and rule). An ``atexit`` hook and SIGTERM/SIGHUP handlers close labs left open, and
  ``tools/lab clean`` removes leftovers of killed runs by prefix.

CLI (each runs in the current namespace; the lab starts them in its hosts)::

    tools/lab check                       can this machine make labs? (exit 1 and why if not)
    tools/lab clean [--prefix tl-]        delete leftover lab namespaces and their processes
    tools/lab echo --host H --port P      UDP echo: answers {"seen": "IP:PORT"} per datagram
    tools/lab probe HOST:PORT [--port P]  send one datagram, print the answer (or a timeout)
    tools/lab relay --listen H:P --target H:P [--delay-ms D] [--loss L] [--seed S]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "tl-"
INTERNET = "inet"
CORE = "100.64.0.1"
MAX_PUBLIC = 250
MAX_BEHIND = 250
NAT_KINDS = ("consistent", "random", "firewall")
STOP_GRACE_S = 10.0


class LabError(RuntimeError):
    """A lab command failed; the message has the command and what it printed."""


def _sh(argv: list[str], *, input: str | None = None, check: bool = True) -> str:
    result = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def unavailable() -> str | None:
    """Why labs cannot be made here (not root, no ``ip``, no ``nft``, namespaces refused), or
    None. Makes and deletes one probe namespace."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, veth pairs, nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"lab tests need `{tool}` (Debian package {package}; tools/setup installs it)"
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        _sh(["ip", "netns", "add", probe])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _sh(["ip", "netns", "exec", probe, "nft", "-f", "-"],
            input="table ip t {\n chain c {\n type nat hook postrouting priority 100\n"
                  " masquerade\n }\n}\n")
    except LabError as exc:
        return f"nftables masquerade does not work in a namespace: {exc}"
    finally:
        _sh(["ip", "netns", "del", probe], check=False)
    return None


@dataclass
class Host:
    """A namespace with one address. ``public_address``: where the internet sees it (its own
    address, or its NAT router's outside address)."""

    name: str
    netns: str
    address: str
    behind: Nat | None = None

    @property
    def public_address(self) -> str:
        if self.behind is not None and self.behind.kind != "firewall":
            return self.behind.router.address
        return self.address

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def sh(self, argv: list[str], *, input: str | None = None) -> str:
        """Run ``argv`` here to completion; its stdout (LabError on failure)."""
        return _sh(self.argv(argv), input=input)


@dataclass
class Nat:
    """A router with a LAN behind it (see the module doc for the kinds)."""

    name: str
    kind: str
    router: Host
    subnet: ipaddress.IPv4Network
    hosts: list[Host] = field(default_factory=list)


@dataclass
class Postgres:
    """A PostgreSQL server on a lab host (``Lab.postgres``)."""

    address: str
    port: int
    folder: Path
    process: subprocess.Popen[Any]
    replica: bool = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Tether's ``--metadata-url`` takes."""
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/postgres"

    def sql(self, host: Host, query: str) -> str:
        """``query``'s rows (``psql -At``) as seen from ``host``."""
        return host.sh([str(postgres_bin() / "psql"), "-At", "-h", self.address, "-p",
                        str(self.port), "-U", "postgres", "-c", query])


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's ``bin`` folder (Debian's ``postgresql`` package)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        raise LabError("PostgreSQL is not installed (apt-get install -y postgresql)")
    return found[-1]


@dataclass
class Relay:
    """A user-space UDP relay process (``tools/lab relay``) on a lab host."""

    address: str
    port: int
    process: subprocess.Popen[str]

    def set(self, *, delay_ms: float | None = None, loss: float | None = None,
            blocked: bool | None = None) -> None:
        """Change the impairments; the relay confirms before this returns."""
        change = {k: v for k, v in
                  (("delay_ms", delay_ms), ("loss", loss), ("blocked", blocked)) if v is not None}
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(change) + "\n")
        self.process.stdin.flush()
        read_json_line(self.process, timeout=10)


#: Labs not closed yet, for the exit and signal handlers (held strongly: a lab nobody refers
#: to any more still has namespaces to delete).
_OPEN: set[Lab] = set()


def _close_open_labs() -> None:
    for lab in list(_OPEN):
        lab.close()


def _on_signal(signum: int, _frame: object) -> None:
    # A second signal (``timeout``'s, a user's kill after Ctrl-C) must not cut the teardown
    # short: close() may be waiting out a process's grace period.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _close_open_labs()
    raise SystemExit(128 + signum)


atexit.register(_close_open_labs)


class Lab:
    """Hosts in namespaces; see the module doc. Use as ``with Lab() as lab:``."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{PREFIX}{secrets.token_hex(3)}-"
        if not self.prefix.startswith(PREFIX):
            raise ValueError(f"a lab's prefix starts with {PREFIX!r} (tools/lab clean finds it)")
        self.hosts: dict[str, Host] = {}
        self.nats: dict[str, Nat] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self._links = 0
        self._public = 1  # 100.64.0.1 is the core router
        self._partitioned: set[str] = set()
        #: Folders of the lab's own (PostgreSQL data), removed by ``close()``.
        self._folders: list[Path] = []
        self.closed = False
        _OPEN.add(self)
        if _is_main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) == signal.SIG_DFL:
                    signal.signal(sig, _on_signal)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ------------------------------------------------------------------------

    def _netns(self, name: str) -> str:
        netns = self.prefix + name
        if netns in self._namespaces:
            raise ValueError(f"lab already has a namespace named {name!r}")
        _sh(["ip", "netns", "add", netns])
        self._namespaces.append(netns)
        _sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        return netns

    def _veth(self, ns_a: str, ns_b: str, name_a: str) -> str:
        """A veth pair made straight inside ``ns_a`` (named ``name_a``) and ``ns_b``; returns
        the name of the end in ``ns_b``."""
        self._links += 1
        name_b = f"v{self._links}"
        _sh(["ip", "link", "add", name_a, "netns", ns_a, "type", "veth",
             "peer", "name", name_b, "netns", ns_b])
        for ns, dev in ((ns_a, name_a), (ns_b, name_b)):
            _sh(["ip", "-n", ns, "link", "set", dev, "up"])
        return name_b

    def _sysctl(self, netns: str, *settings: str) -> None:
        _sh(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings])

    def add_internet(self) -> None:
        """The bridge every public host and router hangs off, with the core router that
        routes firewalled LANs (100.64.0.1, every public host's default gateway)."""
        if INTERNET in [n.removeprefix(self.prefix) for n in self._namespaces]:
            return
        netns = self._netns(INTERNET)
        _sh(["ip", "-n", netns, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", netns, "addr", "add", f"{CORE}/16", "dev", "br0"])
        _sh(["ip", "-n", netns, "link", "set", "br0", "up"])
        self._sysctl(netns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.br0.send_redirects=0")

    def _attach_public(self, name: str) -> Host:
        self.add_internet()
        if self._public >= MAX_PUBLIC:
            raise LabError(f"a lab has at most {MAX_PUBLIC - 1} public hosts")
        self._public += 1
        address = f"100.64.0.{self._public}"
        netns = self._netns(name)
        inet = self.prefix + INTERNET
        port = self._veth(netns, inet, "eth0")
        _sh(["ip", "-n", inet, "link", "set", port, "master", "br0"])
        _sh(["ip", "-n", netns, "addr", "add", f"{address}/16", "dev", "eth0"])
        _sh(["ip", "-n", netns, "route", "add", "default", "via", CORE])
        return Host(name, netns, address)

    def add_host(self, name: str, behind: Nat | str | None = None) -> Host:
        """A host on the internet (``behind=None``) or on the LAN of a NAT/firewall router."""
        if name in self.hosts:
            raise ValueError(f"lab already has a host named {name!r}")
        if behind is None:
            host = self._attach_public(name)
        else:
            nat = self.nats[behind] if isinstance(behind, str) else behind
            if len(nat.hosts) >= MAX_BEHIND:
                raise LabError(f"at most {MAX_BEHIND} hosts behind one router")
            address = str(nat.subnet[len(nat.hosts) + 2])
            netns = self._netns(name)
            port = self._veth(netns, nat.router.netns, "eth0")
            _sh(["ip", "-n", nat.router.netns, "link", "set", port, "master", "lan"])
            _sh(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
            _sh(["ip", "-n", netns, "route", "add", "default", "via", str(nat.subnet[1])])
            host = Host(name, netns, address, behind=nat)
            nat.hosts.append(host)
        self.hosts[name] = host
        return host

    def add_nat(self, name: str, kind: str = "consistent") -> Nat:
        """A router on the internet with a LAN behind it (see the module doc for kinds)."""
        if kind not in NAT_KINDS:
            raise ValueError(f"NAT kind must be one of {', '.join(NAT_KINDS)}, not {kind!r}")
        if name in self.nats:
            raise ValueError(f"lab already has a router named {name!r}")
        router = self._attach_public(name)
        ns = router.netns
        k = len(self.nats) + 1
        if k > 250:
            raise LabError("a lab has at most 250 routers")
        subnet = ipaddress.IPv4Network(
            f"{'100.65' if kind == 'firewall' else '198.18'}.{k}.0/24")
        _sh(["ip", "-n", ns, "link", "set", "eth0", "name", "wan"])
        _sh(["ip", "-n", ns, "link", "add", "lan", "type", "bridge"])
        _sh(["ip", "-n", ns, "addr", "add", f"{subnet[1]}/24", "dev", "lan"])
        _sh(["ip", "-n", ns, "link", "set", "lan", "up"])
        self._sysctl(ns, "net.ipv4.ip_forward=1")
        if kind == "firewall":
            rules = """table inet lab_fw {
                chain forward { type filter hook forward priority 0; policy accept;
                    iifname "wan" ct state established,related accept
                    iifname "wan" meta l4proto udp drop
                }
            }"""
            # the core routes the firewalled (public) LAN to this router
            _sh(["ip", "-n", self.prefix + INTERNET, "route", "add", str(subnet),
                 "via", router.address])
        else:
            flags = " fully-random" if kind == "random" else ""
            # Unsolicited UDP to the router itself is dropped, as a home router's WAN firewall
            # does: accepted, it would leave a conntrack entry that makes masquerade pick
            # another port for the LAN socket it was aimed at, and holepunching (whose early
            # low-TTL probes reach the other NAT here, one hop away) could never work.
            rules = f"""table ip lab_nat {{
                chain postrouting {{ type nat hook postrouting priority 100; policy accept;
                    oifname "wan" masquerade{flags}
                }}
                chain input {{ type filter hook input priority 0; policy accept;
                    iifname "wan" ct state new meta l4proto udp drop
                }}
            }}"""
        router.sh(["nft", "-f", "-"], input=rules)
        nat = Nat(name, kind, router, subnet)
        self.nats[name] = nat
        return nat

    # -- processes -----------------------------------------------------------------------

    def run(self, host: Host | str, argv: list[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s namespace (cwd: the repository, PYTHONPATH set);
        ``close()`` stops it (SIGTERM, then SIGKILL)."""
        h = self.hosts[host] if isinstance(host, str) else host
        env = dict(popen.pop("env", None) or os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        popen.setdefault("cwd", str(ROOT))
        proc = subprocess.Popen(h.argv(argv), env=env, **popen)
        self.processes.append(proc)
        return proc

    def python(self, host: Host | str, args: list[str], **popen: Any) -> subprocess.Popen[Any]:
        """``run`` of this interpreter with ``args``."""
        return self.run(host, [sys.executable, *args], **popen)

    def add_relay(self, host: Host | str, target: tuple[str, int], *, port: int = 0,
                  delay_ms: float = 0.0, loss: float = 0.0, seed: int = 0) -> Relay:
        """A UDP relay on ``host`` forwarding to ``target`` (see ``relay`` below)."""
        h = self.hosts[host] if isinstance(host, str) else host
        proc = self.python(
            h, [str(Path(__file__).resolve()), "relay", "--listen", f"{h.address}:{port}",
                "--target", f"{target[0]}:{target[1]}", "--delay-ms", str(delay_ms),
                "--loss", str(loss), "--seed", str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = read_json_line(proc, timeout=30)
        addr, _, p = str(ready["relay"]).rpartition(":")
        return Relay(addr, int(p), proc)

    def postgres(self, host: Host | str, *, replica_of: Postgres | None = None,
                 port: int = 5432, timeout: float = 120.0) -> Postgres:
        """Debian's PostgreSQL serving on ``host``'s address (trust authentication from the
        lab's internet, for tests only): a fresh primary, or with ``replica_of`` a streaming
        replica of that primary (``pg_basebackup -R`` writes ``standby.signal`` and
        ``primary_conninfo``), read-only. Runs as the ``postgres`` user in a folder of its
        own; ``close()`` stops it and ``Postgres.folder`` is removed with the lab."""
        h = self.hosts[host] if isinstance(host, str) else host
        bindir = postgres_bin()
        folder = Path(tempfile.mkdtemp(prefix=f"{self.prefix}pg-{h.name}-"))
        self._folders.append(folder)
        data = folder / "data"
        shutil.chown(folder, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        if replica_of is None:
            _sh([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-locale"])
            with open(data / "pg_hba.conf", "a") as hba:
                # (written as root into the postgres user's folder: still readable by it)
                hba.write("host all all 100.64.0.0/10 trust\n"
                          "host replication all 100.64.0.0/10 trust\n")
        else:
            h.sh([*as_pg, str(bindir / "pg_basebackup"), "-h", replica_of.address, "-p",
                  str(replica_of.port), "-U", "postgres", "-D", str(data), "-R", "-X", "stream",
                  "--checkpoint=fast"])
        with open(folder / "server.log", "ab") as log:
            proc = self.run(h, [*as_pg, str(bindir / "postgres"), "-D", str(data), "-p",
                                str(port), "-c", f"listen_addresses={h.address}",
                                "-k", str(folder), "-c", "fsync=off",
                                "-c", "full_page_writes=off"],
                            cwd=str(folder), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(h.argv([str(bindir / "pg_isready"), "-q", "-h", h.address,
                                           "-p", str(port)]), check=False)
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                said = (folder / "server.log").read_text(errors="replace")[-2000:]
                raise LabError(f"PostgreSQL on {h.name} did not start: {said}")
            time.sleep(0.2)
        return Postgres(h.address, port, folder, proc, replica=replica_of is not None)

    # -- faults --------------------------------------------------------------------------

    def _seen_by(self, a: Host, b: Host) -> str:
        """The address ``a`` exchanges packets with for ``b``."""
        if a.behind is not None and a.behind is b.behind:
            return b.address
        return b.public_address

    def partition(self, a: Host | str, b: Host | str) -> None:
        """Drop every packet between ``a`` and ``b`` (both ways) until ``heal()``."""
        ha = self.hosts[a] if isinstance(a, str) else a
        hb = self.hosts[b] if isinstance(b, str) else b
        for me, other in ((ha, hb), (hb, ha)):
            peer = self._seen_by(me, other)
            self._cut_table(me)
            me.sh(["nft", "add", "rule", "inet", "lab_cut", "input", "ip", "saddr", peer, "drop"])
            me.sh(["nft", "add", "rule", "inet", "lab_cut", "output", "ip", "daddr", peer,
                   "drop"])

    def isolate(self, host: Host | str) -> None:
        """Drop every packet into and out of ``host`` (but its loopback) until ``heal()``: a
        machine that lost power, as the others see it (no ICMP answers, nothing). Only the
        host's own namespace holds the rules, so others' sends leave them as usual."""
        h = self.hosts[host] if isinstance(host, str) else host
        self._cut_table(h)
        h.sh(["nft", "add", "rule", "inet", "lab_cut", "input", "iifname", "!=", "lo", "drop"])
        h.sh(["nft", "add", "rule", "inet", "lab_cut", "output", "oifname", "!=", "lo", "drop"])

    def _cut_table(self, host: Host) -> None:
        if host.netns not in self._partitioned:
            host.sh(["nft", "-f", "-"], input="""table inet lab_cut {
                chain input { type filter hook input priority -10; policy accept; }
                chain output { type filter hook output priority -10; policy accept; }
            }""")
            self._partitioned.add(host.netns)

    def firewall(self, host: Host | str, open_udp: list[int] | tuple[int, ...] = ()) -> None:
        """Make ``host`` drop inbound UDP that is neither an answer nor to one of the
        ``open_udp`` ports, as a host firewall configured for a service would."""
        h = self.hosts[host] if isinstance(host, str) else host
        ports = ", ".join(str(int(p)) for p in open_udp)
        h.sh(["nft", "-f", "-"], input=f"""table inet lab_host_fw {{
            chain input {{ type filter hook input priority 0; policy accept;
                ct state established,related accept
                iifname "lo" accept
                {f"udp dport {{ {ports} }} accept" if ports else ""}
                meta l4proto udp drop
            }}
        }}""")

    def heal(self) -> None:
        """Undo every ``partition`` and ``isolate``."""
        for netns in sorted(self._partitioned):
            _sh(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "lab_cut"])
        self._partitioned.clear()

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, then delete every namespace (idempotent)."""
        if self.closed:
            return
        self.closed = True
        _OPEN.discard(self)
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for netns in reversed(self._namespaces):
            _delete_netns(netns)
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """This lab's namespaces that still exist (empty after ``close``)."""
        return list_netns_with(self.prefix)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def list_netns() -> list[str]:
    out = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_netns_with(prefix: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(prefix)]


def _delete_netns(netns: str) -> None:
    """Kill what still runs in ``netns``, then delete it."""
    for pid in _sh(["ip", "netns", "pids", netns], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _sh(["ip", "netns", "del", netns], check=False)


def clean(prefix: str = PREFIX) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (leftovers of killed runs),
    and the PostgreSQL folders of such labs."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"clean only removes lab namespaces (prefix {PREFIX!r}...)")
    gone = list_netns_with(prefix)
    for netns in gone:
        _delete_netns(netns)
    # the folders of ``Lab.postgres`` servers (``<prefix>pg-<host>-*`` in the temp folder)
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*pg-*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    return gone


def read_line(proc: subprocess.Popen[Any], timeout: float, *, stream: str = "stdout",
              want: str = "") -> str:
    """The next line of ``proc``'s ``stream`` (the first containing ``want``) within
    ``timeout`` seconds. The pipe is read a byte at a time from its descriptor, so that no
    line waits in a buffer that ``select`` cannot see."""
    pipe: IO[Any] | None = getattr(proc, stream)
    assert pipe is not None, f"{stream} of {proc.args!r} is not a pipe"
    fd = pipe.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise LabError(f"{proc.args!r} printed no {want or 'line'!r} in {timeout} s")
        byte = os.read(fd, 1)
        if not byte:
            raise LabError(f"{proc.args!r} exited (code {proc.wait()}) before {want or 'a line'!r}")
        if byte != b"\n":
            line += byte
            continue
        text = line.decode(errors="replace")
        if want in text:
            return text
        line.clear()


def read_json_line(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    """The next stdout line of ``proc`` as JSON, within ``timeout`` seconds."""
    return dict(json.loads(read_line(proc, timeout)))


# -- the processes the lab runs in its hosts --------------------------------------------------


class Impairment:
    """What happens to each relayed datagram (sans IO): dropped while blocked or with
    probability ``loss`` (a seeded RNG, so a run is repeatable), else delivered ``delay_ms``
    later; at most ``max_queued`` datagrams wait, as in a router's queue."""

    def __init__(self, *, delay_ms: float = 0.0, loss: float = 0.0, seed: int = 0,
                 max_queued: int = 1024) -> None:
        self.delay_ms = delay_ms
        self.loss = loss
        self.blocked = False
        self.max_queued = max_queued
        self._rng = random.Random(seed)
        self.queue: deque[tuple[float, bytes, Any]] = deque()
        self.dropped = 0

    def set(self, change: dict[str, Any]) -> None:
        delay, loss = float(change.get("delay_ms", self.delay_ms)), float(
            change.get("loss", self.loss))
        if delay < 0 or not 0.0 <= loss <= 1.0:
            raise ValueError(f"need delay_ms >= 0 and 0 <= loss <= 1, not {change}")
        self.delay_ms, self.loss = delay, loss
        self.blocked = bool(change.get("blocked", self.blocked))

    def offer(self, now: float, data: bytes, dest: Any) -> None:
        if self.blocked or len(self.queue) >= self.max_queued or (
                self.loss and self._rng.random() < self.loss):
            self.dropped += 1
            return
        self.queue.append((now + self.delay_ms / 1000.0, data, dest))

    def due(self, now: float) -> list[tuple[bytes, Any]]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, data, dest = self.queue.popleft()
            out.append((data, dest))
        return out

    def next_deadline(self) -> float | None:
        return self.queue[0][0] if self.queue else None


def _parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def relay_main(listen: tuple[str, int], target: tuple[str, int], impairment: Impairment,
               max_sessions: int = 64) -> None:
    """Forward datagrams between clients of ``listen`` and ``target``: one upstream socket per
    client (at most ``max_sessions``, oldest evicted), every datagram through ``impairment``.
    JSON lines on stdin change the impairment (each answered with the new settings)."""
    import selectors

    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(listen)
    front.setblocking(False)
    sessions: dict[tuple[str, int], socket.socket] = {}
    owner: dict[socket.socket, tuple[str, int]] = {}
    sel = selectors.DefaultSelector()
    sel.register(front, selectors.EVENT_READ)
    control: IO[str] = sys.stdin
    sel.register(control, selectors.EVENT_READ)
    host, port = front.getsockname()
    _say({"relay": f"{host}:{port}"})
    while True:
        deadline = impairment.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in sel.select(timeout):
            if key.fileobj is control:
                line = control.readline()
                if not line:  # nobody steers it any more: keep relaying until killed
                    sel.unregister(control)
                    continue
                impairment.set(json.loads(line))
                _say({"delay_ms": impairment.delay_ms, "loss": impairment.loss,
                      "blocked": impairment.blocked})
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                continue
            if sock is front:
                up = sessions.get(addr)
                if up is None:
                    if len(sessions) >= max_sessions:
                        old_addr, old = next(iter(sessions.items()))
                        del sessions[old_addr], owner[old]
                        sel.unregister(old)
                        old.close()
                    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    up.bind((host, 0))
                    up.setblocking(False)
                    sessions[addr], owner[up] = up, addr
                    sel.register(up, selectors.EVENT_READ)
                impairment.offer(time.monotonic(), data, (up, target))
            elif sock in owner:
                impairment.offer(time.monotonic(), data, (front, owner[sock]))
        for data, (out, dest) in impairment.due(time.monotonic()):
            with contextlib.suppress(OSError):
                out.sendto(data, dest)


def echo_main(host: str, port: int) -> None:
    """Answer each datagram with ``{"seen": "IP:PORT", "data": ...}``: where it came from."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    _say({"echo": "{}:{}".format(*sock.getsockname())})
    while True:
        data, addr = sock.recvfrom(65535)
        reply = {"seen": f"{addr[0]}:{addr[1]}", "data": data.decode(errors="replace")}
        sock.sendto(json.dumps(reply).encode(), addr)


def probe_main(targets: list[tuple[str, int]], port: int, timeout: float, tries: int) -> int:
    """From one local port, send to each target and print each answer (or a timeout) as a
    JSON line; exit 0 if every target answered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(timeout)
    ok = True
    for target in targets:
        answer: dict[str, Any] = {"target": f"{target[0]}:{target[1]}", "answer": None}
        for i in range(tries):
            sent = time.monotonic()
            try:
                sock.sendto(f"probe {i}".encode(), target)
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                answer["error"] = "timed out"
            except OSError as exc:  # EPERM: a partition's drop rule refused the datagram
                answer["error"] = str(exc)
                time.sleep(timeout)
            else:
                answer["answer"] = json.loads(data)
                answer["rtt_ms"] = round((time.monotonic() - sent) * 1000, 1)
                answer.pop("error", None)
                break
        ok = ok and answer["answer"] is not None
        _say(answer)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/lab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="can this machine make labs?")
    c = sub.add_parser("clean", help="delete leftover lab namespaces")
    c.add_argument("--prefix", default=PREFIX)
    e = sub.add_parser("echo", help="UDP echo that says where each datagram came from")
    e.add_argument("--host", default="0.0.0.0")
    e.add_argument("--port", type=int, default=0)
    pr = sub.add_parser("probe", help="send a datagram to each HOST:PORT from one local port")
    pr.add_argument("targets", nargs="+", type=_parse_hostport, metavar="HOST:PORT")
    pr.add_argument("--port", type=int, default=0)
    pr.add_argument("--timeout", type=float, default=1.0)
    pr.add_argument("--tries", type=int, default=3)
    r = sub.add_parser("relay", help="UDP relay with delay, loss and blocking")
    r.add_argument("--listen", type=_parse_hostport, required=True)
    r.add_argument("--target", type=_parse_hostport, required=True)
    r.add_argument("--delay-ms", type=float, default=0.0)
    r.add_argument("--loss", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "check":
        why = unavailable()
        print(why or "ok: this machine can make labs")
        return 1 if why else 0
    if args.command == "clean":
        for netns in clean(args.prefix):
            print(f"deleted {netns}")
        return 0
    if args.command == "echo":
        echo_main(args.host, args.port)
        return 0
    if args.command == "probe":
        return probe_main(args.targets, args.port, args.timeout, args.tries)
    relay_main(args.listen, args.target,
               Impairment(delay_ms=args.delay_ms, loss=args.loss, seed=args.seed))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
