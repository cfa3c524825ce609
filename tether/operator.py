"""The operator's tools: replaying a dead letter, and control messages (canary
rollouts, drains) for the orchestrators of a region.

Replaying a dead letter runs a failed job again.
A job that fails after admission keeps its request, as dispatched (tenant, pinned
version and seed included), in the Metadata Store's ``dead_letters``. ``replay``
claims one letter (so it runs once, however many operators try), gives the request a
fresh retry token, submits it to an orchestrator and streams the chunks back. The
orchestrator treats it like any request under a new retry token: the job is
re-admitted (and charged to the tenant's quota again), and a replay that fails
becomes a dead letter of its own.

The orchestrator takes ``Submit`` and control messages only from known callers
(``tether.callers``): the operator's key, ``<data-dir>/keys/operator.key``, is known
to services sharing that data folder through its ``operator.pub``; elsewhere pass it
with ``--allow-caller`` (and ``--allow-operator`` for control messages).

A control message's id is the wall-clock time in milliseconds: later than any message
this operator sent before, which is what orchestrators require.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from p2p_transport.cenc import SocketAddress
from tether import blocking, topics
from tether.errors import FailedPrecondition
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net import wait_for_peer
from tether.net.swarm import SwarmNetwork
from tether.rpc import RpcConnection
from tether.v1 import control_pb2, infer_pb2, presence_pb2, services_rpc


def operator_keypair(data_dir: Path) -> KeyPair:
    """The operator's key pair, made on first use; its ``.pub`` makes it a known caller."""
    keys = data_dir / "keys"
    keypair = KeyPair.load_or_generate(keys / "operator.key")
    keypair.save_public(keys / "operator.pub")
    return keypair


async def replay(
    store: MetadataStore,
    orchestrator: services_rpc.OrchestratorStub,
    letter_id: int,
    *,
    again: bool = False,
    timeout: float | None = None,
) -> AsyncIterator[infer_pb2.Infer.Chunk]:
    """Claim dead letter ``letter_id`` and stream its request's new run.

    NotFound if there is no such letter, FailedPrecondition if it was replayed already
    (unless ``again``) or is sealed end to end; the run's own errors are the
    orchestrator's.
    """
    letter = await blocking.run_sync(lambda: store.get_dead_letter(letter_id))
    if infer_pb2.Infer.Request.FromString(letter.request).HasField("sealed"):
        # Its input is sealed to workers and its answer to the requester: an operator
        # can neither read it nor send it again (workers refuse the replay).
        raise FailedPrecondition(
            f"dead letter {letter_id} is a sealed request: only its requester can send it "
            "again, sealed anew",
            details={"reason": "sealed"},
        )
    token = f"replay-{letter_id}-{secrets.token_hex(4)}"
    letter = await blocking.run_sync(
        lambda: store.claim_dead_letter(letter_id, token, again=again)
    )
    request = infer_pb2.Infer.Request.FromString(letter.request)
    request.retry_token = token
    async with orchestrator.Submit(request, timeout=timeout) as chunks:
        async for chunk in chunks:
            yield chunk


def _message_id(now_ms: int | None) -> int:
    """Wall-clock milliseconds: later than any id this operator sent before."""
    return now_ms or time.time_ns() // 1_000_000


def rollout_message(
    model_id: str, weights: Sequence[str], *, max_error_rate: float, region: str,
    now_ms: int | None = None,
) -> control_pb2.ControlMessage:
    """A rollout from ``VERSION=PERCENT`` texts (``1.0=90 1.1=10``); ValueError if they
    are not that (the orchestrator checks that they make 100%)."""
    msg = control_pb2.ControlMessage(region=region, id=_message_id(now_ms))
    msg.rollout.model_id = model_id
    msg.rollout.max_error_rate = max_error_rate
    for text in weights:
        version, sep, percent = text.partition("=")
        try:
            bps = round(float(percent) * 100)
        except ValueError:
            bps = -1
        if not sep or not version or not 0 <= bps <= 10_000:
            raise ValueError(f"{text!r} is not VERSION=PERCENT (e.g. 1.1=10)")
        msg.rollout.weights.add(
            model=presence_pb2.ModelKey(model_id=model_id, version=version), weight_bps=bps
        )
    return msg


def drain_message(
    worker_ids: Sequence[str], *, region: str, now_ms: int | None = None
) -> control_pb2.ControlMessage:
    msg = control_pb2.ControlMessage(region=region, id=_message_id(now_ms))
    msg.drain.worker_ids.extend(worker_ids)
    return msg


@asynccontextmanager
async def connect_orchestrator(
    bootstrap: Sequence[SocketAddress],
    keypair: KeyPair,
    *,
    region: str = "local",
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> AsyncIterator[RpcConnection]:
    """A connection to an orchestrator of ``region``, found on its control topic (make
    an ``OrchestratorStub`` or a ``ControlStub`` on it)."""
    network = SwarmNetwork(keypair, {}, bootstrap=bootstrap, host=host)
    async with network.running():
        topic = topics.control(region)
        await network.join(topic, server=False, client=True)
        peer = await wait_for_peer(network, topic, timeout=timeout)
        yield peer.rpc
