"""Kademlia routing table (k-buckets by shared-prefix length), as kademlia-routing-table does.

Rows are indexed by the number of leading bits a node id shares with the table id; each row
holds at most ``k`` nodes. A full row refuses newcomers: the caller decides whether to ping and
swap (dht-rpc does that only after bootstrap). ``closest`` walks rows like the JS table (not a
full XOR sort); :func:`sort_by_distance` gives the exact order when a query needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2p_transport.cenc import SocketAddress

__all__ = ["K", "Node", "RoutingTable", "distance", "sort_by_distance"]

K = 20


@dataclass(slots=True)
class Node:
    """A routing-table entry: a node id and the address it was validated against."""

    id: bytes
    address: SocketAddress
    added_tick: int = 0
    pinged_tick: int = 0
    seen_tick: int = 0
    down_hints: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two 32-byte ids as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def sort_by_distance(target: bytes, nodes: Iterable[Node]) -> list[Node]:
    return sorted(nodes, key=lambda n: distance(n.id, target))


class RoutingTable:
    """256 rows of at most ``k`` nodes, each row sorted by id."""

    def __init__(self, table_id: bytes, k: int = K) -> None:
        if len(table_id) != 32:
            raise ValueError("table id must be 32 bytes")
        self.id = table_id
        self.k = k
        self._rows: list[list[Node]] = [[] for _ in range(256)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _row_index(self, node_id: bytes) -> int:
        x = int.from_bytes(node_id, "big") ^ int.from_bytes(self.id, "big")
        if x == 0:
            return 255
        return 256 - x.bit_length()

    def add(self, node: Node) -> bool:
        """Insert or refresh ``node``. False when its row is full (the node was not added)."""
        if len(node.id) != 32:
            raise ValueError("node id must be 32 bytes")
        row = self._rows[self._row_index(node.id)]
        for i, existing in enumerate(row):
            if existing.id == node.id:
                row[i] = node
                return True
        if len(row) >= self.k:
            return False
        row.append(node)
        row.sort(key=lambda n: n.id)
        self._size += 1
        return True

    def remove(self, node_id: bytes) -> bool:
        row = self._rows[self._row_index(node_id)]
        for i, existing in enumerate(row):
            if existing.id == node_id:
                del row[i]
                self._size -= 1
                return True
        return False

    def get(self, node_id: bytes) -> Node | None:
        for existing in self._rows[self._row_index(node_id)]:
            if existing.id == node_id:
                return existing
        return None

    def row_of(self, node_id: bytes) -> list[Node]:
        """The (live) row ``node_id`` falls into, for full-row handling."""
        return self._rows[self._row_index(node_id)]

    def closest(self, target: bytes, k: int | None = None) -> list[Node]:
        """Up to ``k`` nodes near ``target``, walking rows as the JS table does."""
        limit = self.k if k is None else k
        d = self._row_index(target)
        out: list[Node] = []
        for i in [*range(d, -1, -1), *range(d + 1, 256)]:
            if len(out) >= limit:
                break
            out.extend(self._rows[i][: limit - len(out)])
        return out

    def nodes(self) -> list[Node]:
        return [n for row in self._rows for n in row]
