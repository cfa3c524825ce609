"""Full punches of the sans-IO holepunch core through simulated NAT gateways, under trio's
MockClock: NAT classification from DHT pings, the probe and punch rounds in SecurePayload
boxes, then both sides' probe plans racing until a probe gets through. Mappings are seeded:
a consistent NAT keeps a socket's port for every destination, a random one picks a fresh port
per destination; both let in only answers from where a socket already sent (the lab's Linux
masquerade behaves the same)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from p2p_transport.cenc import SocketAddress as A
from p2p_transport.hyperdht import holepunch as hp
from p2p_transport.hyperdht.messages import Firewall

DHT_NODES = [A("100.64.0.2", 5000 + i) for i in range(4)]
LATENCY = 0.01


class NatBox:
    """A NAT gateway (test double): outbound mappings and the answers they let in."""

    def __init__(self, public_host: str, kind: str, rng: random.Random) -> None:
        self.host = public_host
        self.kind = kind
        self.rng = rng
        self.mappings: dict[tuple[int, A], int] = {}
        self.allowed: dict[tuple[int, A], int] = {}  # (public port, remote) -> inside port

    def outbound(self, inside_port: int, dest: A) -> A:
        key = (inside_port, dest)
        if key not in self.mappings:
            used = set(self.mappings.values())
            port = inside_port if self.kind == "consistent" else self.rng.randrange(1024, 65536)
            while self.kind == "random" and port in used:
                port = self.rng.randrange(1024, 65536)
            self.mappings[key] = port
        port = self.mappings[key]
        self.allowed[port, dest] = inside_port
        return A(self.host, port)

    def inbound(self, public_port: int, src: A) -> int | None:
        return self.allowed.get((public_port, src))


class Peer:
    """One side: its NAT, its puncher sockets (inside ports) and the core's state."""

    def __init__(self, net: Net, nat: NatBox, base_port: int) -> None:
        self.net = net
        self.nat = nat
        self.ports = [base_port]
        self.sampler = hp.NatSampler()
        self.received: list[tuple[int, A]] = []
        self.got_probe = trio.Event()
        self.echo = False

    def sample(self) -> None:
        for node in DHT_NODES:
            self.sampler.add(self.nat.outbound(self.ports[0], node), node)

    def send(self, socket: int, dest: A) -> None:
        self.net.send(self, self.ports[socket], dest)

    def deliver(self, inside_port: int, src: A) -> None:
        self.received.append((inside_port, src))
        self.got_probe.set()
        if self.echo:  # a server answers each probe
            self.send(self.ports.index(inside_port), src)

    async def run(self, plan: Iterator[hp.Action], done: trio.Event) -> None:
        for action in plan:
            if done.is_set():
                return
            if isinstance(action, hp.Wait):
                with trio.move_on_after(action.seconds):
                    await done.wait()
            elif isinstance(action, hp.OpenSocket):
                self.ports.append(self.ports[-1] + 1)
            else:
                self.send(action.socket, action.address)
                await trio.lowlevel.checkpoint()


class Net:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.peers: dict[str, Peer] = {}

    def send(self, peer: Peer, inside_port: int, dest: A) -> None:
        src = peer.nat.outbound(inside_port, dest)
        target = self.peers.get(dest.host)
        if target is None:
            return
        inside = target.nat.inbound(dest.port, src)
        if inside is not None:
            self.nursery.start_soon(self._later, target, inside, src)

    async def _later(self, target: Peer, inside: int, src: A) -> None:
        await trio.sleep(LATENCY)
        target.deliver(inside, src)


async def punch(server_kind: str, client_kind: str, seed: int) -> tuple[float, Peer, Peer]:
    """Run the rounds and the race; returns (seconds to the client's first probe, peers)."""
    rng = random.Random(seed)
    secret = rng.randbytes(32)
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        server = Peer(net, NatBox("100.64.0.3", server_kind, rng), 40000)
        client = Peer(net, NatBox("100.64.0.4", client_kind, rng), 50000)
        server.echo = True
        net.peers = {"100.64.0.3": server, "100.64.0.4": client}
        server.sample()
        client.sample()
        s_box, c_box = hp.SecurePayload(secret), hp.SecurePayload(secret)
        s_core = hp.ServerPunch(s_box, server.sampler)
        relay_seen_client = client.nat.outbound(client.ports[0], DHT_NODES[0])
        server_addr = server.nat.outbound(server.ports[0], DHT_NODES[0])
        # probe round: the client opens its NAT towards the server, asks through the relay
        client.send(0, server_addr)
        msg = s_core.receive(c_box.encrypt(hp.probe_payload(0, client.sampler, server_addr)),
                             relay_seen_client, True)
        assert msg is not None
        limiter = hp.RandomPunchLimiter()
        decision = s_core.decide(msg, relay_seen_client, True, limiter, trio.current_time())
        if decision.fast_open is not None:
            server.send(0, decision.fast_open)
        answer = c_box.decrypt(decision.reply)
        assert answer is not None
        remote = hp.RemoteState()
        remote.update(answer, None)
        assert hp.after_probe(remote, client.sampler, answer.token, retry=False) == \
            hp.ProbeVerdict.PUNCH
        # punch round: echo the token, both commit
        mine = c_box.token(server_addr)
        msg = s_core.receive(c_box.encrypt(hp.punch_payload(
            1, client.sampler, token=mine, remote_token=answer.token)), relay_seen_client, True)
        assert msg is not None and s_core.remote.punching
        decision = s_core.decide(msg, relay_seen_client, True, limiter, trio.current_time())
        answer = c_box.decrypt(decision.reply)
        assert answer is not None and answer.remote_token == mine and answer.punching
        remote.update(answer, server_addr.host)
        c_choice = hp.punch_strategy(client.sampler.firewall, remote)
        s_choice = decision.punch
        assert c_choice is not None and s_choice is not None
        t0 = trio.current_time()
        done = trio.Event()

        async def client_side() -> None:
            await client.run(hp.punch_plan(c_choice[0], remote, c_choice[1], is_initiator=True,
                                           rng=rng), client.got_probe)

        async def server_side() -> None:
            await server.run(hp.punch_plan(s_choice[0], s_core.remote, s_choice[1],
                                           is_initiator=False, rng=rng), done)

        nursery.start_soon(server_side)
        await client_side()
        elapsed = trio.current_time() - t0
        done.set()
    return elapsed, server, client


@pytest.mark.parametrize(("server_kind", "client_kind", "strategy"), [
    ("consistent", "consistent", hp.Strategy.CONSISTENT),
    ("consistent", "random", hp.Strategy.BIRTHDAY),
    ("random", "consistent", hp.Strategy.RANDOM_PROBES),
])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_punch_gets_through(server_kind: str, client_kind: str, strategy: hp.Strategy,
                            seed: int) -> None:
    result: list[tuple[float, Peer, Peer]] = []

    async def main() -> None:
        result.append(await punch(server_kind, client_kind, seed))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    elapsed, _server, client = result[0]
    assert client.received, "no probe reached the client"
    limit = 3.0 if strategy == hp.Strategy.CONSISTENT else hp.PUNCH_TIMEOUT
    assert elapsed < limit
    kinds = {"consistent": Firewall.CONSISTENT, "random": Firewall.RANDOM}
    assert client.sampler.firewall == kinds[client_kind]


def test_two_random_nats_stop_at_the_probe_round() -> None:
    rng = random.Random(7)
    net_nats = [NatBox("100.64.0.3", "random", rng), NatBox("100.64.0.4", "random", rng)]
    samplers = []
    for nat in net_nats:
        s = hp.NatSampler()
        for node in DHT_NODES:
            s.add(nat.outbound(40000, node), node)
        samplers.append(s)
    remote = hp.RemoteState(samplers[0].firewall)
    with pytest.raises(hp.HolepunchFailed) as err:
        hp.after_probe(remote, samplers[1], b"t" * 32, retry=False)
    assert err.value.code == "HOLEPUNCH_DOUBLE_RANDOMIZED_NATS"
