"""What a persistent hyperdht node stores and answers (``lib/persistent.js``): FIND_PEER,
LOOKUP, ANNOUNCE, UNANNOUNCE, MUTABLE_PUT/GET and IMMUTABLE_PUT/GET.

Theory of operation: the dht-rpc layer has already checked the request's write token (a token
that matches neither secret got INVALID_TOKEN before we run), so a token here is known good and
only its presence is checked. :meth:`Persistent.handle` takes the request fields and ``now`` and
returns a :class:`~p2p_transport.hyperdht.router.Reply`, or None to drop the request without an
answer, which is what hyperdht does with bad signatures and malformed values: the sender sees a
timeout. The module is sans-IO; :mod:`p2p_transport.hyperdht.storage` runs it on a socket.

Bounds: records, router entries, bumps and refresh tokens live ``max_age`` (20 min) after their
last announce, mutable and immutable values 48 h; each cache holds at most ``max_size`` entries
(values ``max_size // 2``), as hyperdht's ``defaultCacheOpts``. A record keeps at most 3 relay
addresses and a LOOKUP answers at most 20 records. PLUGIN has no plugins here and is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from p2p_transport.cenc import DecodeError, Reader, SocketAddress, Writer
from p2p_transport.crypto import NS_ANNOUNCE, NS_MUTABLE_PUT, NS_UNANNOUNCE, hash_batch, verify
from p2p_transport.crypto import hash as blake2b

from .cache import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, ExpiringCache
from .messages import (
    ANNOUNCE,
    FIND_PEER,
    IMMUTABLE_GET,
    IMMUTABLE_PUT,
    LOOKUP,
    MUTABLE_GET,
    MUTABLE_PUT,
    PLUGIN,
    UNANNOUNCE,
    Announce,
    Error,
    HyperDhtProtocolError,
    LookupReply,
    PeerRecord,
    decode_announce,
    decode_peer,
    encode_lookup_reply,
    encode_peer,
)
from .router import Reply, RouteEntry, Router

__all__ = [
    "MAX_BUMP_DRIFT",
    "MAX_LOOKUP_RECORDS",
    "MAX_RELAY_ADDRESSES",
    "STORAGE_COMMANDS",
    "VALUE_MAX_AGE",
    "MutableValue",
    "Persistent",
    "RecordStore",
    "decode_mutable_put",
    "decode_mutable_value",
    "encode_mutable_put",
    "encode_mutable_value",
    "mutable_signable",
    "signable",
]

MAX_RELAY_ADDRESSES = 3
MAX_LOOKUP_RECORDS = 20
#: An announced ``bump`` (ms since the epoch) may lead our wall clock by at most this much.
MAX_BUMP_DRIFT = 60_000
#: hyperdht keeps mutable and immutable values 48 h.
VALUE_MAX_AGE = 48 * 3600.0

STORAGE_COMMANDS = frozenset({FIND_PEER, LOOKUP, ANNOUNCE, UNANNOUNCE, MUTABLE_PUT, MUTABLE_GET,
                              IMMUTABLE_PUT, IMMUTABLE_GET, PLUGIN})


def signable(target: bytes, token: bytes, node_id: bytes, peer: PeerRecord, *,
             refresh: bytes | None, namespace: bytes) -> bytes:
    """What an (un)announce signs: ``ns ‖ H(target ‖ node id ‖ token ‖ peer ‖ refresh)``."""
    return namespace + hash_batch([target, node_id, token, encode_peer(peer), refresh or b""])


# -- mutable values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MutableValue:
    """A signed mutable value (``mutableGetResponse``; with ``public_key``, a put request)."""

    seq: int
    value: bytes
    signature: bytes


def mutable_signable(seq: int, value: bytes) -> bytes:
    """``NS_MUTABLE_PUT ‖ H(mutableSignable{seq, value})``."""
    return NS_MUTABLE_PUT + blake2b(Writer().uint(seq).buffer(value).getvalue())


def encode_mutable_value(m: MutableValue) -> bytes:
    return Writer().uint(m.seq).buffer(m.value).fixed64(m.signature).getvalue()


def decode_mutable_value(data: bytes) -> MutableValue:
    try:
        r = Reader(data)
        return MutableValue(r.uint(), r.buffer(), r.fixed64())
    except DecodeError as exc:
        raise HyperDhtProtocolError(f"malformed mutable value: {exc}") from exc


def encode_mutable_put(public_key: bytes, m: MutableValue) -> bytes:
    w = Writer().fixed32(public_key).uint(m.seq).buffer(m.value).fixed64(m.signature)
    return w.getvalue()


def decode_mutable_put(data: bytes) -> tuple[bytes, MutableValue]:
    try:
        r = Reader(data)
        return r.fixed32(), MutableValue(r.uint(), r.buffer(), r.fixed64())
    except DecodeError as exc:
        raise HyperDhtProtocolError(f"malformed mutable put: {exc}") from exc


# -- announcement records -------------------------------------------------------------------


class RecordStore:
    """Announced records by (topic, public key), bounded and expiring as one cache."""

    def __init__(self, max_size: int, max_age: float) -> None:
        self._cache: ExpiringCache[tuple[bytes, bytes], bytes] = ExpiringCache(max_size, max_age)
        self._by_topic: dict[bytes, dict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def add(self, topic: bytes, public_key: bytes, record: bytes, now: float) -> None:
        keys = self._by_topic.setdefault(topic, {})
        keys.pop(public_key, None)
        keys[public_key] = None  # most recent last
        self._forget(self._cache.set((topic, public_key), record, now))

    def remove(self, topic: bytes, public_key: bytes) -> None:
        if self._cache.delete((topic, public_key)):
            self._forget([(topic, public_key)])

    def get(self, topic: bytes, limit: int, now: float) -> list[bytes]:
        """Up to ``limit`` live records of ``topic``, most recently announced first."""
        keys = self._by_topic.get(topic)
        if not keys:
            return []
        out: list[bytes] = []
        dead: list[tuple[bytes, bytes]] = []
        # newest first, stopping at ``limit``: a popular topic costs O(limit), not O(records)
        for pk in reversed(keys):
            record = self._cache.get((topic, pk), now)
            if record is None:
                dead.append((topic, pk))
                continue
            out.append(record)
            if len(out) >= limit:
                break
        self._forget(dead)
        return out

    def _forget(self, keys: list[tuple[bytes, bytes]]) -> None:
        for topic, pk in keys:
            index = self._by_topic.get(topic)
            if index is None:
                continue
            index.pop(pk, None)
            if not index:
                del self._by_topic[topic]


@dataclass(frozen=True, slots=True)
class _Refresh:
    topic: bytes
    record: bytes
    announce_self: bool


class Persistent:
    """The storage of one persistent node whose id is ``node_id`` (``H(ipv4Addr)``)."""

    def __init__(self, node_id: bytes, router: Router | None = None, *,
                 max_size: int = DEFAULT_MAX_SIZE, max_age: float = DEFAULT_MAX_AGE,
                 value_max_age: float = VALUE_MAX_AGE,
                 wall_clock_ms: Callable[[], float] = lambda: time.time() * 1000) -> None:
        if len(node_id) != 32:
            raise ValueError("node id must be 32 bytes")
        self.node_id = node_id
        self.router = router if router is not None else Router(max_size=max_size,
                                                                max_age=max_age)
        self.records = RecordStore(max_size, max_age)
        self.bumps: ExpiringCache[bytes, int] = ExpiringCache(max_size, max_age)
        self.refreshes: ExpiringCache[bytes, _Refresh] = ExpiringCache(max_size, max_age)
        half = max(1, max_size // 2)
        self.mutables: ExpiringCache[bytes, bytes] = ExpiringCache(half, value_max_age)
        self.immutables: ExpiringCache[bytes, bytes] = ExpiringCache(half, value_max_age)
        self._wall_clock_ms = wall_clock_ms

    def handle(self, command: int, target: bytes | None, token: bytes | None,
               value: bytes | None, *, from_addr: SocketAddress, now: float) -> Reply | None:
        """Answer a storage command from ``from_addr``.

        The token, when present, has already been verified by the dht-rpc layer.
        """
        if target is None:
            return None
        if command == FIND_PEER:
            entry = self.router.get(target, now)
            return Reply(entry.record if entry is not None else None)
        if command == LOOKUP:
            return self._lookup(target, now)
        if command == ANNOUNCE:
            return self._announce(target, token, value, from_addr, now)
        if command == UNANNOUNCE:
            return self._unannounce(target, token, value)
        if command == MUTABLE_PUT:
            return self._mutable_put(target, token, value, now)
        if command == MUTABLE_GET:
            return self._mutable_get(target, value, now)
        if command == IMMUTABLE_PUT:
            if not token or not value or blake2b(value) != target:
                return None
            self.immutables.set(target, value, now)
            return Reply(None)
        if command == IMMUTABLE_GET:
            return Reply(self.immutables.get(target, now))
        return None  # PLUGIN: none registered

    def unannounce(self, target: bytes, public_key: bytes) -> None:
        if blake2b(public_key) == target:
            self.router.delete(target)
        self.records.remove(target, public_key)

    # -- handlers ---------------------------------------------------------------------------

    def _lookup(self, target: bytes, now: float) -> Reply:
        records = self.records.get(target, MAX_LOOKUP_RECORDS, now)
        entry = self.router.get(target, now)
        if entry is not None and len(records) < MAX_LOOKUP_RECORDS:
            records.append(entry.record)
        if not records:
            return Reply(None)
        bump = self.bumps.get(target, now) or 0
        peers = tuple(decode_peer(r) for r in records)
        return Reply(encode_lookup_reply(LookupReply(peers, bump)))

    def _decode_announce(self, value: bytes | None) -> Announce | None:
        if not value:
            return None
        try:
            return decode_announce(value)
        except HyperDhtProtocolError:
            return None

    def _announce(self, target: bytes, token: bytes | None, value: bytes | None,
                  from_addr: SocketAddress, now: float) -> Reply | None:
        ann = self._decode_announce(value)
        if token is None or ann is None:
            return None
        if ann.peer is None:
            return self._refresh(ann.refresh, from_addr, now) if ann.refresh else None
        message = signable(target, token, self.node_id, ann.peer, refresh=ann.refresh,
                           namespace=NS_ANNOUNCE)
        if ann.signature is None or not verify(message, ann.signature, ann.peer.public_key):
            return None
        peer = PeerRecord(ann.peer.public_key, ann.peer.relay_addresses[:MAX_RELAY_ADDRESSES])
        record = encode_peer(peer)
        announce_self = blake2b(peer.public_key) == target
        if announce_self:
            self.router.set(target, RouteEntry(from_addr, record), now)
            self.records.remove(target, peer.public_key)
        else:
            current = self.bumps.get(target, now) or 0
            if current < ann.bump <= self._wall_clock_ms() + MAX_BUMP_DRIFT:
                self.bumps.set(target, ann.bump, now)
            self.records.add(target, peer.public_key, record, now)
        if ann.refresh:
            self.refreshes.set(ann.refresh, _Refresh(target, record, announce_self), now)
        return Reply(None, token=False, closer_nodes=False)

    def _refresh(self, refresh: bytes, from_addr: SocketAddress, now: float) -> Reply | None:
        """Renew an announcement by revealing the preimage of its registered refresh token."""
        active = blake2b(refresh)
        r = self.refreshes.get(active, now)
        if r is None:
            return None
        public_key = r.record[:32]
        if r.announce_self:
            self.router.set(r.topic, RouteEntry(from_addr, r.record), now)
            self.records.remove(r.topic, public_key)
        else:
            self.records.add(r.topic, public_key, r.record, now)
        self.refreshes.delete(active)
        self.refreshes.set(refresh, r, now)
        return Reply(None, token=False, closer_nodes=False)

    def _unannounce(self, target: bytes, token: bytes | None,
                    value: bytes | None) -> Reply | None:
        ann = self._decode_announce(value)
        if token is None or ann is None or ann.peer is None or ann.signature is None:
            return None
        message = signable(target, token, self.node_id, ann.peer, refresh=ann.refresh,
                           namespace=NS_UNANNOUNCE)
        if not verify(message, ann.signature, ann.peer.public_key):
            return None
        self.unannounce(target, ann.peer.public_key)
        return Reply(None, token=False, closer_nodes=False)

    def _mutable_put(self, target: bytes, token: bytes | None, value: bytes | None,
                     now: float) -> Reply | None:
        if token is None or not value:
            return None
        try:
            public_key, put = decode_mutable_put(value)
        except HyperDhtProtocolError:
            return None
        if blake2b(public_key) != target or not put.value:
            return None
        if not verify(mutable_signable(put.seq, put.value), put.signature, public_key):
            return None
        local = self.mutables.get(target, now)
        if local is not None:
            existing = decode_mutable_value(local)
            if existing.value and existing.seq == put.seq and existing.value != put.value:
                return Reply(None, token=False, closer_nodes=True, error=Error.SEQ_REUSED)
            if put.seq < existing.seq:
                return Reply(None, token=False, closer_nodes=True, error=Error.SEQ_TOO_LOW)
        self.mutables.set(target, encode_mutable_value(put), now)
        return Reply(None)

    def _mutable_get(self, target: bytes, value: bytes | None, now: float) -> Reply | None:
        if not value:
            return None
        try:
            seq = Reader(value).uint()
        except DecodeError:
            return None
        local = self.mutables.get(target, now)
        if local is None:
            return Reply(None)
        return Reply(None if decode_mutable_value(local).seq < seq else local)
