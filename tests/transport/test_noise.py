"""Noise IK/XX between two Python peers, tampering, misuse, and fuzzed handshake messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_transport import crypto
from p2p_transport.noise import HandshakeError, NoiseHandshake, Pattern, dht_handshake

SERVER = crypto.key_pair(bytes(range(32)))
CLIENT = crypto.key_pair(bytes(range(1, 33)))


def _pair(pattern: Pattern) -> tuple[NoiseHandshake, NoiseHandshake]:
    if pattern is Pattern.IK:
        return dht_handshake(CLIENT, SERVER.public_key), dht_handshake(SERVER)
    return NoiseHandshake(Pattern.XX, True, CLIENT), NoiseHandshake(Pattern.XX, False, SERVER)


@pytest.mark.parametrize("pattern", list(Pattern))
def test_handshake_agrees(pattern: Pattern) -> None:
    a, b = _pair(pattern)
    sender, receiver = a, b
    while not (a.complete and b.complete):
        assert receiver.recv(sender.send(b"hello")) == b"hello"
        sender, receiver = receiver, sender
    assert a.result is not None and b.result is not None
    assert a.result.hash == b.result.hash
    assert a.result.tx == b.result.rx and a.result.rx == b.result.tx
    assert a.result.remote_public_key == SERVER.public_key
    assert b.result.remote_public_key == CLIENT.public_key
    assert a.result.stream_id == b.result.remote_stream_id
    assert a.result.holepunch_secret == b.result.holepunch_secret


def test_ik_message_sizes_match_hyperdht() -> None:
    a, b = _pair(Pattern.IK)
    m1 = a.send(b"x" * 20)
    assert len(m1) == 116
    b.recv(m1)
    assert len(b.send(b"y" * 59)) == 107


def test_wrong_server_key_fails_authentication() -> None:
    a = dht_handshake(CLIENT, crypto.key_pair().public_key)
    b = dht_handshake(SERVER)
    with pytest.raises(HandshakeError):
        b.recv(a.send(b""))


def test_tampered_message_fails() -> None:
    a, b = _pair(Pattern.IK)
    m = bytearray(a.send(b"payload"))
    m[-1] ^= 1
    with pytest.raises(HandshakeError):
        b.recv(bytes(m))


def test_sending_out_of_turn_is_a_local_error() -> None:
    a, b = _pair(Pattern.IK)
    with pytest.raises(RuntimeError):
        b.send(b"")
    with pytest.raises(RuntimeError):
        a.recv(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(Pattern)))
def test_fuzz_first_message(data: bytes, pattern: Pattern) -> None:
    for end in (len(data), *range(0, min(len(data), 120), 7)):
        _, b = _pair(pattern)
        with contextlib.suppress(HandshakeError):
            b.recv(data[:end])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=80))
def test_fuzz_bad_ephemeral_points(point: bytes, rest: bytes) -> None:
    _, b = _pair(Pattern.IK)
    with contextlib.suppress(HandshakeError):
        b.recv(point + rest)
