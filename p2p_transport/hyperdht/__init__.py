"""HyperDHT: announce/lookup, relayed Noise handshakes and connections over dht-rpc."""

from .dht import (
    HyperDht,
    PeerConnectionFailed,
    PeerNotFound,
    RawConnection,
    Server,
    announce_signable,
    secure,
)
from .messages import Firewall, HyperDhtProtocolError, Mode, NoisePayload, PeerRecord

__all__ = [
    "Firewall",
    "HyperDht",
    "HyperDhtProtocolError",
    "Mode",
    "NoisePayload",
    "PeerConnectionFailed",
    "PeerNotFound",
    "PeerRecord",
    "RawConnection",
    "Server",
    "announce_signable",
    "secure",
]
