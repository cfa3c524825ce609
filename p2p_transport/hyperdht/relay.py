"""Relaying a connection through a blind relay (npm ``blind-relay``), hyperdht's
``relayThrough``: the fallback when the NATs cannot be punched.

Both peers connect to the relay's key, open a protomux channel ``blind-relay`` (id: their own
public key) and send ``pair {isInitiator, token, id: their UDX stream id, seq: 0}`` with the
same 32-byte token (the one that asked for the relay chose it and sent it in its Noise
payload's ``relayThrough``). The relay answers each with the id of a UDX stream of its own,
linked to the other side's; each peer then connects its stream to that id at the relay's
address, from the socket its relay connection uses. The relay sees only encrypted packets.

The codec is sans-IO (:func:`encode_pair`, :func:`decode_pair`); :func:`pair_through` is the
trio part. The relay server itself is not implemented here (Node's ``blind-relay`` serves).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from p2p_transport.cenc import Reader, RemoteProtocolError, SocketAddress, Writer
from p2p_transport.protomux import ChannelMessageStream, Mux

from .holepunch import PeerConnectionFailed

if TYPE_CHECKING:
    from p2p_transport.udx import UdxSocket, UdxStream

    from .dht import HyperDht

__all__ = ["PROTOCOL", "RELAY_TIMEOUT", "Pair", "RelayFailed", "Relayed", "decode_pair",
           "encode_pair", "pair_through", "token"]

PROTOCOL = "blind-relay"
#: How long pairing may take before the connection gives up on the relay (hyperdht: 15 s).
RELAY_TIMEOUT = 15.0

log = logging.getLogger(__name__)


class RelayFailed(PeerConnectionFailed):
    """The relay could not be reached or did not pair us (``RELAY_ABORTED``)."""


@dataclass(frozen=True)
class Pair:
    is_initiator: bool
    token: bytes
    id: int
    seq: int = 0


def token() -> bytes:
    return os.urandom(32)


def encode_pair(m: Pair) -> bytes:
    # flags is compact-encoding-bitfield(7): one byte
    return Writer().uint8(1 if m.is_initiator else 0).fixed32(m.token).uint(m.id) \
        .uint(m.seq).getvalue()


def decode_pair(data: bytes) -> Pair:
    try:
        r = Reader(data)
        flags = r.uint8()
        return Pair(bool(flags & 1), r.fixed32(), r.uint(), r.uint())
    except RemoteProtocolError as exc:
        raise RelayFailed(f"bad pair message from the relay: {exc}") from exc


@dataclass(eq=False)
class Relayed:
    """A stream's path through the relay: connect it to ``remote_id`` at ``address`` from
    ``socket``. ``close`` ends the relay connection (after the stream is done)."""

    remote_id: int
    address: SocketAddress
    socket: UdxSocket
    cancel: trio.CancelScope

    def close(self) -> None:
        self.cancel.cancel()


async def pair_through(dht: HyperDht, relay_key: bytes, *, is_initiator: bool,
                       pair_token: bytes, stream: UdxStream,
                       relay_sources: set[tuple[str, int]] | None = None) -> Relayed:
    """Connect to the relay, pair ``stream`` under ``pair_token`` and return its path; the
    relay connection runs in ``dht.nursery`` until :meth:`Relayed.close`. The relay's
    address goes into ``relay_sources`` as soon as it is known: packets the relay forwards
    may reach ``stream`` before our pair reply does, and must not be taken for the peer's
    own first packet."""
    from .dht import secure  # the relay is reached like any HyperDHT server

    result: list[Relayed] = []
    failure: list[BaseException] = []
    done = trio.Event()
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with scope:
            try:
                raw = await dht.connect(relay_key)
                if relay_sources is not None and raw.remote_address is not None:
                    relay_sources.add((raw.remote_address.host, raw.remote_address.port))
                async with trio.open_nursery() as nursery:
                    secret = await secure(raw, nursery)
                    mux = Mux(secret)
                    # The relay opens its side at once: our channel must exist before the mux
                    # reads a frame, or protomux rejects the relay's open and both sides close.
                    channel = ChannelMessageStream(mux, PROTOCOL, dht.default_key_pair.public_key)
                    channel.open()
                    await nursery.start(mux.run)
                    await channel.wait_opened()
                    await channel.send_message(encode_pair(Pair(is_initiator, pair_token,
                                                                stream.id)))
                    reply = decode_pair(await channel.receive_message())
                    if raw.remote_address is None:
                        raise RelayFailed("the relay connection has no address")
                    result.append(Relayed(reply.id, raw.remote_address, raw.stream.socket,
                                          scope))
                    done.set()
                    await trio.sleep_forever()  # keep the relay connection for the stream
            except Exception as exc:  # reported to the waiting caller
                failure.append(exc)
            finally:
                done.set()

    await dht.nursery.start(run)
    try:
        with trio.move_on_after(RELAY_TIMEOUT):
            await done.wait()
        if result:
            return result[0]
    except BaseException:
        scope.cancel()
        raise
    scope.cancel()
    if failure:
        raise RelayFailed(f"relay pairing failed: {failure[0]!r}") from failure[0]
    raise RelayFailed("the relay did not pair us in time")
