"""The asyncio and blocking faces of the Python client (``tether.aio``), used from a real
asyncio program and a plain thread against a real network: every service on Hyperswarm
over a loopback Python testnet, with the harness's scripted engine in the worker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p_transport.cenc import SocketAddress
from p2p_transport.testnet import open_testnet
from tests.services.harness import MODEL, ScriptedEngine, fleet, swarm_networks, wall_ms
from tether.aio import AsyncGatewayClient, GatewayClientSync
from tether.errors import TetherError, Unavailable
from tether.keys import KeyPair
from tether.rpc import StatusCode

pytestmark = pytest.mark.slow


def asyncio_program(bootstrap: list[SocketAddress], token: str, gateway: bytes) -> dict[str, Any]:
    """What an asyncio application does with the client (run by ``asyncio.run``)."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:  # the application's own asyncio work goes on meanwhile
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        background = asyncio.create_task(ticker())
        client = await AsyncGatewayClient.connect(bootstrap, token, gateway_key=gateway)
        async with client:
            seen["generate"] = [c async for c in client.generate(MODEL, "hi", max_tokens=5)]
            seen["chat"] = [c async for c in client.chat(
                MODEL, [("system", "be brief"), {"role": "user", "content": "hi"}],
                max_tokens=3)]
            seen["models"] = await client.list_models()
            # Two streams at once, as two requests of a web app would be.
            seen["together"] = await asyncio.gather(*(
                _collect(client.generate(MODEL, f"p{i}", max_tokens=4)) for i in range(2)))
            for name, model in (("unknown", "no-such-model"), ("invalid", "Not A Name")):
                try:
                    await _collect(client.generate(model, "hi"))
                except TetherError as exc:
                    seen[name] = exc
            # A reader that leaves after two chunks of many: the request stops upstream.
            seen["left_after"] = []
            async with contextlib.aclosing(client.generate(MODEL, "long", max_tokens=500)) as it:
                async for chunk in it:
                    seen["left_after"].append(chunk)
                    if len(seen["left_after"]) == 2:
                        break
        seen["ticks"] = ticks
        background.cancel()
        try:
            await AsyncGatewayClient.connect(bootstrap, token, gateway_key=KeyPair.generate()
                                             .public_key, timeout=2)
        except Unavailable as exc:
            seen["no_gateway"] = exc

    asyncio.run(main())
    return seen


async def _collect(chunks: Any) -> list[Any]:
    return [c async for c in chunks]


def blocking_program(bootstrap: list[SocketAddress], token: str, gateway: bytes) -> list[Any]:
    with GatewayClientSync.connect(bootstrap, token, gateway_key=gateway) as client:
        chunks = list(client.chat(MODEL, [("user", "hello")], max_tokens=4))
        assert client.list_models().models
        return chunks


def test_an_asyncio_program_and_a_thread_use_the_client(tmp_path: Path) -> None:
    engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.005)
    out: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(120):
            async with open_testnet(3) as testnet, fleet(
                tmp_path, networks=swarm_networks(testnet.bootstrap), clock_ms=wall_ms
            ) as f:
                await f.add_worker("w1", engine=engine)
                await f.discovery.wait_for(lambda s: len(s) == 1)
                token = f.store.issue_token("acme")
                gateway = f.gateway_net.public_key
                out["aio"] = await trio.to_thread.run_sync(
                    asyncio_program, testnet.bootstrap, token, gateway)
                out["sync"] = await trio.to_thread.run_sync(
                    blocking_program, testnet.bootstrap, token, gateway)
                with trio.fail_after(10):  # the request left early stopped at the worker
                    if engine.active:
                        await engine.idle.wait()
                out["steps"] = engine.steps

    trio.run(main)
    aio = out["aio"]
    text = "".join(c.payload.text for c in aio["generate"])
    assert text == " w0 w1 w2 w3 w4" and aio["generate"][-1].done
    assert aio["chat"][-1].done and aio["chat"][-1].usage.output_tokens == 3
    assert engine.requests[1].input.messages.messages[1].content == "hi"
    assert [m.model.model_id for m in aio["models"].models] == [MODEL]
    assert all(len(chunks) == 4 and chunks[-1].done for chunks in aio["together"])
    # Errors as the trio client raises them (one error, not a trio exception group).
    assert aio["unknown"].code == StatusCode.NOT_FOUND, aio["unknown"]
    assert aio["invalid"].code == StatusCode.INVALID_ARGUMENT, aio["invalid"]
    assert len(aio["left_after"]) == 2
    assert out["steps"] < 200  # not the 500 steps asked for: the request was cancelled
    assert aio["ticks"] > 0  # the asyncio loop ran on while the client worked
    assert isinstance(aio["no_gateway"], Unavailable)
    assert "".join(c.payload.text for c in out["sync"]) == " w0 w1 w2 w3"
