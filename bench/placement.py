"""Placement at scale: one placement decision over 1,000, 10,000 and 100,000 workers,
the orchestrator's ``FleetIndex`` vs the full scan it replaced, and heartbeat ingestion.

Synthetic fleets (generated once per size, unsigned: placement never looks at a
signature): every tenth worker serves the requested version, the others one of
nine other models; regions, gpuClasses, slots, load and warm caches are random
(seeded), and a third of the workers batch (a batch size, active sequences and a
KV-cache budget). 32 workers of the pool have dispatches in flight since their
heartbeat.

* **decision**: what ``Submit`` does to choose its candidates, up to 8 with room.
  New: ``DiscoverySub.ranked`` (expiry, the index's view for the request, the
  in-flight workers scored again) taken until 8. Reference: the code before the
  index, kept here only: ``snapshot()`` (expiry filter and a sort of the whole
  fleet), every worker scored over its protobuf message (room by slots and, for a
  batching worker, by sequences), a full sort, the first 8.
  Between two decisions one worker's heartbeat arrives (untimed; both sides see it),
  so the index's views move as they do in service. Both must choose the same 8.
* **ingestion** (10,000 workers): heartbeats accepted per second through
  ``DiscoverySub._accept`` (admission, Ed25519 signature, nonce and freshness
  checks, the index updated), each worker's envelope signed beforehand, against the
  same checks storing the entry only (``_accept`` before the index).

Figures: p50/p95 per decision in microseconds and the reference's over the new
one's (the speed-up), growth of the new p50 from 1k to 10k to 100k (10x would be
linear), heartbeats per second. The last line printed is JSON with every figure.

    python bench/placement.py [--sizes 1000 10000 100000] [--decisions 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.discovery import DiscoverySub, InFlight, WorkerEntry  # noqa: E402
from orchestrator.scheduler import Placement, Weights, region_proximity  # noqa: E402
from tether import keys, signing  # noqa: E402
from tether.admission import Admissions  # noqa: E402
from tether.metadata.tables import AdmittedWorker  # noqa: E402
from tether.net import Network, Peer  # noqa: E402
from tether.rpc import RpcConnection  # noqa: E402
from tether.v1 import health_pb2, presence_pb2  # noqa: E402

MODEL = ("chat", "1.0")
OTHER_MODELS = [(f"other-{i}", "1.0") for i in range(9)]
REGIONS = ["eu-west", "eu-north", "us-east", "us-west", "ap-south", "ap-east"]
GPUS = ["a100", "h100", "l4", "cpu"]
TAKE = 8  # Place's PLACE_MAX; Submit takes max_attempts (3) of them
IN_FLIGHT = 32
WANT = Placement(
    request_region="eu-west",
    model=presence_pb2.ModelKey(model_id=MODEL[0], version=MODEL[1]),
    gpu_classes=("a100", "h100"),
)


# --- The reference: placement before the index (full scan, protobuf, full sort) ---


def _ref_busy(p: presence_pb2.Presence, unreported: int = 0) -> int:
    cap = p.capacity
    return max(0, cap.in_use + cap.queue_depth + unreported)


def _ref_sequences(p: presence_pb2.Presence, unreported: int = 0) -> int:
    return max(0, p.capacity.active_sequences + unreported)


def _ref_batch_full(p: presence_pb2.Presence, unreported: int = 0) -> bool:
    cap = p.capacity
    if not cap.max_batch_size:
        return False
    n = _ref_sequences(p, unreported)
    if n >= cap.max_batch_size:
        return True
    if not cap.kv_cache_budget_bytes:
        return False
    if cap.kv_cache_used_bytes >= cap.kv_cache_budget_bytes:
        return True
    if not cap.active_sequences:
        return False
    per_sequence = cap.kv_cache_used_bytes / cap.active_sequences
    extra = n - cap.active_sequences
    return cap.kv_cache_used_bytes + (extra + 1) * per_sequence > cap.kv_cache_budget_bytes


def _ref_is_full(p: presence_pb2.Presence, unreported: int, unreported_sequences: int) -> bool:
    cap = p.capacity
    if cap.slots and _ref_busy(p, unreported) >= cap.slots + cap.queue_limit:
        return True
    return _ref_batch_full(p, unreported_sequences)


def _ref_score(
    p: presence_pb2.Presence, want: Placement, w: Weights, unreported: int,
    unreported_sequences: int,
) -> float | None:
    if p.draining:
        return None
    if not any(
        s.model_id == want.model.model_id and s.version == want.model.version for s in p.supported
    ):
        return None
    cap = p.capacity
    if want.gpu_classes:
        gpu = 1.0 if p.gpu_class in want.gpu_classes else 0.0
    else:
        gpu = 0.5
    n = _ref_busy(p, unreported)
    running = min(n, cap.slots) if cap.slots else 0
    load = (n - running) + (running / cap.slots if cap.slots else 0.0)
    if cap.max_batch_size:
        load = max(load, _ref_sequences(p, unreported_sequences) / cap.max_batch_size)
    warm = any(
        c.model_id == want.model.model_id and c.version == want.model.version
        for c in p.health.model_cache
    )
    return (
        w.model
        + w.region * region_proximity(p.region, want.request_region)
        + w.gpu_class * gpu
        + w.queue / (1.0 + load)
        + w.warm_cache * (1.0 if warm else 0.0)
    )


def reference_decision(
    entries: dict[bytes, WorkerEntry], expiry_s: float, in_flight: InFlight, w: Weights
) -> list[str]:
    horizon = trio.current_time() - expiry_s
    snapshot = sorted(
        (e for e in entries.values() if e.last_seen >= horizon), key=lambda e: e.worker_id
    )
    scored = []
    for e in snapshot:
        extra = in_flight.unreported(e.worker_id, _ref_busy(e.presence))
        extra_seqs = in_flight.unreported(e.worker_id, _ref_sequences(e.presence))
        s = _ref_score(e.presence, WANT, w, extra, extra_seqs)
        if s is not None:
            scored.append((e, s, _ref_is_full(e.presence, extra, extra_seqs)))
    ranked = sorted(scored, key=lambda c: (c[2], -c[1], c[0].worker_id))
    return [e.worker_id for e, _, full in ranked if not full][:TAKE]


def new_decision(discovery: DiscoverySub, w: Weights) -> list[str]:
    room = []
    for c in discovery.ranked(WANT, w):
        if c.full:
            break
        room.append(c.entry.worker_id)
        if len(room) == TAKE:
            break
    return room


# --- The fleet ---


def presence(rng: random.Random, i: int) -> presence_pb2.Presence:
    served = [MODEL] if i % 10 == 0 else [rng.choice(OTHER_MODELS)]
    slots = rng.choice([0, 1, 2, 4, 8])
    p = presence_pb2.Presence(
        worker_id=f"w{i:06d}",
        region=rng.choice(REGIONS),
        gpu_class=rng.choice(GPUS),
        draining=rng.random() < 0.02,
        supported=[presence_pb2.ModelKey(model_id=m, version=v) for m, v in served],
        capacity=health_pb2.Capacity(
            slots=slots,
            in_use=rng.randint(0, slots),
            queue_depth=rng.randint(0, 3),
            queue_limit=rng.choice([0, 4, 16]),
        ),
    )
    if rng.random() < 1 / 3:  # a batching worker: room in sequences and KV cache too
        cap = p.capacity
        cap.max_batch_size = rng.choice([4, 8, 16])
        cap.active_sequences = rng.randint(0, cap.max_batch_size)
        cap.kv_cache_budget_bytes = 1 << 30
        cap.kv_cache_used_bytes = cap.active_sequences * rng.randint(1 << 24, 1 << 27)
    if rng.random() < 0.5:
        p.health.model_cache.add(model_id=served[0][0], version=served[0][1])
    return p


def peer(i: int) -> Peer:
    # Placement never touches the connection: a peer without one stands in.
    return Peer(remote_key=i.to_bytes(32, "big"), rpc=cast(RpcConnection, None))


def discovery(admissions: Admissions | None = None) -> DiscoverySub:
    return DiscoverySub(
        cast(Network, None),
        admissions=admissions or Admissions(lambda: ()),
        clock_ms=lambda: 1_000_000,
    )


def percentile(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def timed(fn: Callable[[], list[str]], beat: Callable[[], None], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        beat()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


async def decisions(size: int, n_new: int, n_ref: int) -> dict[str, float]:
    rng = random.Random(size)
    d = discovery()
    w = Weights()
    now = trio.current_time()
    peers = [peer(i) for i in range(size)]
    for i in range(size):
        e = WorkerEntry(presence(rng, i), peers[i], now)
        d._entries[peers[i].remote_key] = e
        d.index.update(peers[i].remote_key, e)
    pool = list(range(0, size, 10))
    for i in rng.sample(pool, IN_FLIGHT):
        d.in_flight.started(f"w{i:06d}")

    def beat() -> None:  # one worker's heartbeat: its load moved
        i = rng.randrange(size)
        p = presence_pb2.Presence()
        p.CopyFrom(d._entries[peers[i].remote_key].presence)
        p.capacity.in_use = rng.randint(0, p.capacity.slots)
        e = WorkerEntry(p, peers[i], trio.current_time())
        d._entries[peers[i].remote_key] = e
        d.index.update(peers[i].remote_key, e)
        d.in_flight.heartbeat(p.worker_id)

    def ref() -> list[str]:
        return reference_decision(d._entries, d.expiry_s, d.in_flight, w)

    def new() -> list[str]:
        return new_decision(d, w)

    chosen = new()
    if chosen != ref() or len(chosen) != TAKE:
        raise SystemExit(f"{size} workers: the index chose {chosen}, the reference {ref()}")
    new()  # the view for this request is built once, on the first request of its kind
    ref_us = timed(ref, beat, n_ref)
    new_us = timed(new, beat, n_new)
    if new() != ref():
        raise SystemExit(f"{size} workers: the index and the reference disagree after beats")
    return {
        "p50_us": statistics.median(new_us),
        "p95_us": percentile(new_us, 95),
        "ref_p50_us": statistics.median(ref_us),
        "ref_p95_us": percentile(ref_us, 95),
        "speedup_p50": statistics.median(ref_us) / statistics.median(new_us),
    }


async def ingestion(size: int) -> dict[str, float]:
    """Heartbeats per second through ``_accept``, index included, vs storing only."""
    rng = random.Random(7)
    pairs = [keys.KeyPair.from_seed(rng.randbytes(32)) for _ in range(size)]
    admissions = Admissions(
        lambda: [AdmittedWorker(public_key=kp.public_key.hex(), admitted_unix_ms=0) for kp in pairs]
    )
    await admissions.reload()
    peers = [Peer(remote_key=kp.public_key, rpc=cast(RpcConnection, None)) for kp in pairs]
    presences = [presence(rng, i) for i in range(size)]
    envelopes = [  # signed beforehand: the orchestrator verifies, never signs
        signing.sign(p, kp, now_ms=1_000_000) for p, kp in zip(presences, pairs, strict=True)
    ]
    d = discovery(admissions)
    now = trio.current_time()
    for i, pr in enumerate(peers):  # the fleet is known already: each beat replaces one
        d.index.update(pr.remote_key, WorkerEntry(presences[i], pr, now))
    new_decision(d, Weights())  # and a view exists to keep current

    t0 = time.perf_counter()
    for pr, env in zip(peers, envelopes, strict=True):
        d._accept(pr, env)
    new_s = time.perf_counter() - t0
    if len(d._entries) != size or d.rejected:
        raise SystemExit(f"ingestion: {len(d._entries)} accepted, {d.rejected} rejected")

    # Reference: the same checks, the entry stored, no index (``_accept`` before it).
    ref = discovery(admissions)
    entries: dict[bytes, WorkerEntry] = {}
    t0 = time.perf_counter()
    for pr, env in zip(peers, envelopes, strict=True):
        if not admissions.admits(pr.remote_key):
            raise SystemExit("not admitted")
        p = ref.verifier.verify(
            env, presence_pb2.Presence, now_ms=ref.clock_ms(), expected_signer=pr.remote_key
        )
        entries[pr.remote_key] = WorkerEntry(p, pr, trio.current_time())
        ref.in_flight.heartbeat(p.worker_id)
    ref_s = time.perf_counter() - t0
    return {
        "heartbeats_per_s": size / new_s,
        "ref_heartbeats_per_s": size / ref_s,
        "ratio": ref_s / new_s,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "placement"}
    for size in args.sizes:
        n_ref = max(10, min(args.decisions, 300_000 // size))
        t0 = time.perf_counter()
        figures = await decisions(size, args.decisions, n_ref)
        print(
            f"{size:>7} workers: p50 {figures['p50_us']:.1f} us (p95 {figures['p95_us']:.1f}) "
            f"vs reference {figures['ref_p50_us']:.0f} us (p95 {figures['ref_p95_us']:.0f}): "
            f"{figures['speedup_p50']:.0f}x  [{time.perf_counter() - t0:.1f} s]",
            flush=True,
        )
        result[str(size)] = {k: round(v, 2) for k, v in figures.items()}
    sizes = sorted(args.sizes)
    for a, b in pairwise(sizes):
        result[f"growth_{a}_{b}"] = round(
            result[str(b)]["p50_us"] / result[str(a)]["p50_us"], 2
        )
    ingest = await ingestion(args.ingest)
    print(
        f"ingestion at {args.ingest}: {ingest['heartbeats_per_s']:.0f} heartbeats/s "
        f"(signature checks and index) vs {ingest['ref_heartbeats_per_s']:.0f}/s storing only: "
        f"{ingest['ratio']:.2f}x",
        flush=True,
    )
    result[f"ingestion_{args.ingest}"] = {k: round(v, 2) for k, v in ingest.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--ingest", type=int, default=10_000)
    args = parser.parse_args()
    # A clock that stands still: the fleet's heartbeats stay fresh however long setup takes.
    result = trio.run(main_async, args, clock=trio.testing.MockClock())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
