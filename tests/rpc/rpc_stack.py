"""The stack every Tether connection runs on, on loopback, for the RPC tests: RPC over a
protomux channel over secret-stream over UDX (a fixed Noise handshake, two UDP sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from p2p_transport import crypto
from p2p_transport.noise import dht_handshake
from p2p_transport.protomux import ChannelMessageStream, Mux
from p2p_transport.secret_stream import open_secret_stream
from p2p_transport.udx import UdxSocket
from tether.rpc import Handler, RpcConnection


@dataclass
class RpcStack:
    client: RpcConnection
    server: RpcConnection
    client_mux: Mux
    server_mux: Mux


@asynccontextmanager
async def rpc_over_udx(
    handlers: Mapping[str, Handler], *, coalesce: bool = False
) -> AsyncIterator[RpcStack]:
    """A client connection and a server connection serving ``handlers``; ``coalesce`` as
    ``tether.net.swarm`` runs its muxes (``Mux(coalesce=True)``)."""
    server_kp = crypto.key_pair(bytes(32))
    client_hs = dht_handshake(crypto.key_pair(bytes([7]) * 32), server_kp.public_key)
    server_hs = dht_handshake(server_kp)
    server_hs.recv(client_hs.send(b""))
    client_hs.recv(server_hs.send(b""))
    assert client_hs.result is not None and server_hs.result is not None
    async with UdxSocket.bind() as sa, UdxSocket.bind() as sb:
        ua, ub = sa.create_stream(), sb.create_stream()
        ua.connect(ub.id, sb.address)
        ub.connect(ua.id, sa.address)
        async with (
            open_secret_stream(ua, True, client_hs.result) as a,
            open_secret_stream(ub, False, server_hs.result) as b,
            trio.open_nursery() as nursery,
        ):
            mux_a, mux_b = Mux(a, coalesce=coalesce), Mux(b, coalesce=coalesce)
            chan_a = ChannelMessageStream(mux_a, "tether-rpc/1")
            chan_b = ChannelMessageStream(mux_b, "tether-rpc/1")
            chan_a.open()
            chan_b.open()
            await nursery.start(mux_a.run)
            await nursery.start(mux_b.run)
            await chan_a.wait_opened()
            await chan_b.wait_opened()
            server = RpcConnection(chan_b, initiator=False, handlers=handlers)
            client = RpcConnection(chan_a, initiator=True)
            await nursery.start(server.run)
            await nursery.start(client.run)
            yield RpcStack(client, server, mux_a, mux_b)
            nursery.cancel_scope.cancel()
