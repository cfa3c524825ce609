"""Chat input (``Input.messages``) on the edges other than HTTP: the gRPC edge with the
generated grpcio stub, the Python client's ``chat`` over the gateway's Hyperswarm RPC,
and ``tether infer --chat``. The worker runs the real engine over a tiny decoder with a
chat template (``tests/services/chat_fleet.py``), so each answer is the model's to the
rendered conversation; every edge gets the same greedy answer.

gRPC runs its own threads, so the real clock.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from app import cli
from gateway.grpc_edge import GrpcEdge
from tests.services.chat_fleet import CHAT, GRU, chat_fleet
from tests.services.harness import Fleet, wall_ms
from tether import blocking
from tether.client import GatewayClient
from tether.v1 import infer_pb2, services_pb2_grpc

SYSTEM, USER = "Be brief.", "Hello there"


def chat_request(model: str = CHAT) -> infer_pb2.Infer.Request:
    request = infer_pb2.Infer.Request(model_id=model)
    request.input.messages.messages.add(role="system", content=SYSTEM)
    request.input.messages.messages.add(role="user", content=USER)
    request.params.max_tokens = request.params.min_tokens = 8
    request.params.temperature_value = 0  # greedy: one answer whichever edge asks
    return request


def grpc_calls(port: int, token: str) -> dict[str, Any]:
    """What a plain gRPC client sees (runs in a thread)."""
    out: dict[str, Any] = {}
    metadata = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services_pb2_grpc.GatewayStub(channel)
        out["chunks"] = list(stub.Infer(chat_request(), metadata=metadata, timeout=60))
        try:
            list(stub.Infer(chat_request(GRU), metadata=metadata, timeout=60))
        except grpc.RpcError as exc:
            out["gru"] = (exc.code(), exc.details())
    return out


def in_chat_fleet(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        async with chat_fleet(tmp_path, clock_ms=wall_ms) as f:
            await body(f)

    with blocking.inline():
        trio.run(main)


async def collect(chunks: AsyncIterator[infer_pb2.Infer.Chunk]) -> list[infer_pb2.Infer.Chunk]:
    return [c async for c in chunks]


def test_messages_reach_the_model_over_grpc_and_the_python_client(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        token = f.store.issue_token("acme")
        async with trio.open_nursery() as nursery:
            port = await nursery.start(GrpcEdge(f.gateway_service, "127.0.0.1", 0).run)
            over_grpc = await trio.to_thread.run_sync(grpc_calls, port, token)
            nursery.cancel_scope.cancel()
        client = GatewayClient(await f.gateway(), token)
        as_pairs = await collect(client.chat(CHAT, [("system", SYSTEM), ("user", USER)],
                                             max_tokens=8, min_tokens=8, greedy=True))
        as_dicts = await collect(client.chat(
            CHAT, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
            max_tokens=8, min_tokens=8, greedy=True))
        prompt = await collect(client.generate(CHAT, USER, max_tokens=8, min_tokens=8,
                                               greedy=True))

        def text(chunks: list[infer_pb2.Infer.Chunk]) -> str:
            return "".join(c.payload.text for c in chunks)

        chunks = over_grpc["chunks"]
        assert chunks[-1].done and chunks[-1].finish_reason == infer_pb2.FINISH_REASON_LENGTH
        assert chunks[-1].usage.output_tokens == 8
        assert text(chunks) and text(chunks) == text(as_pairs) == text(as_dicts)
        # The worker rendered the conversation with the template: many more prompt tokens
        # than the user's words alone.
        rendered = chunks[-1].usage.input_tokens
        assert rendered == as_pairs[-1].usage.input_tokens > prompt[-1].usage.input_tokens + 5
        code, details = over_grpc["gru"]
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no chat template" in details
        assert f.store.dead_letters() == []  # the client's error, not the service's

    in_chat_fleet(tmp_path, body)


def test_tether_infer_chat_prints_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(f: Fleet) -> None:
        token = f.store.issue_token("acme")
        asked: list[Any] = []

        @asynccontextmanager
        async def connect(bootstrap: Any, token: str, **kwargs: Any
                          ) -> AsyncIterator[GatewayClient]:
            # The CLI's client, over the fleet's in-memory network instead of a DHT.
            client = GatewayClient(await f.gateway(), token)
            chat = client.chat

            def spy(*args: Any, **kw: Any) -> Any:
                asked.append((args, kw))
                return chat(*args, **kw)

            client.chat = spy  # type: ignore[method-assign]
            yield client

        monkeypatch.setattr("tether.client.connect_gateway", connect)
        argv = ["infer", "--bootstrap", "127.0.0.1:1", "--token", token, "--model", CHAT,
                "--system", SYSTEM, "--chat", USER, "--greedy", "--max-tokens", "8"]
        args = cli.build_parser().parse_args(argv)
        assert await cli._infer(args) == 0
        (model, messages), kw = asked[0]
        assert (model, messages) == (CHAT, [("system", SYSTEM), ("user", USER)])
        assert kw["greedy"] and kw["max_tokens"] == 8
        out, err = capsys.readouterr()
        client = GatewayClient(await f.gateway(), token)
        direct = await collect(client.chat(CHAT, messages, max_tokens=8, greedy=True))
        assert out == "".join(c.payload.text for c in direct) + "\n"
        assert f"tokens from {CHAT}" in err
        with pytest.raises(cli.process.ConfigError, match="--system goes with --chat"):
            await cli._infer(argparse.Namespace(**{**vars(args), "chat": None}))

    in_chat_fleet(tmp_path, body)
