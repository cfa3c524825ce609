"""``tether status``: one screen of the network as an operator sees it, rendered from one
orchestrator's ``GetFleet`` answer: the services it reaches, the workers by region with
their load and cached models, breakers not closed, rollouts in progress, and the recent
error rate. ``render`` is pure, so it is tested without a network."""

from __future__ import annotations

from collections import defaultdict

from tether.v1 import services_pb2


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render(fleet: services_pb2.GetFleetResponse, *, region: str) -> str:
    lines: list[str] = []
    requests, failures = fleet.recent_requests, fleet.recent_failures
    window = f"{fleet.recent_window_s // 60} min" if fleet.recent_window_s >= 60 else (
        f"{fleet.recent_window_s} s")
    rate = f"{100 * failures / requests:.1f}% failed" if requests else "no requests"
    lines.append(f"tether network, region {region}")
    lines.append(f"  errors     last {window}: {requests} requests, {rate}")
    draining = sum(w.draining for w in fleet.workers)
    lines.append(
        f"  services   orchestrator {fleet.orchestrator_key.hex()[:16]} up; "
        f"registry {'up' if fleet.registries else 'NOT REACHED'}"
        f"{f' ({fleet.registries} replicas)' if fleet.registries > 1 else ''}; "
        f"workers {len(fleet.workers)}{f' ({draining} draining)' if draining else ''}")
    by_region: dict[str, list] = defaultdict(list)
    for w in fleet.workers:
        by_region[w.region].append(w)
    lines.append("  workers" + ("    none" if not fleet.workers else ""))
    for name in sorted(by_region):
        workers = sorted(by_region[name], key=lambda w: w.worker_id)
        used = sum(w.capacity.in_use for w in workers)
        slots = sum(w.capacity.slots for w in workers)
        lines.append(f"    {name}: {len(workers)} worker(s), {used}/{slots} slots busy")
        for w in workers:
            c = w.capacity
            cached = [f"{m.model_id}@{m.version}" for m in w.health.model_cache]
            batch = (f", batch {c.active_sequences}/{c.max_batch_size}, KV "
                     f"{_pct(c.kv_cache_used_bytes, c.kv_cache_budget_bytes)}"
                     if c.max_batch_size else "")
            lines.append(
                f"      {w.worker_id:<14} {w.gpu_class or '-':<10} {c.in_use}/{c.slots} slots, "
                f"queue {c.queue_depth}/{c.queue_limit}{batch}"
                f"{' DRAINING' if w.draining else ''}")
            lines.append(f"      {'':<14} cached: {', '.join(cached) or 'nothing'}")
    if fleet.breakers:
        lines.append("  breakers")
        for b in fleet.breakers:
            why = f" ({b.reason})" if b.reason else ""
            lines.append(f"    {b.model_id}@{b.version} in {b.region}: {b.state}{why}")
    else:
        lines.append("  breakers   all closed")
    if fleet.rollouts:
        lines.append("  rollouts")
        for r in fleet.rollouts:
            lines.append(f"    {r.model_id}: {r.summary}")
    else:
        lines.append("  rollouts   none")
    return "\n".join(lines)
