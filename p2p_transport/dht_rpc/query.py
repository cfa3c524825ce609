"""Iterative Kademlia query with commit, as dht-rpc's ``Query`` walks the DHT.

The walk keeps at most ``concurrency`` requests in flight, visiting pending nodes that are closer
than the current k-th best reply. Replies that carry a validated node id enter
``closest_replies`` (sorted by XOR distance, capped at k); every successful reply is streamed to
``on_reply``. When the walk ends, ``commit`` runs once per closest reply (the default re-sends the
command with that node's write token). A timeout sends DOWN_HINT to the nodes that referred us.

:class:`QueryWalk` is the walk as a sans-IO state machine: :meth:`~QueryWalk.next_requests` says
whom to ask now, :meth:`~QueryWalk.on_response` and :meth:`~QueryWalk.on_timeout` feed it the
outcomes, :attr:`~QueryWalk.down_hints` holds the DOWN_HINTs to send, and
:attr:`~QueryWalk.done` says when it is over. It keeps no clock: retries and timers belong to
the request layer (``RequestIO``), which reports a request that ran out of attempts as a
timeout. :func:`query` is its trio adapter (one task per request in flight) plus the commit.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from p2p_transport.cenc import SocketAddress

from .messages import DOWN_HINT, Response, node_id
from .node import DhtError, DhtNode, RequestTimeout
from .routing import K, distance

__all__ = [
    "Candidate",
    "QueryError",
    "QueryReply",
    "QueryResult",
    "QueryWalk",
    "auto_commit",
    "query",
]

DEFAULT_CONCURRENCY = 10
QUERY_RETRIES = 5
DOWN_HINT_RETRIES = 3


class QueryError(DhtError):
    """The query could not complete (no node answered, or every commit failed)."""


@dataclass(frozen=True, slots=True)
class QueryReply:
    """A successful reply of the walk: the response, who sent it and its validated id."""

    response: Response
    from_addr: SocketAddress
    from_id: bytes | None

    @property
    def token(self) -> bytes | None:
        return self.response.token

    @property
    def value(self) -> bytes | None:
        return self.response.value


@dataclass
class QueryResult:
    closest_replies: list[QueryReply] = field(default_factory=list)
    replies: list[QueryReply] = field(default_factory=list)
    successes: int = 0
    errors: int = 0

    @property
    def closest_nodes(self) -> list[SocketAddress]:
        return [r.from_addr for r in self.closest_replies]


Commit = Callable[[QueryReply], Awaitable[object]]


def auto_commit(node: DhtNode, target: bytes, command: int, internal: bool,
                value: bytes | None) -> Commit:
    """dht-rpc's ``commit: true``: repeat the command with the node's token."""

    async def commit(reply: QueryReply) -> None:
        if reply.token is None:
            raise QueryError("reply carried no token")
        res = await node.request(reply.from_addr, command, internal=internal, target=target,
                                 value=value, token=reply.token)
        if res.error:
            raise QueryError(f"commit refused with error {res.error}")

    return commit


@dataclass(eq=False)
class Candidate:
    """A node the walk may ask; ``id`` is None for a bootstrap node (not yet known)."""

    addr: SocketAddress
    id: bytes | None


#: The routing table's view for the walk: up to ``n`` of the closest known nodes (addr, id).
TableClosest = Callable[[int], Iterable[tuple[SocketAddress, bytes | None]]]


class QueryWalk:
    """The walk's state: pending candidates (a stack, as dht-rpc's), the closest replies,
    who referred whom, and the requests in flight (at most ``concurrency``).

    Seeded by ``nodes`` when given (asked in that order), else by the routing table's closest
    and, while fewer than ``k``, the bootstrap nodes. A walk that runs dry with fewer than
    ``k / 4`` successes and has not used the table yet tops up from it once."""

    def __init__(self, target: bytes, self_id: bytes | None, table_closest: TableClosest, *,
                 nodes: Sequence[SocketAddress] | None = None,
                 bootstrap: Sequence[SocketAddress] = (), k: int = K,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.target = target
        self.k = k
        self.concurrency = concurrency
        self.result = QueryResult()
        #: (to, down): tell ``to`` that ``down``, which it referred us to, did not answer.
        self.down_hints: list[tuple[SocketAddress, SocketAddress]] = []
        self.done = False
        self.inflight = 0
        self._self_id = self_id
        self._table_closest = table_closest
        # per node: the nodes that referred us to it while pending or in flight, or its end
        self._seen: dict[tuple[str, int], list[SocketAddress] | _Visited] = {}
        self._pending: list[Candidate] = []
        self._from_table = nodes is None
        if nodes is not None:
            for addr in reversed(list(nodes)):
                self._add(addr, node_id(addr), None)
        else:
            self._add_from_table()
            if len(self._pending) < k:
                for addr in bootstrap:
                    self._add(addr, None, None)

    @property
    def pending(self) -> list[Candidate]:
        """Candidates not asked yet; the last is asked first."""
        return list(self._pending)

    def next_requests(self) -> list[Candidate]:
        """The candidates to ask now (each is in flight until its response or timeout);
        sets :attr:`done` when nothing is pending or in flight."""
        out: list[Candidate] = []
        while not self.done:
            while self.inflight < self.concurrency and self._pending:
                nxt = self._pending.pop()
                if nxt.id is not None and not self._is_closer(nxt.id):
                    continue
                self.inflight += 1
                out.append(nxt)
            if self._pending or self.inflight:
                break
            if not self._from_table and self.result.successes < self.k / 4:
                self._add_from_table()
                if self._pending:
                    continue
            self.done = True
        return out

    def on_response(self, cand: Candidate, response: Response, from_addr: SocketAddress,
                    from_id: bytes | None) -> QueryReply | None:
        """``cand`` answered (from ``from_addr``, with the validated id ``from_id``); returns
        the reply when it is a success (error 0), for the caller's ``on_reply``."""
        self._end_flight(cand)
        self._seen[_key(cand.addr)] = _Visited.DONE
        res = response
        if res.error == 0:
            self.result.successes += 1
        else:
            self.result.errors += 1
        reply = QueryReply(res, from_addr, from_id)
        if res.error == 0 and from_id is not None and self._is_closer(from_id):
            self._push_closest(reply)
        for addr in res.closer_nodes:
            nid = node_id(addr)
            if nid == self._self_id:
                continue
            if not self._add(addr, nid, from_addr):
                break  # sorted by distance: the rest are farther still
        if res.error != 0:
            return None
        self.result.replies.append(reply)
        return reply

    def on_timeout(self, cand: Candidate) -> None:
        """``cand`` never answered: it is down; hint every node that referred us to it."""
        self._end_flight(cand)
        key = _key(cand.addr)
        refs = self._seen.get(key)
        self._seen[key] = _Visited.DOWN
        if isinstance(refs, list):
            self.down_hints.extend((ref, cand.addr) for ref in refs)
        self.result.errors += 1

    def take_down_hints(self) -> list[tuple[SocketAddress, SocketAddress]]:
        hints, self.down_hints = self.down_hints, []
        return hints

    def outcome(self, committing: bool) -> QueryResult:
        """The result of a finished walk; :class:`QueryError` when no node answered, or, for
        a walk to commit, when no reply made the closest (there is no one to commit to)."""
        if not self.done:
            raise ValueError("the walk is not over")
        res = self.result
        if committing and not res.closest_replies:
            raise QueryError("Too few nodes responded")
        if not committing and not res.replies and not res.closest_replies and res.errors:
            raise QueryError("no node responded to the query")
        return res

    def check_commits(self, errors: Sequence[BaseException]) -> None:
        """After one commit per closest reply: :class:`QueryError` if every one failed."""
        if errors and len(errors) == len(self.result.closest_replies):
            raise QueryError(f"every commit failed: {errors[-1]}") from errors[-1]

    # -- internals ------------------------------------------------------------------------

    def _end_flight(self, cand: Candidate) -> None:
        if self.inflight <= 0:
            raise ValueError(f"no request in flight to {cand.addr}")
        self.inflight -= 1

    def _is_closer(self, cid: bytes | None) -> bool:
        closest = self.result.closest_replies
        if cid is None or len(closest) < self.k:
            return True
        worst = closest[-1].from_id
        assert worst is not None
        return distance(cid, self.target) < distance(worst, self.target)

    def _add(self, addr: SocketAddress, cid: bytes | None, ref: SocketAddress | None) -> bool:
        """Make ``addr`` a candidate (referred by ``ref``); False when it is no closer than
        the k-th best reply (so farther nodes of the same list are not either)."""
        key = _key(addr)
        refs = self._seen.get(key)
        closer = self._is_closer(cid)
        if refs is _Visited.DONE:
            return closer
        if refs is _Visited.DOWN:
            if ref is not None:
                self.down_hints.append((ref, addr))
            return closer
        if isinstance(refs, list):
            if ref is not None:
                refs.append(ref)
            return closer
        if not closer:
            return False
        self._seen[key] = [] if ref is None else [ref]
        self._pending.append(Candidate(addr, cid))
        return True

    def _add_from_table(self) -> None:
        self._from_table = True
        n = self.k - len(self._pending) if len(self._pending) < self.k else 0
        for addr, nid in self._table_closest(n):
            self._add(addr, nid, None)

    def _push_closest(self, reply: QueryReply) -> None:
        closest = self.result.closest_replies
        closest.append(reply)
        closest.sort(key=lambda r: distance(r.from_id or b"", self.target))
        del closest[self.k:]


class _Visited(enum.Enum):
    DONE = "done"  # answered
    DOWN = "down"  # timed out


def _key(addr: SocketAddress) -> tuple[str, int]:
    return (addr.host, addr.port)


async def query(node: DhtNode, target: bytes, command: int, *, internal: bool = False,
                value: bytes | None = None, commit: Commit | bool | None = None,
                nodes: Sequence[SocketAddress] | None = None,
                concurrency: int = DEFAULT_CONCURRENCY, retries: int = QUERY_RETRIES,
                on_reply: Callable[[QueryReply], None] | None = None, k: int = K) -> QueryResult:
    """Walk towards ``target`` sending ``command``; see the module docstring."""

    def table_closest(n: int) -> list[tuple[SocketAddress, bytes | None]]:
        return [(c.address, c.id) for c in node.table.closest(target, n)]

    walk = QueryWalk(target, node.id, table_closest, nodes=nodes, bootstrap=node.bootstrap_nodes,
                     k=k, concurrency=concurrency)
    finished = trio.Event()

    def step() -> None:
        """Send the walk's hints, start what it asks for, and notice when it is over."""
        for to, down in walk.take_down_hints():
            node.start_request(to, DOWN_HINT, internal=True, value=node.encode_addr(down),
                               retries=DOWN_HINT_RETRIES)
        if finished.is_set():
            return
        for cand in walk.next_requests():
            nursery.start_soon(visit, cand)
        if walk.done:
            finished.set()

    async def visit(cand: Candidate) -> None:
        try:
            p = node.start_request(cand.addr, command, internal=internal, target=target,
                                   value=value, retries=retries)
            res = await node.wait_response(p)
        except RequestTimeout:
            walk.on_timeout(cand)
        else:
            raw_id = p.meta.get("from_id")
            reply = walk.on_response(cand, res, p.from_addr or cand.addr,
                                     raw_id if isinstance(raw_id, bytes) else None)
            if reply is not None and on_reply is not None:
                on_reply(reply)
        step()

    async with trio.open_nursery() as nursery:
        step()
        await finished.wait()

    result = walk.outcome(committing=commit is not None and commit is not False)
    if commit is None or commit is False:
        return result
    commit_fn = auto_commit(node, target, command, internal, value) if commit is True else commit
    errors: list[BaseException] = []

    async def run_commit(reply: QueryReply) -> None:
        try:
            await commit_fn(reply)
        except (DhtError, ValueError) as exc:
            errors.append(exc)

    async with trio.open_nursery() as commits:
        for reply in result.closest_replies:
            commits.start_soon(run_commit, reply)
    walk.check_commits(errors)
    return result
