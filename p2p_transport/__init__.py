"""p2p_transport: a pure-Python (trio + PyNaCl) implementation of the Hyperswarm stack.

Layers, bottom-up: compact-encoding (:mod:`.cenc`), hashes and keys (:mod:`.crypto`), Noise IK
over Ed25519 (:mod:`.noise`), UDX reliable streams over UDP (:mod:`.udx`), and
@hyperswarm/secret-stream (:mod:`.secret_stream`). Higher layers (dht-rpc, hyperdht, protomux,
RPC, hyperswarm) build on these. Everything is wire-compatible with the npm packages.
"""

from __future__ import annotations

from .cenc import DecodeError, LocalProtocolError, Reader, RemoteProtocolError, Writer
from .crypto import KeyPair, key_pair
from .errors import TransportError
from .noise import HandshakeError, HandshakeResult, NoiseHandshake, Pattern, dht_handshake
from .secret_stream import SecretStream, SecretStreamError, open_secret_stream
from .udx import StreamReset, StreamTimeout, UdpTransport, UdxSocket, UdxStream

__all__ = [
    "DecodeError",
    "HandshakeError",
    "HandshakeResult",
    "KeyPair",
    "LocalProtocolError",
    "NoiseHandshake",
    "Pattern",
    "Reader",
    "RemoteProtocolError",
    "SecretStream",
    "SecretStreamError",
    "StreamReset",
    "StreamTimeout",
    "TransportError",
    "UdpTransport",
    "UdxSocket",
    "UdxStream",
    "Writer",
    "dht_handshake",
    "key_pair",
    "open_secret_stream",
]
