"""The sans-IO request core of dht-rpc: transaction ids, retries, timeouts, send throttling and
write tokens. Time is always passed in (``now`` in seconds, any monotonic origin).

Theory of operation: :meth:`RequestIO.create` allocates a tid and queues a request;
:meth:`RequestIO.poll` returns the datagrams that may go out now (the congestion window caps
sends per 750 ms slot, as dht-rpc's ``CongestionWindow`` does), re-sends attempts whose timer
expired and reports requests that ran out of attempts. Responses are matched by tid only, as in
dht-rpc; the caller decides what to do with the :class:`PendingRequest` it gets back.
"""

from __future__ import annotations

import hashlib
import os
import secrets as _secrets
from collections import deque
from dataclasses import dataclass, field

from p2p_transport.cenc import SocketAddress

from .messages import Request, Response, encode_request

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "DRAIN_INTERVAL",
    "PendingRequest",
    "RequestIO",
    "TokenSecrets",
]

DEFAULT_TIMEOUT = 1.0  # seconds per attempt (dht-rpc's fixed 1000 ms)
DEFAULT_RETRIES = 3  # re-sends after the first attempt
DRAIN_INTERVAL = 0.75  # one congestion slot; tokens rotate every 10 slots
MAX_WINDOW = 80  # sends per slot; twice that over the 4 slots in flight
TOKEN_ROTATE_SLOTS = 10
MAX_INFLIGHT = 65536  # one per tid; a full table means the caller is flooding


@dataclass(eq=False, slots=True)
class PendingRequest:
    """One outstanding request. ``sent`` counts transmissions so far."""

    request: Request
    to: SocketAddress
    retries: int
    timeout: float
    datagram: bytes
    sent: int = 0
    deadline: float | None = None
    queued: bool = False
    done: bool = False
    response: Response | None = None
    from_addr: SocketAddress | None = None
    meta: dict[str, object] = field(default_factory=dict)


class TokenSecrets:
    """Two rotating secrets; a token is BLAKE2b-256 keyed by a secret over the requester's host.

    Replies hand out tokens under the newer secret; incoming tokens are accepted under either.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        raw = seed if seed is not None else os.urandom(64)
        if len(raw) != 64:
            raise ValueError("seed must be 64 bytes")
        self._secrets = [raw[:32], raw[32:]]

    def token(self, host: str, index: int = 1) -> bytes:
        return hashlib.blake2b(host.encode(), digest_size=32, key=self._secrets[index]).digest()

    def verify(self, host: str, token: bytes) -> bool:
        return _secrets.compare_digest(token, self.token(host, 1)) or _secrets.compare_digest(
            token, self.token(host, 0)
        )

    def rotate(self) -> None:
        old = self._secrets[0]
        self._secrets = [self._secrets[1], hashlib.blake2b(old, digest_size=32).digest()]


class _CongestionWindow:
    def __init__(self, max_window: int) -> None:
        self._i = 0
        self._total = 0
        self._window = [0, 0, 0, 0]
        self._max = max_window

    def is_full(self) -> bool:
        return self._total >= 2 * self._max or self._window[self._i] >= self._max

    def send(self) -> None:
        self._total += 1
        self._window[self._i] += 1

    def recv(self) -> None:
        if self._window[self._i] > 0:
            self._window[self._i] -= 1
            self._total -= 1

    def drain(self) -> None:
        self._i = (self._i + 1) & 3
        self._total -= self._window[self._i]
        self._window[self._i] = 0


class RequestIO:
    """Outstanding requests of one node. Never touches a socket or a clock."""

    def __init__(self, *, tid_seed: int | None = None, token_seed: bytes | None = None,
                 max_window: int = MAX_WINDOW) -> None:
        self._tid = (tid_seed if tid_seed is not None else int.from_bytes(os.urandom(2))) & 0xFFFF
        self._inflight: dict[int, PendingRequest] = {}
        self._queue: deque[PendingRequest] = deque()
        self._congestion = _CongestionWindow(max_window)
        self._next_drain: float | None = None
        self._drains = 0
        self.tokens = TokenSecrets(token_seed)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def create(self, to: SocketAddress, command: int, *, internal: bool = False,
               target: bytes | None = None, value: bytes | None = None,
               token: bytes | None = None, node_id: bytes | None = None,
               retries: int = DEFAULT_RETRIES, timeout: float = DEFAULT_TIMEOUT) -> PendingRequest:
        """Allocate a tid and queue the request; :meth:`poll` sends it."""
        if len(self._inflight) >= MAX_INFLIGHT:
            raise RuntimeError("too many dht-rpc requests in flight")
        while self._tid in self._inflight:
            self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        self._tid = (self._tid + 1) & 0xFFFF
        req = Request(tid, to, command, internal, node_id, token, target, value)
        pending = PendingRequest(req, to, retries, timeout, encode_request(req))
        self._inflight[tid] = pending
        pending.queued = True
        self._queue.append(pending)
        return pending

    def cancel(self, pending: PendingRequest) -> None:
        if pending.done:
            return
        pending.done = True
        if self._inflight.get(pending.request.tid) is pending:
            del self._inflight[pending.request.tid]
            if pending.sent:
                self._congestion.recv()

    def handle_response(self, res: Response, from_addr: SocketAddress) -> PendingRequest | None:
        """Match a response by tid. Returns the finished request, or None if unknown."""
        pending = self._inflight.pop(res.tid, None)
        if pending is None:
            return None
        pending.done = True
        pending.response = res
        pending.from_addr = from_addr
        self._congestion.recv()
        return pending

    def poll(self, now: float) -> tuple[list[tuple[bytes, SocketAddress]], list[PendingRequest]]:
        """Advance to ``now``: returns (datagrams to send, requests that timed out for good)."""
        sends, failed = self.poll_requests(now)
        return [(p.datagram, p.to) for p in sends], failed

    def poll_requests(self, now: float) -> tuple[list[PendingRequest], list[PendingRequest]]:
        """:meth:`poll`, naming the requests whose datagram goes out now."""
        if self._next_drain is None:
            self._next_drain = now + DRAIN_INTERVAL
        while now >= self._next_drain:
            self._next_drain += DRAIN_INTERVAL
            self._congestion.drain()
            self._drains += 1
            if self._drains % TOKEN_ROTATE_SLOTS == 0:
                self.tokens.rotate()
        failed: list[PendingRequest] = []
        for pending in list(self._inflight.values()):
            if pending.deadline is not None and now >= pending.deadline:
                pending.deadline = None
                if pending.sent > pending.retries:
                    self.cancel(pending)
                    failed.append(pending)
                else:
                    pending.queued = True
                    self._queue.append(pending)
        out: list[PendingRequest] = []
        while self._queue and not self._congestion.is_full():
            pending = self._queue.popleft()
            pending.queued = False
            if pending.done:
                continue
            pending.sent += 1
            pending.deadline = now + pending.timeout
            self._congestion.send()
            out.append(pending)
        return out, failed

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work (a timeout, or a drain while sends are queued)."""
        deadlines = [p.deadline for p in self._inflight.values() if p.deadline is not None]
        if self._next_drain is not None:
            deadlines.append(self._next_drain)
        return min(deadlines) if deadlines else None
