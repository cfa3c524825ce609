"""HyperDHT connections between two Python peers on loopback UDP (direct handshake path),
handshake de-duplication, firewall rejection and announce signatures."""

from __future__ import annotations

import random

import pytest
import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import NS_ANNOUNCE, key_pair, sign, verify
from p2p_transport.crypto import hash as blake2b
from p2p_transport.hyperdht import (
    HyperDht,
    PeerConnectionFailed,
    PeerNotFound,
    PeerRecord,
    RawConnection,
    announce_signable,
)
from p2p_transport.hyperdht.messages import Handshake, encode_handshake


async def _echo_once(raw: RawConnection) -> None:
    data = await raw.stream.receive_some(1024)
    await raw.stream.send_all(b"echo:" + data)


def test_direct_connect_and_raw_stream() -> None:
    async def main() -> None:
        with trio.fail_after(20):
            async with HyperDht.open() as server_dht, HyperDht.open() as client_dht:
                accepted: list[RawConnection] = []

                async def on_conn(raw: RawConnection) -> None:
                    accepted.append(raw)
                    await _echo_once(raw)

                server = server_dht.create_server(on_conn)
                await server.listen(announce=False)
                kp = key_pair()
                raw = await client_dht.connect(server.public_key, key_pair_=kp,
                                               relay_addresses=[server_dht.local_address])
                assert raw.remote_public_key == server.public_key
                assert raw.handshake.is_initiator
                await raw.stream.send_all(b"hello")
                assert await raw.stream.receive_some(1024) == b"echo:hello"
                assert accepted[0].remote_public_key == kp.public_key
                assert accepted[0].handshake.hash == raw.handshake.hash
                assert accepted[0].handshake.tx == raw.handshake.rx
                await raw.stream.aclose()

    trio.run(main)


def test_firewall_rejects_and_unknown_key_fails() -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with HyperDht.open() as server_dht, HyperDht.open() as client_dht:

                async def on_conn(raw: RawConnection) -> None:
                    raise AssertionError("firewalled client got through")

                server = server_dht.create_server(on_conn, firewall=lambda pk, payload, addr: True)
                await server.listen(announce=False)
                with pytest.raises(PeerConnectionFailed):
                    await client_dht.connect(server.public_key,
                                             relay_addresses=[server_dht.local_address],
                                             timeout=10)
                with pytest.raises(PeerNotFound):
                    await client_dht.connect(key_pair().public_key)

    trio.run(main)


def test_announce_signable_is_verifiable() -> None:
    kp = key_pair(bytes(32))
    peer = PeerRecord(kp.public_key, (SocketAddress("127.0.0.1", 1),))
    msg = announce_signable(bytes(32), b"t" * 32, b"i" * 32, peer, refresh=None,
                            namespace=NS_ANNOUNCE)
    assert len(msg) == 64 and msg[:32] == NS_ANNOUNCE
    assert verify(msg, sign(msg, kp.secret_key), kp.public_key)



def test_server_survives_garbage_handshakes() -> None:
    """Random PEER_HANDSHAKE values (decodable or not, any mode) never break the server: it
    answers nothing or a well-formed reply, and a real client still connects afterwards."""
    rng = random.Random(7)

    async def main() -> None:
        with trio.fail_after(30):
            async with HyperDht.open() as server_dht, HyperDht.open() as client_dht:

                async def on_conn(raw: RawConnection) -> None:
                    await _echo_once(raw)

                server = server_dht.create_server(on_conn)
                await server.listen(announce=False)
                target = blake2b(server.public_key)
                for i in range(300):
                    noise = rng.randbytes(rng.choice([0, 1, 48, 96, 116, 200]))
                    if i % 3 == 0:
                        value = rng.randbytes(rng.randrange(0, 80))
                    else:
                        value = encode_handshake(Handshake(rng.randrange(0, 6), noise,
                                                           SocketAddress("127.0.0.1", 9)))
                    client_dht.node.start_request(server_dht.local_address, 0, target=target,
                                                  value=value, retries=0)
                # No wait needed: the garbage left the client's socket first and the server
                # reads its socket in order, so it has handled all of it before the connect.
                raw = await client_dht.connect(server.public_key,
                                               relay_addresses=[server_dht.local_address])
                await raw.stream.send_all(b"still alive")
                assert await raw.stream.receive_some(1024) == b"echo:still alive"
                await raw.stream.aclose()

    trio.run(main)


def test_client_path_choice() -> None:
    """Where a client sends its UDX stream after the handshake (no holepunching)."""
    from p2p_transport.hyperdht import Firewall, NoisePayload
    from p2p_transport.hyperdht.dht import is_bogon
    from p2p_transport.hyperdht.messages import HolepunchInfo

    relay_seen = SocketAddress("203.0.113.7", 4000)  # the server as the relay saw it
    public = SocketAddress("93.184.216.34", 5000)  # only compared, never contacted
    private = SocketAddress("192.168.1.20", 6000)
    assert is_bogon("127.0.0.1") and is_bogon("192.168.1.20") and not is_bogon("8.8.8.8")

    async def main() -> None:
        async with HyperDht.open() as dht, HyperDht.open() as lan_peer:
            choose = dht._choose_path
            me = SocketAddress("203.0.113.50", 1)
            open_pub = NoisePayload(firewall=Firewall.OPEN, addresses4=(private, public))
            open_priv = NoisePayload(firewall=Firewall.OPEN, addresses4=(private,))
            punchable = NoisePayload(firewall=Firewall.UNKNOWN, holepunch=HolepunchInfo(0),
                                     addresses4=(lan_peer.local_address,))
            # the server's first packet decides
            assert await choose(open_pub, relay_seen, me, True, [("10.0.0.5", 7)]) == \
                SocketAddress("10.0.0.5", 7)
            # an unrelayed reply came from the server itself
            assert await choose(punchable, relay_seen, me, False, []) == relay_seen
            # OPEN: the first public address, else the relay-observed one
            assert await choose(open_pub, relay_seen, me, True, []) == public
            assert await choose(open_priv, relay_seen, me, True, []) == relay_seen
            # holepunchable, same public host: a private address that answers PING
            same_host = SocketAddress(relay_seen.host, 9)
            assert await choose(punchable, relay_seen, same_host, True, []) == \
                lan_peer.local_address
            # holepunchable across NATs: not supported yet
            assert await choose(punchable, relay_seen, me, True, []) is None
            # a server without holepunch info that the relay saw at another address than
            # its own is behind a NAT: a client that is not OPEN either cannot reach it
            natted = NoisePayload(firewall=Firewall.UNKNOWN, addresses4=(private,))
            assert dht.firewall_claim() != Firewall.OPEN
            assert await choose(natted, relay_seen, me, True, []) is None
            # ... unless the relay saw it at its own address, or its address is unknown
            at_home = NoisePayload(firewall=Firewall.UNKNOWN, addresses4=(relay_seen,))
            wildcard = NoisePayload(firewall=Firewall.UNKNOWN,
                                    addresses4=(SocketAddress("0.0.0.0", 4000),))
            assert await choose(at_home, relay_seen, me, True, []) == relay_seen
            assert await choose(wildcard, relay_seen, me, True, []) == relay_seen
        async with HyperDht.open(firewall=Firewall.OPEN) as open_client:
            # ... or the client takes the server's first packet (it is OPEN)
            assert await open_client._choose_path(natted, relay_seen, me, True, []) == \
                relay_seen

    trio.run(main)


def test_dead_relay_hint_does_not_delay_connect() -> None:
    """Relays are tried two at a time: a silent first hint (4 s of retries) loses to the next."""

    async def main() -> None:
        async with HyperDht.open() as server_dht, HyperDht.open() as client_dht:

            async def on_conn(raw: RawConnection) -> None:
                await _echo_once(raw)

            server = server_dht.create_server(on_conn)
            await server.listen(announce=False)
            dead = SocketAddress("127.0.0.1", 9)
            with trio.fail_after(3.5):
                raw = await client_dht.connect(server.public_key,
                                               relay_addresses=[dead, server_dht.local_address])
            await raw.stream.send_all(b"fast")
            assert await raw.stream.receive_some(1024) == b"echo:fast"
            await raw.stream.aclose()

    trio.run(main)
