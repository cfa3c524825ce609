"""The Python client library: connect to a gateway over Hyperswarm and stream.

    async with connect_gateway(bootstrap, token, gateway_key=key) as client:
        async for chunk in client.generate("kjv-textgen", "In the beginning"):
            print(chunk.payload.text, end="")

The client is a Hyperswarm peer with a throwaway key; it dials the gateway by
its public key (or finds one on ``tether/gateway/<region>``) and calls the
generated ``GatewayStub``.

``sealed=True`` seals the input end to end (``tether.sealing``): the client asks
the gateway's ``Place`` which workers may run the request, seals the input to
them and opens the chunks itself, so not even the gateway sees the prompt or
the answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from p2p_transport.cenc import SocketAddress
from tether import sealing, topics
from tether.errors import Unavailable
from tether.keys import KeyPair
from tether.net import dial, wait_for_peer
from tether.net.swarm import SwarmNetwork
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
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """Stream ``request``'s chunks; ``sealed`` seals it end to end (see above)."""
        key: sealing.ChunkKey | None = None
        if sealed:
            request, key = await self.seal(request, timeout=timeout)
        async with self.stub.Infer(request, metadata=self.metadata, timeout=timeout) as chunks:
            async for chunk in chunks:
                yield chunk if key is None else key.open(chunk)

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
        timeout: float | None = None,
        sealed: bool = False,
        correlation_id: str = "",
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """Stream a completion. ``temperature`` 0 is the model's default and ``seed`` 0
        a fresh seed; ``greedy`` always takes the likeliest token (repeatable);
        ``sealed`` seals the prompt and the answer end to end."""
        request = infer_pb2.Infer.Request(
            model_id=model, version=version, correlation_id=correlation_id
        )
        request.input.text = prompt
        return self._generate(request, max_tokens=max_tokens, min_tokens=min_tokens,
                              temperature=temperature, seed=seed, greedy=greedy,
                              timeout=timeout, sealed=sealed)

    def chat(
        self,
        model: str,
        messages: Sequence[tuple[str, str]],
        *,
        version: str = "",
        max_tokens: int = 0,
        min_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
        greedy: bool = False,
        timeout: float | None = None,
        sealed: bool = False,
        correlation_id: str = "",
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        """Stream the answer to a conversation of ``(role, content)`` messages, which the
        worker renders with the model's own chat template; options as :meth:`generate`."""
        request = infer_pb2.Infer.Request(
            model_id=model, version=version, correlation_id=correlation_id
        )
        request.input.messages.messages.extend(
            infer_pb2.ChatMessage(role=role, content=content) for role, content in messages
        )
        return self._generate(request, max_tokens=max_tokens, min_tokens=min_tokens,
                              temperature=temperature, seed=seed, greedy=greedy,
                              timeout=timeout, sealed=sealed)

    def _generate(
        self,
        request: infer_pb2.Infer.Request,
        *,
        max_tokens: int,
        min_tokens: int,
        temperature: float,
        seed: int,
        greedy: bool,
        timeout: float | None,
        sealed: bool,
    ) -> AsyncIterator[infer_pb2.Infer.Chunk]:
        request.params.max_tokens = max_tokens
        request.params.min_tokens = min_tokens
        request.params.temperature = GREEDY_TEMPERATURE if greedy else temperature
        request.params.seed = seed
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


# A zero temperature on the wire means "the model's default"; workers decode any
# temperature below 1e-4 greedily, so greedy decoding is asked for with a tiny one.
GREEDY_TEMPERATURE = 1e-6


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
