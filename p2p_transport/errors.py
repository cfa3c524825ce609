"""The root of every exception the Hyperswarm stack defines.

``except TransportError`` catches anything the transport raises of its own. Beneath the root,
h11's split says whose fault it was:

- :class:`RemoteProtocolError` -- the peer sent bytes that break a protocol (compact-encoding,
  UDX packets, Noise, secret-stream, protomux, dht-rpc and HyperDHT messages, protomux-rpc).
  Safe to catch and drop the peer.
- :class:`LocalProtocolError` -- this program misused the API (for example tried to encode a
  value the format cannot hold).

The failures that are neither sit directly under the root: a failed stream
(``udx.StreamError``), a DHT request or query that failed (``dht_rpc.DhtError``), an RPC the
remote answered with an error (``rpc.RpcError``) and a cryptographic operation refused
(``crypto.CryptoError``).

Two contracts stay as their owners define them: streams raise trio's ``ClosedResourceError``,
``BrokenResourceError`` (with the transport error chained as its cause), ``BusyResourceError`` and
``EndOfChannel``, as every trio stream does; argument checks raise the built-in ``ValueError``,
``TypeError`` or ``RuntimeError``.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "TransportError"]


class TransportError(Exception):
    """Base of every exception class defined by ``p2p_transport``."""


class RemoteProtocolError(TransportError):
    """The peer sent bytes that break the protocol. Safe to catch and drop the peer."""


class LocalProtocolError(TransportError):
    """This program misused the API (for example tried to encode an out-of-range value)."""
