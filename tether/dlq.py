"""Replaying a dead letter: the operator's way to run a failed job again.

A job that fails after admission keeps its request, as dispatched (tenant, pinned
version and seed included), in the Metadata Store's ``dead_letters``. ``replay``
claims one letter (so it runs once, however many operators try), gives the request a
fresh retry token, submits it to an orchestrator and streams the chunks back. The
orchestrator treats it like any request under a new retry token: the job is
re-admitted (and charged to the tenant's quota again), and a replay that fails
becomes a dead letter of its own.

The orchestrator takes ``Submit`` only from known callers (``tether.callers``): the
operator's key, ``<data-dir>/keys/operator.key``, is known to services sharing that
data folder through its ``operator.pub``; elsewhere pass it with ``--allow-caller``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from p2p_transport.cenc import SocketAddress
from tether import blocking, topics
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net import wait_for_peer
from tether.net.swarm import SwarmNetwork
from tether.v1 import infer_pb2, services_rpc


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
    (unless ``again``); the run's own errors are the orchestrator's.
    """
    token = f"replay-{letter_id}-{secrets.token_hex(4)}"
    letter = await blocking.run_sync(
        lambda: store.claim_dead_letter(letter_id, token, again=again)
    )
    request = infer_pb2.Infer.Request.FromString(letter.request)
    request.retry_token = token
    async with orchestrator.Submit(request, timeout=timeout) as chunks:
        async for chunk in chunks:
            yield chunk


@asynccontextmanager
async def connect_orchestrator(
    bootstrap: Sequence[SocketAddress],
    keypair: KeyPair,
    *,
    region: str = "local",
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> AsyncIterator[services_rpc.OrchestratorStub]:
    """A stub for an orchestrator of ``region``, found on its control topic."""
    network = SwarmNetwork(keypair, {}, bootstrap=bootstrap, host=host)
    async with network.running():
        topic = topics.control(region)
        await network.join(topic, server=False, client=True)
        peer = await wait_for_peer(network, topic, timeout=timeout)
        yield services_rpc.OrchestratorStub(peer.rpc)
