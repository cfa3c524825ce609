"""Canary rollouts gated by error budgets, and drains: the orchestrator's side of the
control topic (``tether.v1.Control``, spec §3.3 and the operations roadmap).

A ``Rollout`` gives versions of one model shares of the traffic that does not name a
version, in basis points. Each request goes to a version chosen by a hash of its
correlation id, so a retry of the same request lands on the same version. Every
dispatch outcome is counted per version; once a version has served
``min_requests`` and more than ``max_error_rate`` of them failed (worker failures
only, not a caller's bad input), it is *halted*: its share goes to the versions still
in the rollout, in proportion to theirs. The last version standing is never halted.

A ``Drain`` takes workers out of placement (every worker present when it names none);
their in-flight work finishes. A worker that leaves and comes back is placed again.

No I/O here: ``orchestrator.service`` feeds it messages and outcomes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import dataclass, field

from orchestrator.breaker import WORKER_FAILURES
from tether.errors import InvalidArgument
from tether.rpc import StatusCode
from tether.v1 import control_pb2

TOTAL_BPS = 10_000
#: Outcomes a version must have before its error rate can halt it.
MIN_REQUESTS = 20


@dataclass
class _Version:
    weight_bps: int
    served: int = 0
    failed: int = 0
    halted: bool = False


@dataclass
class RolloutState:
    model_id: str
    max_error_rate: float
    versions: dict[str, _Version] = field(default_factory=dict)

    def live(self) -> dict[str, int]:
        """Each version's share now, in basis points (halted ones' shares redistributed)."""
        live = {v: s.weight_bps for v, s in self.versions.items() if not s.halted}
        total = sum(live.values())
        if total == 0:  # every live version had 0 bps: share equally
            return {v: TOTAL_BPS // len(live) for v in live}
        return {v: w * TOTAL_BPS // total for v, w in live.items()}

    def summary(self) -> str:
        parts = []
        for version, share in sorted(self.live().items()):
            parts.append(f"{version}={share / 100:g}%")
        for version, s in sorted(self.versions.items()):
            if s.halted:
                parts.append(f"{version} halted ({s.failed}/{s.served} failed)")
        return f"{self.model_id}: " + ", ".join(parts)


class Rollouts:
    def __init__(self, *, min_requests: int = MIN_REQUESTS) -> None:
        self.min_requests = min_requests
        self._rollouts: dict[str, RolloutState] = {}
        self.drained: set[str] = set()

    def apply_rollout(self, msg: control_pb2.Rollout) -> RolloutState:
        """Start (or replace) the rollout of ``msg.model_id``; InvalidArgument if malformed.
        Weights summing to 0 end the rollout (traffic goes back to 'latest')."""
        if not msg.model_id:
            raise InvalidArgument("rollout.model_id is required")
        if not 0 <= msg.max_error_rate <= 1:
            raise InvalidArgument("rollout.max_error_rate must be within [0, 1]")
        versions: dict[str, _Version] = {}
        for w in msg.weights:
            if w.model.model_id not in ("", msg.model_id):
                raise InvalidArgument(f"a weight names model {w.model.model_id!r}, not "
                                      f"{msg.model_id!r}")
            if not w.model.version:
                raise InvalidArgument("every weight names a version")
            if w.model.version in versions:
                raise InvalidArgument(f"version {w.model.version} is weighted twice")
            versions[w.model.version] = _Version(w.weight_bps)
        total = sum(v.weight_bps for v in versions.values())
        if total == 0:
            self._rollouts.pop(msg.model_id, None)
            return RolloutState(msg.model_id, msg.max_error_rate)
        if total != TOTAL_BPS:
            raise InvalidArgument(f"weights add up to {total} bps; they must make {TOTAL_BPS}")
        state = RolloutState(msg.model_id, msg.max_error_rate or 1.0, versions)
        self._rollouts[msg.model_id] = state
        return state

    def active(self) -> list[tuple[str, RolloutState]]:
        """The rollouts in progress, by model."""
        return sorted(self._rollouts.items())

    def get(self, model_id: str) -> RolloutState | None:
        return self._rollouts.get(model_id)

    def choose(self, model_id: str, correlation_id: str) -> str | None:
        """The version for a request that named none, or None (no rollout: 'latest')."""
        state = self._rollouts.get(model_id)
        if state is None:
            return None
        point = int.from_bytes(
            hashlib.blake2b(correlation_id.encode(), digest_size=8).digest(), "big"
        ) % TOTAL_BPS
        live = sorted(state.live().items())
        for version, share in live:
            if point < share:
                return version
            point -= share
        return live[-1][0]  # rounding left a few basis points over

    def record(self, model_id: str, version: str, code: StatusCode) -> str | None:
        """Count one outcome; the summary of the rollout if this outcome halted a version."""
        state = self._rollouts.get(model_id)
        if state is None or version not in state.versions:
            return None
        v = state.versions[version]
        if code != StatusCode.OK and code not in WORKER_FAILURES:
            return None  # the caller's fault says nothing about the version
        v.served += 1
        v.failed += code != StatusCode.OK
        over = v.failed > state.max_error_rate * v.served
        others = [o for name, o in state.versions.items() if name != version and not o.halted]
        if not v.halted and over and v.served >= self.min_requests and others:
            v.halted = True
            return state.summary()
        return None

    def apply_drain(self, msg: control_pb2.Drain, present: set[str]) -> str:
        """Drain the named workers, or every worker in ``present`` when none is named."""
        workers = set(msg.worker_ids) or present
        self.drained |= workers
        return f"draining {', '.join(sorted(workers)) or 'no worker (none present)'}"

    def placeable(self, worker_id: str) -> bool:
        return worker_id not in self.drained

    def forget(self, present: Container[str]) -> None:
        """Workers that left are drained no more (a restarted one is placed again)."""
        self.drained -= {w for w in self.drained if w not in present}
