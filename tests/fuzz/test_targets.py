"""Every fuzz target briefly, so CI covers them: the committed seeds, then deterministic
mutations of them (bounded by executions and by time). ``tools/fuzz`` runs the same targets
coverage-guided for as long as asked."""

from __future__ import annotations

import logging
import random
import time

import pytest

from tests.fuzz.targets import SEEDS, TARGETS, corpus, join, split

EXECUTIONS = 2000
SECONDS = 3.0
#: The HTTP edge runs an event loop per input: fewer, slower executions.
SLOW = {"http_edge": 200}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One libFuzzer-style mutation: flip, insert, erase, duplicate or splice bytes."""
    b = bytearray(data)
    op = rng.randrange(6)
    i = rng.randrange(len(b) + 1)
    if op == 0 and b:
        b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[i:i] = rng.randbytes(rng.randrange(1, 9))
    elif op == 2:
        del b[i : i + rng.randrange(1, 17)]
    elif op == 3:
        b[i:i] = b[i : i + rng.randrange(1, 33)]
    elif op == 4 and b:
        b[min(i, len(b) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFC, 0xFD, 0xFE, 0xFF])
    else:
        b = b[:i]
    return bytes(b[:4096])


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_survives_its_seeds_and_their_mutations(name: str) -> None:
    target = TARGETS[name]
    seeds = corpus(name)
    assert seeds, f"no committed seeds for {name} (tools/fuzz --write-corpus)"
    rng = random.Random(name)
    pool = list(seeds)
    logging.disable(logging.CRITICAL)
    try:
        deadline = time.monotonic() + SECONDS
        for seed in seeds:
            target(seed)
        for _ in range(SLOW.get(name, EXECUTIONS)):
            if time.monotonic() > deadline:
                break
            data = rng.choice(pool)
            for _ in range(rng.randrange(1, 5)):
                data = mutate(rng, data)
            target(data)
            if len(pool) < 256:
                pool.append(data)
    finally:
        logging.disable(logging.NOTSET)


def test_committed_corpus_holds_the_current_seeds() -> None:
    # the seeds come from the codecs and golden vectors; a codec change shows up here
    # (secret-stream's seeds start with a random nonce: they differ on every run)
    for name, make in SEEDS.items():
        if name == "secret_stream":
            assert len(make()) == len(corpus(name))
            continue
        assert set(make()) <= set(corpus(name)), f"tools/fuzz --write-corpus ({name})"


def test_split_and_join_are_inverse() -> None:
    parts = [b"", b"a", bytes(300), b"xyz"]
    assert split(join(parts)) == [b"", b"a", bytes(255), bytes(45), b"xyz"]
