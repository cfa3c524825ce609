"""Topic naming (spec §5.1) and signed, nonce-protected envelopes (D4)."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from tether import signing, topics
from tether.errors import InvalidArgument, TetherError
from tether.keys import KeyPair
from tether.v1 import presence_pb2


def test_topic_names_follow_the_spec() -> None:
    assert topics.presence("eu-west") == "tether/presence/eu-west"
    assert topics.models("llama3.1-8b", "1.0", "us-east") == "tether/models/llama3.1-8b/1.0/us-east"
    assert topics.control("sa-east") == "tether/control/sa-east"
    assert topics.jobs("job-42") == "tether/jobs/job-42"
    assert topics.validate("tether/models/mixtral-8x7b/2.13/eu-west")


@pytest.mark.parametrize(
    "bad",
    [
        "tether/presence/EU-West",
        "tether/presence/",
        "tether/presence/eu west",
        "tether/models/Mixtral/1.0/eu-west",
        "tether/models/mixtral/1/eu-west",
        "tether/models/mixtral/1.0.0/eu-west",
        "tether/models/mixtral/01.0/eu-west",
        "tether/models/mixtral/1.0",
        "tether/unknown/eu-west",
        "other/presence/eu-west",
        "tether/presence/eu-west/extra",
    ],
)
def test_invalid_topic_names_are_refused(bad: str) -> None:
    with pytest.raises(topics.TopicError) as info:
        topics.validate(bad)
    assert isinstance(info.value, InvalidArgument)
    assert info.value.message


def test_topic_key_is_blake2b_of_the_name() -> None:
    name = "tether/presence/eu-west"
    assert topics.topic_key(name) == hashlib.blake2b(name.encode(), digest_size=32).digest()
    assert len(topics.topic_key(name)) == 32


@given(st.text(max_size=80))
def test_validate_never_raises_anything_but_topic_error(name: str) -> None:
    with contextlib.suppress(topics.TopicError):
        assert topics.validate(name) == name


KP = KeyPair.from_seed(bytes(range(32)))
NOW = 1_800_000_000_000


def presence() -> presence_pb2.Presence:
    return presence_pb2.Presence(worker_id="w1", region="eu-west", pub_key=KP.public_key)


def test_a_signed_envelope_verifies_once() -> None:
    verifier = signing.EnvelopeVerifier()
    env = signing.sign(presence(), KP, now_ms=NOW)
    got = verifier.verify(
        env, presence_pb2.Presence, now_ms=NOW + 10, expected_signer=KP.public_key
    )
    assert got == presence()
    with pytest.raises(signing.ReplayedEnvelope):
        verifier.verify(env, presence_pb2.Presence, now_ms=NOW + 20)


def test_tampering_wrong_signer_and_wrong_type_are_refused() -> None:
    verifier = signing.EnvelopeVerifier()
    env = signing.sign(presence(), KP, now_ms=NOW)
    tampered = presence_pb2.SignedEnvelope()
    tampered.CopyFrom(env)
    tampered.payload = presence_pb2.Presence(worker_id="evil").SerializeToString()
    with pytest.raises(signing.BadSignature):
        verifier.verify(tampered, presence_pb2.Presence, now_ms=NOW)
    other = KeyPair.from_seed(bytes(32))
    with pytest.raises(signing.BadSignature):
        verifier.verify(env, presence_pb2.Presence, now_ms=NOW, expected_signer=other.public_key)
    with pytest.raises(InvalidArgument):
        verifier.verify(env, presence_pb2.ModelAnnouncement, now_ms=NOW)
    # A re-signed timestamp with the same nonce is a different envelope but a replay.
    verifier.verify(env, presence_pb2.Presence, now_ms=NOW)
    again = signing.sign(presence(), KP, now_ms=NOW + 1, nonce=env.nonce)
    with pytest.raises(signing.ReplayedEnvelope):
        verifier.verify(again, presence_pb2.Presence, now_ms=NOW + 1)


def test_stale_and_future_timestamps_are_refused() -> None:
    verifier = signing.EnvelopeVerifier(max_age_ms=15_000, max_skew_ms=5_000)
    with pytest.raises(signing.StaleEnvelope):
        verifier.verify(signing.sign(presence(), KP, now_ms=NOW - 15_001), presence_pb2.Presence,
                        now_ms=NOW)
    with pytest.raises(signing.StaleEnvelope):
        verifier.verify(signing.sign(presence(), KP, now_ms=NOW + 5_001), presence_pb2.Presence,
                        now_ms=NOW)
    verifier.verify(signing.sign(presence(), KP, now_ms=NOW - 14_999), presence_pb2.Presence,
                    now_ms=NOW)


@given(st.binary(max_size=300))
def test_arbitrary_envelope_bytes_give_typed_errors(data: bytes) -> None:
    verifier = signing.EnvelopeVerifier()
    try:
        env = presence_pb2.SignedEnvelope.FromString(data)
    except DecodeError:
        return
    with pytest.raises(TetherError):
        verifier.verify(env, presence_pb2.Presence, now_ms=NOW)
