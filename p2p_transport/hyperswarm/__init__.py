"""Hyperswarm: topic-based peer discovery and de-duplicated connections."""

from .swarm import Discovery, Hyperswarm, PeerInfo, SwarmConnection

__all__ = ["Discovery", "Hyperswarm", "PeerInfo", "SwarmConnection"]
