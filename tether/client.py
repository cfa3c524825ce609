"""The Python client library: connect to a gateway over Hyperswarm and stream.

    async with connect_gateway(bootstrap, token, gateway_key=key) as client:
        async for chunk in client.generate("kjv-textgen", "In the beginning"):
            print(chunk.payload.text, end="")
        async for chunk in client.chat("smollm2-135m-instruct", [("user", "Hi!")]):
            print(chunk.payload.text, end="")

The client is a Hyperswarm peer with a throwaway key; it dials the gateway by
its public key (or finds one on ``tether/gateway/<region>``) and calls the
generated ``GatewayStub``.

``sealed=True`` seals the input end to end (``tether.sealing``): the client asks
the gateway's ``Place`` which workers may run the request, seals the input to
them and opens the chunks itself, so not even the gateway sees the prompt or
the answer.

``infer_across`` streams through one of several gateways and, when that gateway is lost
mid-stream, resumes through the next without a chunk repeated or missing.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager

import trio
from opentelemetry import trace

from p2p_transport.cenc import SocketAddress
from tether import sealing, telemetry, topics
from tether.errors import Unavailable
from tether.keys import KeyPair
from tether.net import dial, wait_for_peer
from tether.net.swarm import SwarmNetwork
from tether.resume import Resume
from tether.rpc import RpcError, StatusCode
from tether.v1 import infer_pb2, services_pb2, services_rpc

log = logging.getLogger("tether.client")


class GatewayClient:
    def __init__(
        self,
        stub: services_rpc.GatewayStub,
        token: str,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.stub = stub
        self.metadata = {"authorization": f"Bearer {token}"}
        #: Wall-clock milliseconds, for the time a sealed request was issued.
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    async def infer(
        self,
        request: infer_pb2.Infer.Request,
        *,
        timeout: float | None = None,
        sealed: bool = False,
    ) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
        """Stream ``request``'s chunks; ``sealed`` seals it end to end (see above)."""
        key: sealing.ChunkKey | None = None
        # A client span: the trace starts here (or continues the caller's) and the
        # gateway, orchestrator and worker continue it through ``traceparent``.
        with telemetry.tracer().start_as_current_span(
            "client.infer",
            kind=trace.SpanKind.CLIENT,
            attributes={"tether.model": request.model_id, "rpc.system": "tether",
                        "rpc.method": "Infer"},
        ):
            if sealed:
                request, key = await self.seal(request, timeout=timeout)
            metadata = telemetry.outgoing_metadata(self.metadata)
            async with self.stub.Infer(request, metadata=metadata, timeout=timeout) as chunks:
                async for chunk in chunks:
                    yield chunk if key is None else key.open(chunk)
                    if chunk.done:
                        return  # the answer is whole: no need to wait for the stream's end

    async def seal(
        self, request: infer_pb2.Infer.Request, *, timeout: float | None = None
    ) -> tuple[infer_pb2.Infer.Request, sealing.ChunkKey]:
        """``request`` sealed to the workers the gateway's ``Place`` names, and the key
        that opens its chunks."""
        correlation_id = request.correlation_id or f"c-{uuid.uuid4().hex}"
        placed = await self.stub.Place(
            services_pb2.PlaceRequest(
                model_id=request.model_id,
                version=request.version,
                region=request.region,
                correlation_id=correlation_id,
            ),
            metadata=self.metadata,
            timeout=timeout or 30,
        )
        bound = infer_pb2.Infer.Request()
        bound.CopyFrom(request)
        bound.tenant_id = placed.tenant_id
        bound.correlation_id = correlation_id
        return sealing.seal_request(
            bound, [w.pub_key for w in placed.workers], now_ms=self.clock_ms()
        )

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        version: str = "",
        max_tokens: int = 0,
        min_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        greedy: bool = False,
        stop: Sequence[str] = (),
        timeout: float | None = None,
        sealed: bool = False,
        correlation_id: str = "",
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """Stream a completion. ``temperature`` 0 is the model's default and ``seed`` 0
        a fresh seed; ``greedy`` always takes the likeliest token (repeatable); ``stop``
        strings end the answer (not part of it); ``sealed`` seals the prompt and the
        answer end to end."""
        request = _text_request(model, version, correlation_id, max_tokens=max_tokens,
                                min_tokens=min_tokens, temperature=temperature, seed=seed,
                                greedy=greedy, stop=stop)
        request.input.text = prompt
        return self.infer(request, timeout=timeout, sealed=sealed)

    def chat(
        self,
        model: str,
        messages: Sequence[tuple[str, str] | Mapping[str, str]],
        *,
        version: str = "",
        max_tokens: int = 0,
        min_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        greedy: bool = False,
        stop: Sequence[str] = (),
        timeout: float | None = None,
        sealed: bool = False,
        correlation_id: str = "",
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """Stream the answer to a conversation, like ``generate``: ``messages`` are
        ``(role, content)`` pairs or ``{"role", "content"}`` mappings, oldest first; the
        worker renders them with the model's chat template (a model without one refuses
        with INVALID_ARGUMENT)."""
        request = _text_request(model, version, correlation_id, max_tokens=max_tokens,
                                min_tokens=min_tokens, temperature=temperature, seed=seed,
                                greedy=greedy, stop=stop)
        turns = request.input.messages.messages
        for m in messages:
            role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
            turns.add(role=role, content=content)
        request.input.messages.SetInParent()  # (an empty conversation is refused by name)
        return self.infer(request, timeout=timeout, sealed=sealed)

    def embed(
        self,
        model: str,
        texts: Sequence[str],
        *,
        version: str = "",
        timeout: float | None = None,
        sealed: bool = False,
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        request = infer_pb2.Infer.Request(model_id=model, version=version)
        request.input.texts.texts.extend(texts)
        return self.infer(request, timeout=timeout, sealed=sealed)

    async def list_models(self) -> services_pb2.ListModelsResponse:
        return await self.stub.ListModels(
            services_pb2.ListModelsRequest(), metadata=self.metadata, timeout=30
        )


def _text_request(
    model: str, version: str, correlation_id: str, *, max_tokens: int, min_tokens: int,
    temperature: float, seed: int, greedy: bool, stop: Sequence[str],
) -> infer_pb2.Infer.Request:
    request = infer_pb2.Infer.Request(
        model_id=model, version=version, correlation_id=correlation_id
    )
    p = request.params
    p.max_tokens, p.min_tokens, p.seed = max_tokens, min_tokens, seed
    if greedy:
        p.temperature_value = 0  # with presence: greedy decoding
    elif temperature:
        p.temperature_value = temperature  # (unset: the model's default)
    p.stop.extend(stop)
    return request


#: The legacy ``GenerationParams.temperature`` (no presence: 0 is the model's default)
#: asked for greedy decoding with a tiny value; ``temperature_value = 0`` says it now.
GREEDY_TEMPERATURE = 1e-6


#: Errors on which ``infer_across`` runs the request again through the next gateway: its
#: connection is gone (or it has nothing to run the request on).
_NEXT_GATEWAY = {StatusCode.UNAVAILABLE}


async def infer_across(
    clients: Sequence[GatewayClient],
    request: infer_pb2.Infer.Request,
    *,
    timeout: float | None = None,
) -> AsyncGenerator[infer_pb2.Infer.Chunk]:
    """Stream ``request`` through the first of ``clients`` (each a client of another
    gateway); a gateway lost mid-stream (UNAVAILABLE: its connection closed) hands the
    request to the next, which runs it again. What the client already has is skipped
    and checked by digest (``tether.resume``): the seed is pinned here, before the first
    attempt, so the replay reproduces it (or ``Diverged`` ends the stream); every chunk
    arrives once, in order. The lost gateway's job is left to end on its own (its
    orchestrator cancels a stream whose caller is gone), so each later attempt is a job of
    its own: the correlation id gets ``:g<attempt>`` and a fresh retry token."""
    if not clients:
        raise ValueError("infer_across needs at least one gateway client")
    if request.HasField("sealed"):
        raise ValueError("infer_across does not resume sealed requests (seal per attempt)")
    pinned = infer_pb2.Infer.Request()
    pinned.CopyFrom(request)
    pinned.correlation_id = request.correlation_id or f"c-{uuid.uuid4().hex}"
    if not pinned.params.seed:
        pinned.params.seed = secrets.randbits(63) or 1
    resume = Resume()
    last: RpcError | None = None
    for attempt, client in enumerate(clients):
        attempt_request = pinned
        if attempt:
            attempt_request = infer_pb2.Infer.Request()
            attempt_request.CopyFrom(pinned)
            attempt_request.correlation_id = f"{pinned.correlation_id[:120]}:g{attempt}"
            attempt_request.retry_token = secrets.token_hex(8)
        replay = resume.replay()
        try:
            async with aclosing(client.infer(attempt_request, timeout=timeout)) as chunks:
                async for chunk in chunks:
                    if not replay.accept(chunk):
                        continue
                    resume.delivered(chunk)
                    yield chunk
            return
        except RpcError as exc:
            if exc.code not in _NEXT_GATEWAY:
                raise
            last = resume.lost(f"gateway {attempt}", exc)
            log.warning("gateway %d lost: %s", attempt, exc.message)
    assert last is not None
    raise resume.unresumed(last)


@asynccontextmanager
async def connect_gateway(
    bootstrap: Sequence[SocketAddress],
    token: str,
    *,
    gateway_key: bytes | None = None,
    region: str = "local",
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> AsyncIterator[GatewayClient]:
    """A client of the gateway with ``gateway_key`` (or any on the region's topic)."""
    network = SwarmNetwork(KeyPair.generate(), {}, bootstrap=bootstrap, host=host)
    async with network.running():
        with trio.move_on_after(timeout) as scope:
            if gateway_key is not None:
                peer = await dial(network, gateway_key)
            else:
                topic = topics.gateway(region)
                await network.join(topic, server=False, client=True)
                peer = await wait_for_peer(network, topic)
        if scope.cancelled_caught:
            raise Unavailable(f"no gateway reachable within {timeout:g} s")
        yield GatewayClient(services_rpc.GatewayStub(peer.rpc), token)
