"""The sealing core (``tether.sealing``): what a worker opens, what it refuses, and
chunks sealed so that two workers computing the same answer agree byte for byte."""

from __future__ import annotations

import pytest

from tether import sealing
from tether.errors import InvalidArgument, ResourceExhausted
from tether.keys import KeyPair
from tether.v1 import infer_pb2

NOW = 1_800_000_000_000


def plain(prompt: str = "the secret prompt") -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(tenant_id="acme", model_id="tiny-lm", correlation_id="c-1")
    req.input.text = prompt
    return req


def test_a_worker_opens_a_request_sealed_to_it_and_its_chunks_open_for_the_requester():
    worker = KeyPair.generate()
    sealed, requester = sealing.seal_request(plain(), [worker.public_key], now_ms=NOW)
    assert not sealed.HasField("input")
    assert b"the secret prompt" not in sealed.SerializeToString()
    opened = sealing.RequestOpener(worker).open(sealed, now_ms=NOW + 10)
    assert opened.request.input.text == "the secret prompt"
    assert not opened.request.HasField("sealed")

    chunk = infer_pb2.Infer.Chunk(correlation_id="c-1", seq=3, done=True)
    chunk.payload.text = " the secret answer"
    chunk.usage.output_tokens = 7
    opened.chunks.seal(chunk)
    assert not chunk.HasField("payload")
    assert b"secret answer" not in chunk.SerializeToString()
    assert chunk.usage.output_tokens == 7 and chunk.done and chunk.seq == 3  # still clear
    assert requester.open(chunk).payload.text == " the secret answer"


def test_two_workers_seal_the_same_chunk_alike_and_different_chunks_differently():
    a, b = KeyPair.generate(), KeyPair.generate()
    sealed, _ = sealing.seal_request(plain(), [a.public_key, b.public_key], now_ms=NOW)
    key_a = sealing.RequestOpener(a).open(sealed, now_ms=NOW).chunks
    key_b = sealing.RequestOpener(b).open(sealed, now_ms=NOW).chunks

    def sealed_chunk(key: sealing.ChunkKey, seq: int, text: str) -> bytes:
        chunk = infer_pb2.Infer.Chunk(seq=seq)
        chunk.payload.text = text
        key.seal(chunk)
        return chunk.sealed_payload

    assert sealed_chunk(key_a, 0, " w0") == sealed_chunk(key_b, 0, " w0")
    assert sealed_chunk(key_a, 0, " w0") != sealed_chunk(key_b, 0, " x0")
    assert sealed_chunk(key_a, 0, " w0") != sealed_chunk(key_a, 1, " w0")


def test_a_request_sealed_to_another_worker_is_refused_clearly():
    sealed, _ = sealing.seal_request(plain(), [KeyPair.generate().public_key], now_ms=NOW)
    with pytest.raises(sealing.NotSealedForThisWorker, match="sealed to other workers") as info:
        sealing.RequestOpener(KeyPair.generate()).open(sealed, now_ms=NOW)
    assert info.value.details["reason"] == "other_worker"


def test_a_slot_relabelled_with_this_workers_key_does_not_open():
    other, worker = KeyPair.generate(), KeyPair.generate()
    sealed, _ = sealing.seal_request(plain(), [other.public_key], now_ms=NOW)
    sealed.sealed.keys[0].worker_key = worker.public_key
    with pytest.raises(sealing.TamperedSeal, match="does not open"):
        sealing.RequestOpener(worker).open(sealed, now_ms=NOW)


@pytest.mark.parametrize("where", [0, 30, -1])
def test_a_tampered_ciphertext_is_refused(where: int):
    worker = KeyPair.generate()
    sealed, _ = sealing.seal_request(plain(), [worker.public_key], now_ms=NOW)
    data = bytearray(sealed.sealed.ciphertext)
    data[where] ^= 0x01
    sealed.sealed.ciphertext = bytes(data)
    with pytest.raises(sealing.TamperedSeal) as info:
        sealing.RequestOpener(worker).open(sealed, now_ms=NOW)
    assert info.value.details["reason"] == "tampered"


@pytest.mark.parametrize("field", ["correlation_id", "tenant_id", "model_id"])
def test_a_sealed_input_moved_to_another_request_is_refused(field: str):
    worker = KeyPair.generate()
    sealed, _ = sealing.seal_request(plain(), [worker.public_key], now_ms=NOW)
    setattr(sealed, field, "other")
    with pytest.raises(sealing.SealBindingMismatch):
        sealing.RequestOpener(worker).open(sealed, now_ms=NOW)


def test_a_replayed_request_is_refused_by_the_worker():
    worker = KeyPair.generate()
    opener = sealing.RequestOpener(worker)
    sealed, _ = sealing.seal_request(plain(), [worker.public_key], now_ms=NOW)
    opener.open(sealed, now_ms=NOW)
    with pytest.raises(sealing.ReplayedSeal, match="replay") as info:
        opener.open(sealed, now_ms=NOW + 1000)
    assert info.value.details["reason"] == "replayed"
    # Past the window it is stale, so the nonce need not be kept.
    with pytest.raises(sealing.StaleSeal):
        opener.open(sealed, now_ms=NOW + sealing.DEFAULT_MAX_AGE_MS + 1)


def test_the_replay_cache_is_bounded_in_time_and_refuses_work_when_full():
    cache = sealing.ReplayCache(max_age_ms=1000, max_skew_ms=100, size=2)
    cache.check(b"a" * 16, NOW, NOW)
    cache.check(b"b" * 16, NOW, NOW)
    with pytest.raises(ResourceExhausted):
        cache.check(b"c" * 16, NOW + 10, NOW + 10)
    # Once the first two are past the window they are forgotten.
    later = NOW + 1101
    cache.check(b"c" * 16, later, later)
    assert len(cache) == 1
    with pytest.raises(sealing.StaleSeal, match="future"):
        cache.check(b"d" * 16, later + 101, later)


def test_chunks_that_are_clear_moved_or_altered_are_refused():
    worker = KeyPair.generate()
    sealed, requester = sealing.seal_request(plain(), [worker.public_key], now_ms=NOW)
    key = sealing.RequestOpener(worker).open(sealed, now_ms=NOW).chunks
    chunk = infer_pb2.Infer.Chunk(seq=1)
    chunk.payload.text = " w1"
    key.seal(chunk)
    moved = infer_pb2.Infer.Chunk(seq=2, sealed_payload=chunk.sealed_payload)
    with pytest.raises(sealing.TamperedSeal, match="another sequence number"):
        requester.open(moved)
    flipped = chunk.sealed_payload[:-1] + bytes([chunk.sealed_payload[-1] ^ 1])  # never equal
    altered = infer_pb2.Infer.Chunk(seq=1, sealed_payload=flipped)
    with pytest.raises(sealing.TamperedSeal, match="does not authenticate"):
        requester.open(altered)
    clear = infer_pb2.Infer.Chunk(seq=1)
    clear.payload.text = " injected"
    with pytest.raises(sealing.TamperedSeal, match="not sealed"):
        requester.open(clear)


def test_sealing_needs_a_worker_and_the_binding():
    with pytest.raises(InvalidArgument, match="worker key"):
        sealing.seal_request(plain(), [], now_ms=NOW)
    unbound = plain()
    unbound.correlation_id = ""
    with pytest.raises(InvalidArgument, match="bound"):
        sealing.seal_request(unbound, [KeyPair.generate().public_key], now_ms=NOW)
    with pytest.raises(InvalidArgument, match="Ed25519"):
        sealing.seal_request(plain(), [b"\x02" * 32], now_ms=NOW)
