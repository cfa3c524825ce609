"""UDX: reliable, ordered streams and unreliable messages over one UDP socket (libudx wire format).

:mod:`.packet` is the header codec, :mod:`.core` the sans-IO stream state machine, and
:mod:`.socket` the trio adapter (:class:`UdxSocket`, :class:`UdxStream`).
"""

from .core import State, StreamCore, StreamError, StreamReset, StreamTimeout, StreamUnreachable
from .packet import MAX_PAYLOAD, Packet, PacketError
from .socket import Address, DatagramTransport, UdpTransport, UdxSocket, UdxStream

__all__ = [
    "MAX_PAYLOAD",
    "Address",
    "DatagramTransport",
    "Packet",
    "PacketError",
    "State",
    "StreamCore",
    "StreamError",
    "StreamReset",
    "StreamTimeout",
    "StreamUnreachable",
    "UdpTransport",
    "UdxSocket",
    "UdxStream",
]
