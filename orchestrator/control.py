"""``tether.v1.Control`` on the orchestrator: operators send drains and canary
rollouts (``orchestrator.rollout``) over the control topic.

Only operators may: keys given with ``--allow-operator`` or found as
``<data-dir>/keys/operator*.pub`` (``tether control`` writes ``operator.pub``).
Message ids are monotonic per operator key; an older or repeated id is refused
(``accepted: false``), so a message replayed later changes nothing.
"""

from __future__ import annotations

import logging

from orchestrator.discovery import DiscoverySub
from orchestrator.rollout import Rollouts
from tether.callers import CallerPolicy
from tether.errors import InvalidArgument
from tether.rpc import ServerContext
from tether.v1 import control_pb2, services_rpc

log = logging.getLogger("tether.orchestrator.control")


class ControlService(services_rpc.ControlServicer):
    def __init__(
        self,
        rollouts: Rollouts,
        discovery: DiscoverySub,
        *,
        region: str,
        operators: CallerPolicy,
    ) -> None:
        self.rollouts = rollouts
        self.discovery = discovery
        self.region = region
        self.operators = operators
        self._last_id: dict[str, int] = {}

    async def Apply(
        self, request: control_pb2.ControlMessage, context: ServerContext
    ) -> control_pb2.ControlAck:
        self.operators.check(context)
        ack = control_pb2.ControlAck(id=request.id)
        if request.region and request.region != self.region:
            ack.message = f"this orchestrator serves region {self.region}, not {request.region}"
            return ack
        last = self._last_id.get(context.peer)
        if last is not None and request.id <= last:
            ack.message = f"message id {request.id} is not after {last}: ignored"
            return ack
        action = request.WhichOneof("action")
        if action == "rollout":
            state = self.rollouts.apply_rollout(request.rollout)
            ack.message = (f"rollout {state.summary()}, halting a version past "
                           f"{state.max_error_rate:g} errors" if state.versions
                           else f"rollout of {state.model_id} ended: 'latest' again")
        elif action == "drain":
            present = {e.worker_id for e in self.discovery.snapshot()}
            ack.message = self.rollouts.apply_drain(request.drain, present)
        else:
            raise InvalidArgument("the control message has no action (drain or rollout)")
        self._last_id[context.peer] = request.id
        ack.accepted = True
        log.info("control %d from %s...: %s", request.id, context.peer[:16], ack.message)
        return ack
