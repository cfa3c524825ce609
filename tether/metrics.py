"""Each service's own state as OpenTelemetry metrics, beside the SLIs of
``tether.telemetry`` (exported the same ways: Prometheus on ``--metrics-port``, OTLP).

Names follow OpenTelemetry's conventions (dotted, ``tether.<service>.<thing>``, a unit
where there is one; Prometheus shows ``tether_worker_kv_cache_used_bytes``). Label
values are bounded: a model and version are a resolved catalog entry's (or a model
this worker serves), never a caller's free text; a region is a presence's slug; a
status is a status code name.

- worker: ``queue.depth``, ``slots.in_use``, ``sequences.active`` (the running batch),
  ``kv_cache.used`` / ``kv_cache.budget`` (bytes), ``model_cache.used`` (bytes) as
  gauges read from the worker's health report; ``batch.size`` per engine step;
  ``model.loads`` and ``model_cache.lookups`` (hit/miss) by model and version; and the
  GenAI conventions' ``gen_ai.server.request.duration``, ``time_to_first_token`` and
  ``time_per_output_token`` by operation, model and version.
- registry: ``resolves`` by model, version and result.
- orchestrator: ``placements`` (each dispatch to a worker, by outcome), ``retries``
  (placed elsewhere after a refusal), ``resumptions`` (a stream resumed on another
  worker), ``dead_letters`` (by status), and ``breakers.open`` (a gauge by model and
  region).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

_instruments: dict[str, Any] = {}


def _meter() -> otel_metrics.Meter:
    return otel_metrics.get_meter("tether")


def counter(name: str, description: str, unit: str = "1") -> otel_metrics.Counter:
    """The process's counter ``name`` (made once: the SDK keeps the first of a name)."""
    found = _instruments.get(name)
    if found is None:
        found = _instruments[name] = _meter().create_counter(name, unit, description)
    return found


class LocalCounter:
    """A monotonic counter summed in plain Python and reported at each collection by an
    observable counter of the same name (exported as any counter is: ``<name>_total``
    in Prometheus, a cumulative sum over OTLP). For counters bumped on every request:
    the SDK's ``Counter.add`` costs tens of microseconds a call (its attributes are
    validated and frozen, its aggregation found under a lock); this is a dict update."""

    def __init__(self, name: str, description: str, unit: str = "1") -> None:
        self._totals: dict[tuple[tuple[str, str], ...], int | float] = {}
        _meter().create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: float, attributes: dict[str, str]) -> None:
        key = tuple(sorted(attributes.items()))
        self._totals[key] = self._totals.get(key, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, dict(key)) for key, total in list(self._totals.items())]


def local_counter(name: str, description: str, unit: str = "1") -> LocalCounter:
    """The process's :class:`LocalCounter` ``name`` (made once, as :func:`counter`)."""
    found = _instruments.get(name)
    if found is None:
        found = _instruments[name] = LocalCounter(name, description, unit)
    return found


def histogram(name: str, description: str, unit: str = "1") -> otel_metrics.Histogram:
    found = _instruments.get(name)
    if found is None:
        found = _instruments[name] = _meter().create_histogram(name, unit, description)
    return found


# ------------------------------------------------------------------ worker

#: The live workers of this process (one in production; several in the tests' fleets).
_workers: weakref.WeakSet[Any] = weakref.WeakSet()
#: Gauge name -> (description, unit, what to read from a ``Health.Report``).
_WORKER_GAUGES: dict[str, tuple[str, str, Callable[[Any], int]]] = {
    "tether.worker.queue.depth": ("Requests waiting for a slot", "{request}",
                                  lambda r: r.capacity.queue_depth),
    "tether.worker.slots.in_use": ("Slots running a request", "{request}",
                                   lambda r: r.capacity.in_use),
    "tether.worker.sequences.active": ("Sequences in the continuous batch", "{sequence}",
                                       lambda r: r.capacity.active_sequences),
    "tether.worker.kv_cache.used": ("KV-cache bytes reserved by running sequences", "By",
                                    lambda r: r.capacity.kv_cache_used_bytes),
    "tether.worker.kv_cache.budget": ("KV-cache budget", "By",
                                      lambda r: r.capacity.kv_cache_budget_bytes),
    "tether.worker.model_cache.used": ("Bytes of loaded models", "By",
                                       lambda r: sum(m.size_bytes for m in r.model_cache)),
}


def watch_worker(service: Any) -> None:
    """Report ``service``'s state (a ``WorkerService``: its ``health_report()``) as the
    worker gauges, labelled with its worker id, for as long as it lives."""
    if not _workers and "tether.worker.queue.depth" not in _instruments:
        for name, (description, unit, read) in _WORKER_GAUGES.items():
            _instruments[name] = _meter().create_observable_gauge(
                name, [_observe(read)], unit, description)
    _workers.add(service)


def _observe(read: Callable[[Any], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        for worker in list(_workers):
            try:  # (read from a scrape thread while the service runs on trio's)
                report = worker.health_report()
            except RuntimeError:  # its model cache changed under the read: next scrape
                continue
            yield Observation(read(report), {"worker": report.worker_id})
    return callback


def batch_size(size: int) -> None:
    histogram("tether.worker.batch.size", "Sequences advanced by one engine step",
              "{sequence}").record(size)


def model_cache_lookup(model: str, version: str, hit: bool) -> None:
    counter("tether.worker.model_cache.lookups", "Model cache lookups by result").add(
        1, {"model": model, "version": version, "result": "hit" if hit else "miss"})


def model_load(model: str, version: str, result: str) -> None:
    counter("tether.worker.model.loads", "Model loads (fetch, verify, compile) by result").add(
        1, {"model": model, "version": version, "result": result})


def gen_ai_request(operation: str, model: str, version: str, *, duration_s: float,
                   first_token_s: float | None, output_tokens: int) -> None:
    """A finished request's server-side GenAI metrics, as OpenTelemetry's GenAI semantic
    conventions name them (seconds): request duration, time to first token and time per
    output token, by operation, model and version."""
    attrs = {"gen_ai.operation.name": operation, "gen_ai.provider.name": "tether",
             "gen_ai.request.model": model, "tether.model.version": version}
    histogram("gen_ai.server.request.duration", "GenAI server request duration",
              "s").record(duration_s, attrs)
    if first_token_s is not None:
        histogram("gen_ai.server.time_to_first_token", "Time to generate the first token",
                  "s").record(first_token_s, attrs)
        if output_tokens > 1:
            histogram("gen_ai.server.time_per_output_token",
                      "Time per output token after the first", "s").record(
                (duration_s - first_token_s) / (output_tokens - 1), attrs)


# ---------------------------------------------------------------- registry

def resolve(model: str, version: str, result: str) -> None:
    counter("tether.registry.resolves", "Model resolutions by result").add(
        1, {"model": model, "version": version, "result": result})


# ------------------------------------------------------------ orchestrator

def placement(model: str, version: str, region: str, outcome: str) -> None:
    local_counter("tether.orchestrator.placements",
            "Dispatches of a request to a worker, by outcome").add(
        1, {"model": model, "version": version, "region": region, "outcome": outcome})


def retry(model: str, version: str, reason: str) -> None:
    counter("tether.orchestrator.retries",
            "Requests placed on another worker after one refused them").add(
        1, {"model": model, "version": version, "reason": reason})


def resumption(model: str, version: str) -> None:
    counter("tether.orchestrator.resumptions",
            "Streams resumed on another worker after theirs was lost").add(
        1, {"model": model, "version": version})


def dead_letter(model: str, version: str, code: str) -> None:
    counter("tether.orchestrator.dead_letters", "Failed jobs kept in the dead-letter queue").add(
        1, {"model": model, "version": version, "code": code})


_breaker_sets: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_breakers(breakers: Any) -> None:
    """``breakers.open``: 1 per (model, region) pool whose breaker is open or
    half-open (a ``CircuitBreakers``: its ``tripped()``), 0 once it closes."""
    if "tether.orchestrator.breakers.open" not in _instruments:
        _instruments["tether.orchestrator.breakers.open"] = _meter().create_observable_gauge(
            "tether.orchestrator.breakers.open", [_observe_breakers], "1",
            "Circuit breakers open or half-open (1) or closed (0), by model and region")
    _breaker_sets.add(breakers)


def _observe_breakers(options: CallbackOptions) -> Iterable[Observation]:
    pools: dict[tuple[str, str], bool] = {}
    for breakers in list(_breaker_sets):  # (several orchestrators only in tests)
        for key, tripped in breakers.tripped().items():
            pools[key] = pools.get(key, False) or tripped
    for (pool, region), tripped in pools.items():
        model, _, version = pool.partition("@")
        yield Observation(int(tripped), {"model": model, "version": version, "region": region})
