"""Iterative Kademlia query with commit, as dht-rpc's ``Query`` walks the DHT.

The walk keeps at most ``concurrency`` requests in flight, visiting pending nodes that are closer
than the current k-th best reply. Replies that carry a validated node id enter
``closest_replies`` (sorted by XOR distance, capped at k); every successful reply is streamed to
``on_reply``. When the walk ends, ``commit`` runs once per closest reply (the default re-sends the
command with that node's write token). A timeout sends DOWN_HINT to the nodes that referred us.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from p2p_transport.cenc import SocketAddress

from .messages import DOWN_HINT, Response, node_id
from .node import DhtError, DhtNode, RequestTimeout
from .routing import K, distance

__all__ = ["QueryError", "QueryReply", "QueryResult", "auto_commit", "query"]

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
class _Candidate:
    addr: SocketAddress
    id: bytes | None


async def query(node: DhtNode, target: bytes, command: int, *, internal: bool = False,
                value: bytes | None = None, commit: Commit | bool | None = None,
                nodes: Sequence[SocketAddress] | None = None,
                concurrency: int = DEFAULT_CONCURRENCY, retries: int = QUERY_RETRIES,
                on_reply: Callable[[QueryReply], None] | None = None, k: int = K) -> QueryResult:
    """Walk towards ``target`` sending ``command``; see the module docstring."""
    result = QueryResult()
    seen: dict[tuple[str, int], list[SocketAddress] | str] = {}
    pending: list[_Candidate] = []
    inflight = 0
    done = trio.Event()
    from_table = nodes is None

    def is_closer(cid: bytes | None) -> bool:
        if cid is None or len(result.closest_replies) < k:
            return True
        worst = result.closest_replies[-1].from_id
        assert worst is not None
        return distance(cid, target) < distance(worst, target)

    def add_pending(addr: SocketAddress, cid: bytes | None, ref: SocketAddress | None) -> bool:
        key = (addr.host, addr.port)
        refs = seen.get(key)
        closer = is_closer(cid)
        if refs == "done":
            return closer
        if refs == "down":
            if ref is not None:
                send_down_hint(ref, addr)
            return closer
        if isinstance(refs, list):
            if ref is not None:
                refs.append(ref)
            return closer
        if not closer:
            return False
        seen[key] = [] if ref is None else [ref]
        pending.append(_Candidate(addr, cid))
        return True

    def send_down_hint(to: SocketAddress, down: SocketAddress) -> None:
        node.start_request(to, DOWN_HINT, internal=True, value=node.encode_addr(down),
                           retries=DOWN_HINT_RETRIES)

    def add_from_table() -> None:
        nonlocal from_table
        from_table = True
        for n in node.table.closest(target, k - len(pending) if len(pending) < k else 0):
            add_pending(n.address, n.id, None)

    def push_closest(reply: QueryReply) -> None:
        assert reply.from_id is not None
        lst = result.closest_replies
        lst.append(reply)
        lst.sort(key=lambda r: distance(r.from_id or b"", target))
        del lst[k:]

    async def visit(cand: _Candidate) -> None:
        nonlocal inflight
        key = (cand.addr.host, cand.addr.port)
        try:
            p = node.start_request(cand.addr, command, internal=internal, target=target,
                                   value=value, retries=retries)
            res = await node.wait_response(p)
        except RequestTimeout:
            refs = seen.get(key)
            seen[key] = "down"
            if isinstance(refs, list):
                for ref in refs:
                    send_down_hint(ref, cand.addr)
            result.errors += 1
            inflight -= 1
            read_more()
            return
        inflight -= 1
        seen[key] = "done"
        raw_id = p.meta.get("from_id")
        from_id = raw_id if isinstance(raw_id, bytes) else None
        if res.error == 0:
            result.successes += 1
        else:
            result.errors += 1
        reply = QueryReply(res, p.from_addr or cand.addr, from_id)
        if res.error == 0 and from_id is not None and is_closer(from_id):
            push_closest(reply)
        for addr in res.closer_nodes:
            nid = node_id(addr)
            if nid == node.id:
                continue
            if not add_pending(addr, nid, reply.from_addr):
                break
        if res.error == 0:
            result.replies.append(reply)
            if on_reply is not None:
                on_reply(reply)
        read_more()

    def read_more() -> None:
        nonlocal inflight
        if done.is_set():
            return
        while inflight < concurrency and pending:
            nxt = pending.pop()
            if nxt.id is not None and not is_closer(nxt.id):
                continue
            inflight += 1
            nursery.start_soon(visit, nxt)
        if pending or inflight:
            return
        if not from_table and result.successes < k / 4:
            add_from_table()
            if pending:
                read_more()
                return
        done.set()

    if nodes is not None:
        for addr in reversed(list(nodes)):
            add_pending(addr, node_id(addr), None)
    else:
        add_from_table()
        if len(pending) < k:
            for addr in node.bootstrap_nodes:
                add_pending(addr, None, None)

    async with trio.open_nursery() as nursery:
        read_more()
        await done.wait()

    if commit is None or commit is False:
        if not result.replies and not result.closest_replies and result.errors:
            raise QueryError("no node responded to the query")
        return result
    commit_fn = auto_commit(node, target, command, internal, value) if commit is True else commit
    if not result.closest_replies:
        raise QueryError("Too few nodes responded")
    errors: list[BaseException] = []

    async def run_commit(reply: QueryReply) -> None:
        try:
            await commit_fn(reply)
        except (DhtError, ValueError) as exc:
            errors.append(exc)

    async with trio.open_nursery() as commits:
        for reply in result.closest_replies:
            commits.start_soon(run_commit, reply)
    if len(errors) == len(result.closest_replies):
        raise QueryError(f"every commit failed: {errors[-1]}") from errors[-1]
    return result
