"""The network services run on: peers found by topic or key, RPC on each."""

from tether.net.base import (
    Network,
    Peer,
    PeerCallback,
    dial,
    is_closed,
    peers_on,
    wait_for_peer,
)

__all__ = ["Network", "Peer", "PeerCallback", "dial", "is_closed", "peers_on", "wait_for_peer"]
