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
