"""The sans-IO storage core: announce, lookup, unannounce, find-peer, expiry, bounds, bumps,
refresh tokens and mutable/immutable values, with time passed in."""

from __future__ import annotations

import os

import pytest
from storage_helpers import (
    CLIENT,
    NODE_ID,
    SERVER,
    TOKEN,
    announce_value,
    seeded_key_pair,
    self_target,
)

from p2p_transport.cenc import SocketAddress
from p2p_transport.crypto import hash as blake2b
from p2p_transport.crypto import sign
from p2p_transport.hyperdht.cache import ExpiringCache
from p2p_transport.hyperdht.messages import (
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
    PeerRecord,
    decode_lookup_reply,
    decode_peer,
    encode_announce,
)
from p2p_transport.hyperdht.persistent import (
    MutableValue,
    Persistent,
    decode_mutable_value,
    encode_mutable_put,
    mutable_signable,
)
from p2p_transport.hyperdht.router import Reply, RouteEntry

TOPIC = blake2b(b"tether/presence/eu-west")
NOW = 1000.0


def _core(**kw: float) -> Persistent:
    return Persistent(NODE_ID, wall_clock_ms=lambda: 1_700_000_000_000.0, **kw)  # type: ignore[arg-type]


def _handle(core: Persistent, command: int, target: bytes | None, value: bytes | None, *,
            token: bytes | None = TOKEN, frm: SocketAddress = CLIENT,
            now: float = NOW) -> Reply | None:
    return core.handle(command, target, token, value, from_addr=frm, now=now)


def _lookup(core: Persistent, target: bytes = TOPIC, now: float = NOW) -> list[PeerRecord]:
    reply = _handle(core, LOOKUP, target, None, token=None, now=now)
    assert reply is not None
    assert reply.token and reply.closer_nodes  # lookups hand out write tokens
    if reply.value is None:
        return []
    return list(decode_lookup_reply(reply.value).peers)


def test_announce_then_lookup_returns_the_record() -> None:
    core = _core()
    kp = seeded_key_pair(1)
    relays = (SocketAddress("10.0.0.1", 1), SocketAddress("10.0.0.2", 2))
    reply = _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC, relays=relays))
    assert reply == Reply(None, token=False, closer_nodes=False)
    assert _lookup(core) == [PeerRecord(kp.public_key, relays)]
    assert _lookup(core, os.urandom(32)) == []


def test_relay_addresses_are_truncated_to_three() -> None:
    core = _core()
    kp = seeded_key_pair(2)
    relays = tuple(SocketAddress("10.0.0.1", p) for p in range(1, 6))
    assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC, relays=relays)) is not None
    assert _lookup(core) == [PeerRecord(kp.public_key, relays[:3])]


@pytest.mark.parametrize("forgery", ["other-signer", "other-node-id", "other-token",
                                     "other-target", "unannounce-namespace", "no-signature"])
def test_badly_signed_announce_is_dropped(forgery: str) -> None:
    core = _core()
    kp = seeded_key_pair(3)
    if forgery == "other-signer":
        value = announce_value(kp, TOPIC, signer=seeded_key_pair(4))
    elif forgery == "other-node-id":
        value = announce_value(kp, TOPIC, nid=os.urandom(32))
    elif forgery == "other-token":
        value = announce_value(kp, TOPIC, token=os.urandom(32))
    elif forgery == "other-target":
        value = announce_value(kp, os.urandom(32))
    elif forgery == "unannounce-namespace":
        value = announce_value(kp, TOPIC, unannounce=True)
    else:
        value = encode_announce(Announce(PeerRecord(kp.public_key)))
    assert _handle(core, ANNOUNCE, TOPIC, value) is None
    assert _lookup(core) == []


def test_announce_needs_a_token_target_and_value() -> None:
    core = _core()
    kp = seeded_key_pair(5)
    value = announce_value(kp, TOPIC)
    assert _handle(core, ANNOUNCE, TOPIC, value, token=None) is None
    assert _handle(core, ANNOUNCE, None, value) is None
    assert _handle(core, ANNOUNCE, TOPIC, None) is None
    assert _handle(core, ANNOUNCE, TOPIC, b"\xff\xff") is None  # malformed: dropped
    assert _lookup(core) == []


def test_unannounce_removes_only_with_a_good_signature() -> None:
    core = _core()
    a, b = seeded_key_pair(6), seeded_key_pair(7)
    for kp in (a, b):
        assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC)) is not None
    forged = announce_value(a, TOPIC, unannounce=True, signer=b)
    assert _handle(core, UNANNOUNCE, TOPIC, forged) is None
    wrong_ns = announce_value(a, TOPIC)  # an ANNOUNCE signature is no UNANNOUNCE signature
    assert _handle(core, UNANNOUNCE, TOPIC, wrong_ns) is None
    assert {p.public_key for p in _lookup(core)} == {a.public_key, b.public_key}
    good = announce_value(a, TOPIC, unannounce=True)
    assert _handle(core, UNANNOUNCE, TOPIC, good) == Reply(None, token=False,
                                                            closer_nodes=False)
    assert [p.public_key for p in _lookup(core)] == [b.public_key]


def test_self_announce_makes_a_router_entry_found_by_find_peer() -> None:
    core = _core()
    kp = seeded_key_pair(8)
    target = self_target(kp)
    empty = _handle(core, FIND_PEER, target, None, token=None)
    assert empty == Reply(None)
    assert _handle(core, ANNOUNCE, target, announce_value(kp, target), frm=SERVER) is not None
    entry = core.router.get(target, NOW)
    assert entry is not None
    assert entry.relay == SERVER  # the announcer's UDP address: where relays send handshakes
    found = _handle(core, FIND_PEER, target, None, token=None)
    assert found is not None and found.value is not None
    assert decode_peer(found.value) == PeerRecord(kp.public_key)
    # a LOOKUP of H(pk) lists the router entry's record too, not a topic record
    assert _lookup(core, target) == [PeerRecord(kp.public_key)]
    assert len(core.records) == 0
    unann = announce_value(kp, target, unannounce=True)
    assert _handle(core, UNANNOUNCE, target, unann, frm=SERVER) is not None
    assert core.router.get(target, NOW) is None
    assert _handle(core, FIND_PEER, target, None, token=None) == Reply(None)


def test_records_expire_max_age_after_the_last_announce() -> None:
    core = _core(max_age=60.0)
    kp = seeded_key_pair(9)
    value = announce_value(kp, TOPIC)
    assert _handle(core, ANNOUNCE, TOPIC, value, now=0.0) is not None
    assert len(_lookup(core, now=59.9)) == 1
    assert _handle(core, ANNOUNCE, TOPIC, value, now=50.0) is not None  # re-announce renews
    assert len(_lookup(core, now=109.9)) == 1
    assert _lookup(core, now=110.0) == []
    self_kp = seeded_key_pair(10)
    target = self_target(self_kp)
    assert _handle(core, ANNOUNCE, target, announce_value(self_kp, target), now=200.0)
    assert core.router.get(target, 259.0) is not None
    assert _handle(core, FIND_PEER, target, None, token=None, now=260.0) == Reply(None)


def test_record_count_is_bounded_by_max_size() -> None:
    core = _core(max_size=4)
    keys = [seeded_key_pair(20 + i) for i in range(6)]
    for i, kp in enumerate(keys):
        assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC), now=NOW + i)
    assert len(core.records) == 4
    # the two oldest were evicted; the newest come first
    assert [p.public_key for p in _lookup(core, now=NOW + 10)] == [
        kp.public_key for kp in reversed(keys[2:])]


def test_lookup_answers_at_most_twenty_records() -> None:
    core = _core()
    for i in range(23):
        kp = seeded_key_pair(100 + i)
        assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC))
    assert len(_lookup(core)) == 20


def test_bump_is_kept_when_newer_and_not_too_far_ahead() -> None:
    core = _core()
    wall = 1_700_000_000_000
    kp = seeded_key_pair(30)
    assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC, bump=wall + 1000))
    reply = _handle(core, LOOKUP, TOPIC, None)
    assert reply is not None and reply.value is not None
    assert decode_lookup_reply(reply.value).bump == wall + 1000
    # more than 60 s ahead of our clock: ignored
    assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC, bump=wall + 61_000))
    reply = _handle(core, LOOKUP, TOPIC, None)
    assert reply is not None and reply.value is not None
    assert decode_lookup_reply(reply.value).bump == wall + 1000


def test_refresh_token_renews_without_a_signature() -> None:
    core = _core(max_age=60.0)
    kp = seeded_key_pair(31)
    preimage = os.urandom(32)
    registered = blake2b(preimage)
    assert _handle(core, ANNOUNCE, TOPIC, announce_value(kp, TOPIC, refresh=registered),
                   now=0.0)
    renew = encode_announce(Announce(refresh=preimage))
    assert _handle(core, ANNOUNCE, TOPIC, renew, now=50.0) == Reply(None, token=False,
                                                                    closer_nodes=False)
    assert len(_lookup(core, now=100.0)) == 1  # renewed at 50 s
    assert _handle(core, ANNOUNCE, TOPIC, renew, now=51.0) is None  # a preimage works once
    unknown = encode_announce(Announce(refresh=os.urandom(32)))
    assert _handle(core, ANNOUNCE, TOPIC, unknown, now=52.0) is None


def test_router_entry_relay_follows_the_latest_self_announce() -> None:
    core = _core()
    kp = seeded_key_pair(32)
    target = self_target(kp)
    moved = SocketAddress("127.0.0.1", 40999)
    assert _handle(core, ANNOUNCE, target, announce_value(kp, target), frm=SERVER)
    assert _handle(core, ANNOUNCE, target, announce_value(kp, target), frm=moved)
    entry = core.router.get(target, NOW)
    assert entry is not None
    assert entry == RouteEntry(moved, entry.record)


def test_immutable_put_checks_the_hash() -> None:
    core = _core()
    value = b"an immutable value"
    target = blake2b(value)
    assert _handle(core, IMMUTABLE_PUT, os.urandom(32), value) is None
    assert _handle(core, IMMUTABLE_PUT, target, value, token=None) is None
    assert _handle(core, IMMUTABLE_GET, target, None, token=None) == Reply(None)
    assert _handle(core, IMMUTABLE_PUT, target, value) == Reply(None)
    assert _handle(core, IMMUTABLE_GET, target, None, token=None) == Reply(value)


def _mutable_put(core: Persistent, seq: int, value: bytes, *, signer_seed: int = 40,
                 now: float = NOW) -> Reply | None:
    kp = seeded_key_pair(40)
    signature = sign(mutable_signable(seq, value), seeded_key_pair(signer_seed).secret_key)
    put = encode_mutable_put(kp.public_key, MutableValue(seq, value, signature))
    return _handle(core, MUTABLE_PUT, blake2b(kp.public_key), put, now=now)


def test_mutable_put_get_and_sequence_rules() -> None:
    core = _core()
    target = blake2b(seeded_key_pair(40).public_key)
    assert _mutable_put(core, 1, b"v1", signer_seed=41) is None  # bad signature
    assert _mutable_put(core, 1, b"v1") == Reply(None)
    got = _handle(core, MUTABLE_GET, target, b"\x00", token=None)
    assert got is not None and got.value is not None
    stored = decode_mutable_value(got.value)
    assert (stored.seq, stored.value) == (1, b"v1")
    newer = _handle(core, MUTABLE_GET, target, b"\x02", token=None)
    assert newer == Reply(None)  # we hold seq 1 < 2
    reused = _mutable_put(core, 1, b"other")
    assert reused is not None and reused.error == Error.SEQ_REUSED
    assert _mutable_put(core, 3, b"v3") == Reply(None)
    low = _mutable_put(core, 2, b"v2")
    assert low is not None and low.error == Error.SEQ_TOO_LOW


def test_plugin_and_unknown_commands_are_dropped() -> None:
    core = _core()
    assert _handle(core, PLUGIN, TOPIC, b"\x00") is None
    assert _handle(core, 99, TOPIC, b"\x00") is None


def test_expiring_cache_bounds_and_order() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(max_size=2, max_age=10.0)
    assert cache.set("a", 1, 0.0) == []
    assert cache.set("b", 2, 1.0) == []
    assert cache.set("a", 3, 2.0) == []  # rewrite moves "a" to the young end
    assert cache.set("c", 4, 3.0) == ["b"]
    assert cache.get("a", 11.9) == 3
    assert cache.get("a", 12.0) is None
    assert cache.expire(13.0) == ["c"]
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_size"):
        ExpiringCache(max_size=0)
