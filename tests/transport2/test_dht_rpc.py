"""dht-rpc: codec against bytes from the Node package, fuzzing, routing table, request core and
a many-node DHT on an in-memory lossy network driven by a mock clock."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from transport2_helpers import MemoryNetwork

from p2p_transport.cenc import SocketAddress
from p2p_transport.dht_rpc import (
    DELAYED_PING,
    DOWN_HINT,
    FIND_NODE,
    INVALID_TOKEN,
    PING,
    PING_NAT,
    UNKNOWN_COMMAND,
    DhtNode,
    DhtRpcProtocolError,
    IncomingRequest,
    Node,
    QueryError,
    Request,
    RequestIO,
    RequestTimeout,
    Response,
    RoutingTable,
    TokenSecrets,
    decode_message,
    distance,
    encode_request,
    encode_response,
    node_id,
    query,
)

VECTORS = Path(__file__).parent / "vectors" / "dht_rpc.jsonl"


def _addr(d: dict) -> SocketAddress:
    return SocketAddress(d["host"], d["port"])


def _b(h: str | None) -> bytes | None:
    return None if h is None else bytes.fromhex(h)


def _vectors() -> list[dict]:
    return [json.loads(line) for line in VECTORS.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("vec", [v for v in _vectors() if v["kind"] == "request"],
                         ids=lambda v: v["name"])
def test_request_matches_node_bytes(vec: dict) -> None:
    req = Request(vec["tid"], _addr(vec["to"]), vec["command"], vec["internal"],
                  _b(vec.get("id")), _b(vec["token"]), _b(vec["target"]), _b(vec["value"]))
    assert encode_request(req).hex() == vec["hex"]
    assert decode_message(bytes.fromhex(vec["hex"])) == req


@pytest.mark.parametrize("vec", [v for v in _vectors() if v["kind"] == "response"],
                         ids=lambda v: v["name"])
def test_response_matches_node_bytes(vec: dict) -> None:
    res = Response(vec["tid"], _addr(vec["to"]), _b(vec["id"]), _b(vec["token"]),
                   tuple(_addr(c) for c in vec["closer"]), vec["error"], _b(vec["value"]))
    assert encode_response(res).hex() == vec["hex"]
    assert decode_message(bytes.fromhex(vec["hex"])) == res


def test_node_id_matches_node() -> None:
    (vec,) = [v for v in _vectors() if v["kind"] == "node_id"]
    assert node_id(SocketAddress(vec["host"], vec["port"])).hex() == vec["hex"]


def test_non_dht_datagrams_are_refused() -> None:
    for data in (b"", b"\x03", b"\x00", b"\xff\x01" + bytes(18)):
        with pytest.raises(DhtRpcProtocolError):
            decode_message(data)


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_decoder_fuzz(data: bytes) -> None:
    for blob in (data, b"\x03" + data, b"\x13" + data):
        for end in range(len(blob) + 1):
            with contextlib.suppress(DhtRpcProtocolError):
                decode_message(blob[:end])


addrs = st.builds(SocketAddress, st.tuples(*[st.integers(0, 255)] * 4).map(
    lambda t: ".".join(map(str, t))), st.integers(0, 65535))
b32 = st.binary(min_size=32, max_size=32)


@given(st.builds(Request, st.integers(0, 65535), addrs, st.integers(0, 2**40), st.booleans(),
                 st.none() | b32, st.none() | b32, st.none() | b32,
                 st.none() | st.binary(max_size=300)))
def test_request_round_trip(req: Request) -> None:
    assert decode_message(encode_request(req)) == req


@given(st.builds(Response, st.integers(0, 65535), addrs, st.none() | b32, st.none() | b32,
                 st.lists(addrs, max_size=20).map(tuple), st.integers(0, 2**20),
                 st.none() | st.binary(max_size=300)))
def test_response_round_trip(res: Response) -> None:
    assert decode_message(encode_response(res)) == res


def test_routing_table_rows_and_closest() -> None:
    rng = random.Random(1)
    table = RoutingTable(bytes(32), k=4)
    ids = [rng.randbytes(32) for _ in range(200)]
    added = [i for i in ids if table.add(Node(i, SocketAddress("10.0.0.1", 1)))]
    assert len(table) == len(added) < len(ids)  # rows near the top fill up and refuse
    assert table.get(added[0]) is not None
    target = rng.randbytes(32)
    closest = table.closest(target)
    assert len(closest) == 4
    # the row of the target (or nearer rows) is searched first: nothing skipped is closer
    best = min(added, key=lambda i: distance(i, target))
    assert best in [n.id for n in table.closest(target, 40)]
    assert table.remove(added[0])
    assert not table.remove(added[0])
    assert table.get(added[0]) is None


def test_request_io_retries_then_fails() -> None:
    io = RequestIO(tid_seed=65535)
    to = SocketAddress("127.0.0.1", 1)
    p = io.create(to, PING, internal=True, retries=2, timeout=1.0)
    assert p.request.tid == 65535
    assert io.create(to, PING).request.tid == 0  # wraps
    sends = 0
    failed: list = []
    now = 0.0
    while not failed and now < 10:
        out, failed = io.poll(now)
        sends += sum(1 for d, _ in out if d == p.datagram)
        now += 0.25
    assert sends == 3
    assert failed == [p]
    assert 3.0 <= now <= 3.5


def test_request_io_matches_by_tid() -> None:
    io = RequestIO(tid_seed=7)
    to = SocketAddress("127.0.0.1", 1)
    p = io.create(to, PING)
    io.poll(0.0)
    assert io.handle_response(Response(8, to), to) is None
    got = io.handle_response(Response(7, to), SocketAddress("127.0.0.9", 9))
    assert got is p and p.done and io.inflight == 0


def test_congestion_window_throttles() -> None:
    io = RequestIO(max_window=5)
    to = SocketAddress("127.0.0.1", 1)
    for _ in range(20):
        io.create(to, PING)
    out, _ = io.poll(0.0)
    assert len(out) == 5
    out, _ = io.poll(0.8)  # next slot
    assert len(out) == 5
    out, _ = io.poll(0.81)
    assert out == []  # 2 x window in flight


def test_tokens_rotate_and_stay_valid_for_one_rotation() -> None:
    t = TokenSecrets(bytes(range(64)))
    tok = t.token("1.2.3.4")
    assert t.verify("1.2.3.4", tok)
    assert not t.verify("1.2.3.5", tok)
    t.rotate()
    assert t.verify("1.2.3.4", tok)
    t.rotate()
    assert not t.verify("1.2.3.4", tok)


async def _start_node(nursery: trio.Nursery, net: MemoryNetwork, host: str, port: int, *,
                      bootstrap: tuple[SocketAddress, ...] | list[SocketAddress] = (),
                      ephemeral: bool = True, seed: int = 0,
                      on_request: Callable[[IncomingRequest], bool] | None = None) -> DhtNode:
    ep = net.endpoint(host, port)
    node = DhtNode(ep, bootstrap=bootstrap, ephemeral=ephemeral, seed=seed,
                   on_request=on_request)
    ep.handler = node.datagram_received
    await nursery.start(node.run)
    return node


def test_dht_walk_finds_true_closest_under_loss() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=3, loss=0.05, duplicate=0.05)
            boot = await _start_node(nursery, net, "10.0.0.1", 49737, seed=1)
            nodes = []
            for i in range(30):
                n = await _start_node(nursery, net, f"10.0.1.{i + 1}", 5000, ephemeral=False,
                                      bootstrap=[boot.transport.local_address], seed=100 + i)
                await query(n, n.id, FIND_NODE, internal=True)
                nodes.append(n)
            client = await _start_node(nursery, net, "10.0.9.9", 7000,
                                       bootstrap=[boot.transport.local_address], seed=9)
            target = random.Random(5).randbytes(32)
            res = await query(client, target, FIND_NODE, internal=True)
            expect = sorted((n.id for n in nodes), key=lambda i: distance(i, target))[:20]
            assert [r.from_id for r in res.closest_replies] == expect
            # the bootstrap node learned the persistent nodes from their requests
            assert len(boot.table) == 30
            assert client.remote_address == SocketAddress("10.0.9.9", 7000)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_internal_commands_and_tokens() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=1)
            stored: list[bytes] = []

            def on_request(req: IncomingRequest) -> bool:
                if req.command == 77:
                    if req.token is not None:
                        stored.append(req.value or b"")
                    req.reply(b"ok")
                    return True
                return False

            server = await _start_node(nursery, net, "10.0.0.1", 1000, on_request=on_request)
            client = await _start_node(nursery, net, "10.0.0.2", 2000)
            peer_ep = net.endpoint("10.0.0.2", 2001)
            s_addr = server.transport.local_address

            res = await client.ping(s_addr)
            assert (res.error, res.token, res.closer_nodes, res.to) == (
                0, None, (), client.transport.local_address)

            res = await client.request(s_addr, 77, target=bytes(32), value=b"x")
            assert res.value == b"ok" and res.token is not None
            res = await client.request(s_addr, 77, target=bytes(32), value=b"stored",
                                       token=res.token)
            assert res.error == 0 and stored == [b"stored"]
            res = await client.request(s_addr, 77, value=b"bad", token=bytes(32))
            assert res.error == INVALID_TOKEN and res.token is not None
            res = await client.request(s_addr, 99)
            assert res.error == UNKNOWN_COMMAND
            res = await client.request(s_addr, 99, internal=True)
            assert res.error == UNKNOWN_COMMAND

            # PING_NAT answers to the port named in the value
            p = client.start_request(s_addr, PING_NAT, internal=True, value=b"\xd1\x07",
                                     retries=0)
            with pytest.raises(RequestTimeout):
                await client.wait_response(p)
            assert any(src == s_addr for _, src in peer_ep.received)

            res = await client.request(s_addr, DOWN_HINT, internal=True,
                                       value=client.encode_addr(peer_ep.addr))
            assert res.error == 0
            with pytest.raises(RequestTimeout):
                await client.request(SocketAddress("10.9.9.9", 1), PING, internal=True)

            # DELAYED_PING answers after the delay (up to 10 s), never beyond
            start = trio.current_time()
            res = await client.request(s_addr, DELAYED_PING, internal=True,
                                       value=(2500).to_bytes(4, "little"), attempt_timeout=5)
            assert res.error == 0 and 2.5 <= trio.current_time() - start < 3
            with pytest.raises(RequestTimeout):
                await client.request(s_addr, DELAYED_PING, internal=True,
                                     value=(10_001).to_bytes(4, "little"), retries=0,
                                     attempt_timeout=12)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_query_with_commit_and_no_nodes() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=2)
            commits: list[bytes] = []

            def on_request(req: IncomingRequest) -> bool:
                if req.command == 5:
                    if req.token is not None:
                        commits.append(req.value or b"")
                    req.reply(None)
                    return True
                return False

            boot = await _start_node(nursery, net, "10.0.0.1", 1)
            for i in range(5):
                n = await _start_node(nursery, net, f"10.0.2.{i}", 1, ephemeral=False,
                                      bootstrap=[boot.transport.local_address],
                                      on_request=on_request, seed=i)
                await query(n, n.id, FIND_NODE, internal=True)
            client = await _start_node(nursery, net, "10.0.0.3", 3,
                                       bootstrap=[boot.transport.local_address])
            res = await query(client, bytes(32), 5, value=b"v", commit=True)
            assert len(res.closest_replies) == 5 and commits == [b"v"] * 5

            lonely = await _start_node(nursery, net, "10.0.0.4", 4,
                                       bootstrap=[SocketAddress("10.8.8.8", 1)])
            with pytest.raises(QueryError):
                await query(lonely, bytes(32), 5, commit=True)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_full_row_swaps_out_a_dead_node() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=4)
            hub = await _start_node(nursery, net, "10.0.0.1", 1)
            hub.table.k = 1  # one node per row makes the row full at once
            row = hub.table.row_of
            addrs = [SocketAddress(f"10.0.3.{i}", 1) for i in range(1, 200)]
            first = addrs[0]
            second = next(a for a in addrs[1:] if row(node_id(a)) is row(node_id(first)))
            a = await _start_node(nursery, net, first.host, first.port, ephemeral=False)
            await a.ping(hub.transport.local_address)
            assert hub.table.get(node_id(first)) is not None
            del net.endpoints[first]  # a goes away silently
            b = await _start_node(nursery, net, second.host, second.port, ephemeral=False)
            await b.ping(hub.transport.local_address)
            assert hub.table.get(node_id(second)) is None  # row full: b waits for the check
            await trio.sleep(10)  # virtual time: the PING to a times out after 4 attempts
            assert hub.table.get(node_id(second)) is not None
            assert hub.table.get(node_id(first)) is None
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_requests_and_replies_through_a_second_socket() -> None:
    """A holepunch socket: a request sent ``via`` it leaves from it, its reply comes back to it
    and does not count as a sample of the node's own address; a request that arrives on it
    is answered from it."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=2)

            def on_request(req: IncomingRequest) -> bool:
                req.reply(b"seen", token=False, closer_nodes=False)
                return True

            server = await _start_node(nursery, net, "10.0.0.1", 1000, on_request=on_request)
            client = await _start_node(nursery, net, "10.0.0.2", 2000)
            side = net.endpoint("10.0.0.2", 2001)
            side.handler = lambda data, addr: client.datagram_received(data, addr, via=side)
            res = await client.request(server.transport.local_address, 77, via=side)
            assert res.to == side.local_address and res.value == b"seen"
            assert client.remote_address is None  # not a sample of our own socket
            assert all(src == side.local_address for src, dst, _ in net.log
                       if dst == server.transport.local_address)
            # a request arriving on the side socket is answered from it
            await server.request(side.local_address, 78)
            assert net.log[-1][0] == side.local_address
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("reachable", [True, False])
def test_firewall_check_clears_firewalled_only_when_others_reach_the_probe(
        reachable: bool) -> None:
    """dht-rpc's ``_checkIfFirewalled``: five nodes answer a PING_NAT on a probe port that has
    sent nothing; behind a firewall (the probe drops what it did not ask for) the node stays
    firewalled."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork(nursery, seed=4)
            boot = await _start_node(nursery, net, "10.0.0.1", 49737, seed=1)
            for i in range(6):
                n = await _start_node(nursery, net, f"10.0.1.{i + 1}", 5000, ephemeral=False,
                                      bootstrap=[boot.transport.local_address], seed=200 + i)
                assert not n.firewalled  # persistent: reachable by contract
                await query(n, n.id, FIND_NODE, internal=True)
            client = await _start_node(nursery, net, "10.0.9.9", 7000,
                                       bootstrap=[boot.transport.local_address], seed=9)
            assert client.firewalled
            await query(client, client.id, FIND_NODE, internal=True)
            probe = net.endpoint("10.0.9.9", 7001)
            if reachable:
                probe.handler = client.probe_datagram_received
            assert await client.check_firewall(7001) is not reachable
            assert client.firewalled is not reachable
            # five nodes asked, each answered to the probe port (and nothing else was sent there)
            pings = [src for src, dst, _ in net.log if dst == probe.addr]
            assert len(pings) == (5 if reachable else 10)  # unanswered: one retry each
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
