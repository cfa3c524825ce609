"""HyperDHT: announce/lookup, relayed Noise handshakes and connections over dht-rpc
(holepunching across NATs, blind relays), and persistent storage nodes that store
announcements and relay handshakes."""

from .dht import (
    HolepunchFailed,
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
from .relay import RelayFailed
from .router import Router
from .storage import StorageNode, open_storage_node

__all__ = [
    "Firewall",
    "HolepunchFailed",
    "HyperDht",
    "HyperDhtProtocolError",
    "Mode",
    "NoisePayload",
    "PeerConnectionFailed",
    "PeerNotFound",
    "PeerRecord",
    "Persistent",
    "RawConnection",
    "RelayFailed",
    "Router",
    "Server",
    "StorageNode",
    "announce_signable",
    "open_storage_node",
    "secure",
]
