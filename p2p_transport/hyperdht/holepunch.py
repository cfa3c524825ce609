"""The sans-IO core of HyperDHT's path choice and holepunching (no sockets, no clock, no trio).

What it owns, each as hyperdht does it (``lib/nat.js``, ``lib/secure-payload.js``,
``lib/holepuncher.js``, ``lib/connect.js``, ``lib/server.js``):

* :func:`choose_path`: after the relayed handshake, how a client reaches the server (the first
  packet's source, the direct address, a public address, a passive wait, the LAN shortcut, a
  holepunch, or a clear "cannot reach");
* :class:`NatSampler`: the NAT type of one socket from the addresses DHT nodes saw it at
  (CONSISTENT, RANDOM or UNKNOWN, and the addresses to advertise);
* :class:`SecurePayload`: the PEER_HOLEPUNCH payload box (XSalsa20-Poly1305 keyed by the
  handshake's holepunch secret) and the address tokens that prove who owns an address;
* the client's rounds (:func:`probe_payload`, :func:`after_probe`, :func:`punch_payload`) and
  the server's answer to a relayed round (:class:`ServerPunch`);
* the probe schedules of each strategy (:func:`punch_plan`): both CONSISTENT, 1 s apart up to 10
  times; CONSISTENT against RANDOM, 1750 random ports 20 ms apart against 256 "birthday"
  sockets; and :class:`RandomPunchLimiter`, Node's limit on random punches (one at a time, 20 s
  apart, else TRY_LATER).

A plan is a sequence of :class:`Probe` / :class:`Wait` / :class:`OpenSocket` actions that the
trio shell (``dht.py``) or a test's simulated network carries out.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import nacl.bindings as sodium
import nacl.exceptions

from p2p_transport.cenc import RemoteProtocolError, SocketAddress
from p2p_transport.crypto import keyed_hash
from p2p_transport.dht_rpc import DhtError

from .messages import (
    Error,
    Firewall,
    HolepunchPayload,
    NoisePayload,
    decode_holepunch_payload,
    encode_holepunch_payload,
)

__all__ = [
    "BIRTHDAY_SOCKETS",
    "CONSISTENT_PROBES",
    "RANDOM_PROBES",
    "Connect",
    "HolepunchFailed",
    "LanPing",
    "NatSampler",
    "OpenSocket",
    "PassiveWait",
    "PathDecision",
    "PeerConnectionFailed",
    "Probe",
    "ProbeVerdict",
    "Punch",
    "RandomPunchLimiter",
    "RemoteAddress",
    "SecurePayload",
    "ServerAnswer",
    "ServerPunch",
    "Strategy",
    "Unreachable",
    "Wait",
    "after_probe",
    "choose_path",
    "firewall_name",
    "is_bogon",
    "is_reserved",
    "probe_payload",
    "punch_payload",
    "punch_plan",
    "punch_strategy",
]

#: Probes of a CONSISTENT/CONSISTENT punch, one round a second.
CONSISTENT_PROBES = 10
#: Random ports the consistent side sprays at a random NAT (~35 s at 20 ms).
RANDOM_PROBES = 1750
RANDOM_PROBE_INTERVAL = 0.02
#: Sockets the random side opens so one of its mappings meets a sprayed port.
BIRTHDAY_SOCKETS = 256
#: TTL of the "session opening" probes: far enough through our NAT, not to the remote host.
LOW_TTL = 5
#: Node's randomPunchInterval and randomPunchLimit.
RANDOM_PUNCH_INTERVAL = 20.0
RANDOM_PUNCH_LIMIT = 1
#: How long a client waits between TRY_LATER rounds (Node: 10-20 s).
TRY_LATER_MIN, TRY_LATER_MAX = 10.0, 20.0
#: How long either side waits for a peer that said it would connect (Node: 10 s).
PASSIVE_TIMEOUT = 10.0
#: How long a punch may take at most (random probes run ~35 s).
PUNCH_TIMEOUT = 40.0
#: DHT nodes a puncher socket pings to learn its NAT (nat.js ``_minSamples``).
NAT_SAMPLES = 4


class PeerConnectionFailed(DhtError):
    """A connection attempt failed (``PEER_CONNECTION_FAILED`` in hyperdht)."""


class HolepunchFailed(PeerConnectionFailed):
    """Punching through the NATs did not (or cannot) connect us. ``code`` is hyperdht's error
    name: CANNOT_HOLEPUNCH, HOLEPUNCH_ABORTED, HOLEPUNCH_PROBE_TIMEOUT,
    HOLEPUNCH_DOUBLE_RANDOMIZED_NATS, HOLEPUNCH_INVALID, REMOTE_ABORTED, REMOTE_NOT_HOLEPUNCHABLE,
    REMOTE_NOT_HOLEPUNCHING or TRY_LATER."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def firewall_name(value: int) -> str:
    names = {Firewall.UNKNOWN: "UNKNOWN", Firewall.OPEN: "OPEN",
             Firewall.CONSISTENT: "CONSISTENT", Firewall.RANDOM: "RANDOM"}
    return names.get(value, str(value))


_RESERVED = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))


def is_reserved(host: str) -> bool:
    """The ``bogon`` package's ``isReserved``: not an address a LAN host has (loopback and
    private ranges are not reserved)."""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return any(ip in net for net in _RESERVED)


def is_bogon(host: str) -> bool:
    """Private, loopback, link-local or reserved (hyperdht's ``bogon`` check)."""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return not ip.is_global


# -- path choice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Connect the stream from the main socket to ``address``."""

    address: SocketAddress


@dataclass(frozen=True)
class PassiveWait:
    """We are OPEN: the server connects to us; wait for its first packet."""


@dataclass(frozen=True)
class LanPing:
    """Same public host: PING these private addresses; the first that answers wins. Race it
    with a holepunch when ``then_punch``."""

    candidates: tuple[SocketAddress, ...]
    then_punch: bool


@dataclass(frozen=True)
class Punch:
    """Holepunch through the server's relays."""


@dataclass(frozen=True)
class Unreachable:
    """No path can work; fail with this error."""

    error: PeerConnectionFailed


PathDecision = Connect | PassiveWait | LanPing | Punch | Unreachable
WILDCARD_HOST = "0.0.0.0"


def choose_path(remote: NoisePayload, *, server_address: SocketAddress,
                client_address: SocketAddress, relayed: bool, our_firewall: int,
                first_packet: SocketAddress | None) -> PathDecision:
    """How a client reaches the server after the handshake (``connect.js`` ``holepunch``).

    ``server_address`` is the server as the relay saw it (or the node we asked, unrelayed),
    ``client_address`` us as the relay saw us, ``first_packet`` where the server's first UDX
    packet came from, if one came.
    """
    if first_packet is not None:
        return Connect(first_packet)
    if not relayed:
        return Connect(server_address)
    holepunchable = remote.holepunch is not None and bool(remote.holepunch.relays)
    if remote.firewall == Firewall.OPEN or not holepunchable:
        if (not holepunchable and _behind_nat(remote, server_address)
                and our_firewall != Firewall.OPEN and client_address.host != server_address.host):
            # Neither side would take the other's first packet, and the server does not punch
            # (an older Python peer): fail now, not after the stream's retransmissions.
            return Unreachable(HolepunchFailed(
                "CANNOT_HOLEPUNCH",
                f"the server is behind a NAT (seen at {server_address.host}:"
                f"{server_address.port}, firewall {firewall_name(remote.firewall)}) and offers "
                f"no holepunch relays, and so are we (firewall {firewall_name(our_firewall)})"))
        for addr in remote.addresses4:
            if not is_bogon(addr.host):
                return Connect(addr)
        return Connect(server_address)
    if our_firewall == Firewall.OPEN:
        return PassiveWait()
    if client_address.host == server_address.host:
        lan = tuple(a for a in remote.addresses4 if not is_reserved(a.host))
        if lan:
            return LanPing(lan, then_punch=True)
    return Punch()


def _behind_nat(remote: NoisePayload, seen: SocketAddress) -> bool:
    """Is the server surely behind a NAT: not claiming OPEN, and the relay saw it at an
    address that none of its own (concrete) socket addresses is?"""
    own = [a.host for a in remote.addresses4]
    return (remote.firewall != Firewall.OPEN and bool(own)
            and WILDCARD_HOST not in own and seen.host not in own)


# -- NAT classification -----------------------------------------------------------------------


@dataclass
class _Sample:
    host: str
    port: int
    hits: int = 1


class NatSampler:
    """The NAT type of one socket from the ``to`` addresses of DHT replies (``nat.js``).

    Feed :meth:`add` with (our address as the node saw it, the node's address). ``done`` says
    the analysis has an answer (CONSISTENT at once, else after ``min_samples``)."""

    def __init__(self, *, firewalled: bool = True, min_samples: int = 4) -> None:
        self.firewalled = firewalled
        self.min_samples = min_samples
        self.firewall = Firewall.UNKNOWN if firewalled else Firewall.OPEN
        self.addresses: tuple[SocketAddress, ...] | None = None
        self.sampled = 0
        self.frozen = False
        self.done = False
        self._hosts: list[_Sample] = []
        self._full: list[_Sample] = []
        self._seen: set[SocketAddress] = set()

    def add(self, seen_as: SocketAddress, node: SocketAddress) -> None:
        if node in self._seen:
            return
        self._seen.add(node)
        _add_sample(self._hosts, seen_as.host, 0)
        _add_sample(self._full, seen_as.host, seen_as.port)
        self.sampled += 1
        if (self.sampled >= 3 or not self.firewalled) and not self.frozen:
            self._update()
        if self.firewall in (Firewall.CONSISTENT, Firewall.OPEN) \
                or self.sampled >= self.min_samples:
            self.done = True

    def give_up(self) -> None:
        """No more samples will come (Node's ``destroy``/exhausted retries)."""
        self.done = True

    def freeze(self) -> None:
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        self._update()

    def _update(self) -> None:
        self._update_firewall()
        self._update_addresses()

    def _update_firewall(self) -> None:
        if not self.firewalled:
            self.firewall = Firewall.OPEN
            return
        if self.sampled < 3:
            return
        top = self._full[0].hits
        if top >= 3:
            self.firewall = Firewall.CONSISTENT
        elif top == 1:
            self.firewall = Firewall.RANDOM
        elif len(self._hosts) == 1 and self.sampled > 3:
            self.firewall = Firewall.RANDOM  # one host, two of four ports disagree
        elif len(self._hosts) > 1 and self._full[1].hits > 1:
            self.firewall = Firewall.CONSISTENT  # a double hit on two different hosts
        elif self.sampled > 4:
            self.firewall = Firewall.RANDOM

    def _update_addresses(self) -> None:
        if self.firewall == Firewall.UNKNOWN:
            self.addresses = None
        elif self.firewall == Firewall.RANDOM:
            self.addresses = (SocketAddress(self._hosts[0].host, 0),)
        elif self.firewall == Firewall.CONSISTENT:
            out: list[SocketAddress] = []
            for s in self._full:
                if s.hits >= 2 or len(out) < 2:
                    out.append(SocketAddress(s.host, s.port))
            self.addresses = tuple(out)


def _add_sample(samples: list[_Sample], host: str, port: int) -> None:
    for found, s in enumerate(samples):
        if s.host != host or s.port != port:
            continue
        s.hits += 1
        i = found
        while i > 0 and samples[i - 1].hits < s.hits:  # keep sorted by hits, stable
            samples[i - 1], samples[i] = samples[i], samples[i - 1]
            i -= 1
        return
    samples.append(_Sample(host, port))


def coerce(firewall: int) -> int:
    """OPEN punches like CONSISTENT."""
    return Firewall.CONSISTENT if firewall == Firewall.OPEN else firewall


# -- the payload box --------------------------------------------------------------------------


class SecurePayload:
    """PEER_HOLEPUNCH payloads: ``nonce(24) ‖ secretbox(holepunchPayload)`` under the
    handshake's holepunch secret, and address tokens keyed by a local random secret."""

    def __init__(self, holepunch_secret: bytes, local_secret: bytes | None = None) -> None:
        if len(holepunch_secret) != 32:
            raise ValueError("holepunch secret must be 32 bytes")
        self._key = holepunch_secret
        self._local = local_secret if local_secret is not None else os.urandom(32)

    def encrypt(self, payload: HolepunchPayload, nonce: bytes | None = None) -> bytes:
        nonce = nonce if nonce is not None else os.urandom(24)
        plain = encode_holepunch_payload(payload)
        return nonce + sodium.crypto_secretbox(plain, nonce, self._key)

    def decrypt(self, data: bytes) -> HolepunchPayload | None:
        """The payload, or None when it is not ours (wrong key, forged, malformed)."""
        if len(data) <= 24 + 16:
            return None
        try:
            plain = sodium.crypto_secretbox_open(data[24:], data[:24], self._key)
            return decode_holepunch_payload(plain)
        except (nacl.exceptions.CryptoError, RemoteProtocolError):
            return None

    def token(self, addr: SocketAddress) -> bytes:
        return keyed_hash(addr.host.encode(), self._local)


# -- the remote's state and the strategies -----------------------------------------------------


@dataclass(frozen=True)
class RemoteAddress:
    address: SocketAddress
    verified: bool


@dataclass
class RemoteState:
    """What the other side told us in its last round (``Holepuncher.updateRemote``)."""

    firewall: int = Firewall.UNKNOWN
    addresses: tuple[RemoteAddress, ...] = ()
    punching: bool = False

    def update(self, payload: HolepunchPayload, verified_host: str | None) -> None:
        out = []
        for a in payload.addresses or ():
            ok = a.host == verified_host or any(r.verified and r.address.host == a.host
                                                for r in self.addresses)
            out.append(RemoteAddress(a, ok))
        self.firewall = payload.firewall
        self.addresses = tuple(out)
        self.punching = payload.punching

    def verified(self) -> SocketAddress | None:
        return next((r.address for r in self.addresses if r.verified), None)


class Strategy(Enum):
    CONSISTENT = "consistent"  # both consistent: probe each other's addresses
    RANDOM_PROBES = "random-probes"  # we are consistent, they are random: spray ports
    BIRTHDAY = "birthday"  # we are random, they are consistent: open many sockets


def punch_strategy(local: int, remote: RemoteState) -> tuple[Strategy, SocketAddress | None] | None:
    """Which punch fits (``Holepuncher._punch``); None when none does."""
    if not remote.addresses:
        return None
    lo, re = coerce(local), coerce(remote.firewall)
    if lo == Firewall.CONSISTENT and re == Firewall.CONSISTENT:
        return Strategy.CONSISTENT, None
    target = remote.verified()
    if target is None:
        return None
    if lo == Firewall.CONSISTENT and re >= Firewall.RANDOM:
        return Strategy.RANDOM_PROBES, target
    if lo >= Firewall.RANDOM and re == Firewall.CONSISTENT:
        return Strategy.BIRTHDAY, target
    return None


@dataclass(frozen=True)
class Probe:
    """Send a 1-byte ``0x00`` from puncher socket ``socket`` (0: the first) to ``address``."""

    address: SocketAddress
    socket: int = 0
    low_ttl: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class OpenSocket:
    """Open one more puncher socket (it gets the next index)."""


Action = Probe | Wait | OpenSocket


def punch_plan(strategy: Strategy, remote: RemoteState, target: SocketAddress | None, *,
               is_initiator: bool, rng: random.Random | None = None) -> Iterator[Action]:
    """The probes of one punch, in order; the shell stops iterating once a probe got through."""
    rng = rng or random.Random()
    if strategy == Strategy.CONSISTENT:
        if not is_initiator:
            yield Wait(1.0)  # the server's "fast open" ping just went out
        for tries in range(1, CONSISTENT_PROBES + 1):
            for r in remote.addresses:
                if r.verified or tries & 3 == 0:  # unverified addresses every 4th round
                    yield Probe(r.address)
            yield Wait(1.0)
        return
    assert target is not None
    if strategy == Strategy.RANDOM_PROBES:
        for _ in range(RANDOM_PROBES):
            yield Probe(SocketAddress(target.host, rng.randrange(1000, 65536)))
            yield Wait(RANDOM_PROBE_INTERVAL)
        return
    # birthday: open sockets, each opening a low-TTL session to the target, then keep them
    # all alive round robin (the first round still low-TTL)
    for i in range(1, BIRTHDAY_SOCKETS):
        yield OpenSocket()
        yield Probe(target, i, low_ttl=True)
    yield Wait(0.1)
    for n in range(RANDOM_PROBES):
        yield Probe(target, n % BIRTHDAY_SOCKETS, low_ttl=n < BIRTHDAY_SOCKETS)
        yield Wait(RANDOM_PROBE_INTERVAL)


class RandomPunchLimiter:
    """Node's limit on punches involving a random NAT: one at a time, 20 s apart."""

    def __init__(self, *, limit: int = RANDOM_PUNCH_LIMIT,
                 interval: float = RANDOM_PUNCH_INTERVAL) -> None:
        self.limit = limit
        self.interval = interval
        self.active = 0
        self.last: float | None = None

    def allowed(self, now: float) -> bool:
        return self.active < self.limit and (self.last is None or now - self.last >= self.interval)

    def start(self) -> None:
        self.active += 1

    def finish(self, now: float) -> None:
        self.active = max(0, self.active - 1)
        self.last = now


# -- the client's rounds ----------------------------------------------------------------------


def probe_payload(round_: int, nat: NatSampler,
                  remote_address: SocketAddress | None) -> HolepunchPayload:
    """Round one (``probeRound``): our NAT so far and where we opened a session to."""
    return HolepunchPayload(error=Error.NONE, firewall=nat.firewall, round=round_,
                            addresses=nat.addresses, remote_address=remote_address)


def punch_payload(round_: int, nat: NatSampler, *, token: bytes | None,
                  remote_token: bytes | None, punching: bool = True) -> HolepunchPayload:
    """Round two (``roundPunch``): we commit to punching and echo the server's token."""
    return HolepunchPayload(error=Error.NONE, firewall=nat.firewall, round=round_,
                            punching=punching, addresses=nat.addresses, token=token,
                            remote_token=remote_token)


def abort_payload(round_: int, error: int = Error.ABORTED) -> HolepunchPayload:
    return HolepunchPayload(error=error, firewall=Firewall.UNKNOWN, round=round_)


class ProbeVerdict(Enum):
    RETRY = "retry"  # ask again (the remote did not know its NAT yet, or gave no token)
    PUNCH = "punch"


def after_probe(remote: RemoteState, nat: NatSampler, token: bytes | None, *,
                retry: bool) -> ProbeVerdict:
    """What ``probeRound`` does with the server's answer; raises :class:`HolepunchFailed` when
    punching cannot work (the client then sends an abort round)."""
    if (remote.firewall == Firewall.UNKNOWN or token is None) and retry:
        return ProbeVerdict.RETRY
    if Firewall.UNKNOWN in (remote.firewall, nat.firewall):
        raise HolepunchFailed("HOLEPUNCH_PROBE_TIMEOUT",
                              f"NAT types unknown (ours {firewall_name(nat.firewall)}, "
                              f"theirs {firewall_name(remote.firewall)})")
    if remote.firewall >= Firewall.RANDOM and nat.firewall >= Firewall.RANDOM:
        raise HolepunchFailed("HOLEPUNCH_DOUBLE_RANDOMIZED_NATS",
                              "both peers are behind randomizing NATs: a relay is needed")
    return ProbeVerdict.PUNCH


def check_reply(payload: HolepunchPayload | None, *, try_later_ok: bool) -> HolepunchPayload:
    """Decrypted server answer of a round (``updateHolepunch``)."""
    if payload is None:
        raise HolepunchFailed("HOLEPUNCH_INVALID", "the server's holepunch payload is not ours")
    if payload.error == Error.TRY_LATER and try_later_ok:
        return payload
    if payload.error == Error.TRY_LATER:
        raise HolepunchFailed("TRY_LATER", "the server is punching for someone else; "
                                           "try later or relay")
    if payload.error != Error.NONE:
        raise HolepunchFailed("REMOTE_ABORTED", f"the server aborted with error {payload.error}")
    return payload


def is_random_punch(local: int, remote: int) -> bool:
    return local >= Firewall.RANDOM or remote >= Firewall.RANDOM


# -- the server's answers ---------------------------------------------------------------------


@dataclass
class ServerPunch:
    """A server's holepunch state for one handshake (an entry of ``server._holepunches``)."""

    payload: SecurePayload
    nat: NatSampler
    remote: RemoteState = field(default_factory=RemoteState)
    round: int = 0
    punching: bool = False
    aborted: bool = False

    def abort(self, error: int = Error.ABORTED) -> bytes:
        self.aborted = True
        return self.payload.encrypt(abort_payload(self.round, error))

    def receive(self, data: bytes, peer_address: SocketAddress,
                from_server_relay: bool) -> HolepunchPayload | None:
        """Decrypt a round and update what we know of the client (None: not ours, ignore)."""
        msg = self.payload.decrypt(data)
        if msg is None:
            return None
        if msg.error != Error.NONE:
            self.round = max(self.round, msg.round)
            return msg
        token = self.payload.token(peer_address)
        echoed = from_server_relay and msg.remote_token is not None and msg.remote_token == token
        if msg.round >= self.round:
            self.round = msg.round
            self.remote.update(msg, peer_address.host if echoed else None)
        return msg

    def fast_open(self, msg: HolepunchPayload) -> bool:
        """Ping the client at once: we are consistent and it opened a session to us."""
        return (coerce(self.nat.firewall) == Firewall.CONSISTENT and msg.remote_address is not None
                and self.nat.addresses is not None and msg.remote_address in self.nat.addresses)

    def decide(self, msg: HolepunchPayload, peer_address: SocketAddress,
               from_server_relay: bool, limiter: RandomPunchLimiter,
               now: float) -> ServerAnswer:
        """The answer to a round :meth:`receive` accepted (``server.js`` ``_onpeerholepunch``):
        abort when the client aborted, our NAT is unknown, or both NATs are random and the
        client is not punching; probe the client at once when we can (fast open); start
        punching when the client punches (TRY_LATER while a random punch is rate limited)."""
        nat = self.nat.firewall
        if msg.error != Error.NONE or nat == Firewall.UNKNOWN or (
                not self.remote.punching and coerce(nat) >= Firewall.RANDOM
                and self.remote.firewall >= Firewall.RANDOM):
            return ServerAnswer(self.abort())
        fast = peer_address if self.fast_open(msg) else None
        if self.remote.punching and not self.punching:
            chosen = punch_strategy(nat, self.remote)
            random_punch = is_random_punch(nat, self.remote.firewall)
            if chosen is None:
                return ServerAnswer(self.abort(), fast)
            if random_punch and not limiter.allowed(now):
                return ServerAnswer(self.abort(Error.TRY_LATER), fast)  # no relay to offer
            self.punching = True
            return ServerAnswer(self.answer(msg, peer_address, from_server_relay), fast,
                                chosen, random_punch)
        return ServerAnswer(self.answer(msg, peer_address, from_server_relay), fast)

    def answer(self, msg: HolepunchPayload, peer_address: SocketAddress,
               from_server_relay: bool, *, error: int = Error.NONE) -> bytes:
        if self.nat.firewall != Firewall.UNKNOWN:
            self.nat.freeze()  # what we tell the client must not change under it
        token = self.payload.token(peer_address) if from_server_relay else None
        return self.payload.encrypt(HolepunchPayload(
            error=error, firewall=self.nat.firewall, round=self.round, connected=False,
            punching=self.punching, addresses=self.nat.addresses, token=token,
            remote_token=msg.token))


@dataclass(frozen=True)
class ServerAnswer:
    """What a server does with one round: send ``reply`` back through the relay, probe
    ``fast_open`` at once, and start ``punch`` (strategy, target) when set."""

    reply: bytes
    fast_open: SocketAddress | None = None
    punch: tuple[Strategy, SocketAddress | None] | None = None
    random_punch: bool = False


def with_round(payload: HolepunchPayload, round_: int) -> HolepunchPayload:
    return replace(payload, round=round_)


def first_public(addresses: Sequence[SocketAddress]) -> SocketAddress | None:
    return next((a for a in addresses if not is_bogon(a.host)), None)
