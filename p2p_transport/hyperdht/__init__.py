"""HyperDHT: announce/lookup, relayed Noise handshakes and connections over dht-rpc, and
persistent storage nodes that store announcements and relay handshakes."""

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
from .persistent import Persistent
from .router import Router
from .storage import StorageNode, open_storage_node

__all__ = [
    "Firewall",
    "HyperDht",
    "HyperDhtProtocolError",
    "Mode",
    "NoisePayload",
    "PeerConnectionFailed",
    "PeerNotFound",
    "PeerRecord",
    "Persistent",
    "RawConnection",
    "Router",
    "Server",
    "StorageNode",
    "announce_signable",
    "open_storage_node",
    "secure",
]
