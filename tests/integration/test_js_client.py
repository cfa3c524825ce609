"""The JavaScript client (clients/js) against a Python gateway on a loopback testnet: the
messages generated from proto/ for JavaScript, Tether's RPC protocol over Node's own
hyperdht, protomux and secret-stream, streaming, unary calls and typed errors.

The fleet behind the gateway is the service harness with the scripted engine (the real
models over every edge are in test_request_path.py); chat runs on the real engine over a
tiny decoder with a chat template (tests/services/chat_fleet.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import trio

from tests.integration.testnet import node_testnet
from tests.services.chat_fleet import CHAT, GRU, chat_fleet
from tests.services.harness import MODEL, ScriptedEngine, fleet, swarm_networks, wall_ms
from tether.client import GatewayClient

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "clients" / "js" / "examples" / "infer.js"


async def run_example(*argv: str, stderr: list[str] | None = None) -> tuple[int, list[dict]]:
    node = shutil.which("node")
    assert node is not None
    done = await trio.run_process(
        [node, str(EXAMPLE), *argv], capture_stdout=True, capture_stderr=True, check=False,
        cwd=str(ROOT),
    )
    if stderr is not None:
        stderr.append(done.stderr.decode())
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    if done.returncode not in (0, 1):
        print(done.stderr.decode()[-3000:], file=sys.stderr)
    return done.returncode, lines


def test_the_javascript_client_streams_lists_and_gets_typed_errors(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(120):
            async with (
                node_testnet(3) as bootstrap,
                fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
            ):
                engine = ScriptedEngine([(MODEL, "1.0")], step_s=0.01)
                await f.add_worker("w1", engine=engine)
                await f.discovery.wait_for(lambda s: len(s) == 1)
                # The bootstrap list as `tether up` prints it: comma-separated.
                common = ["--bootstrap", ",".join(f"{b.host}:{b.port}" for b in bootstrap),
                          "--gateway", f.gateway_net.public_key.hex()]
                token = f.store.issue_token("acme")
                code, lines = await run_example(
                    *common, "--token", token, "--model", MODEL, "--max-tokens", "5")
                assert code == 0, lines
                *chunks, done = lines
                assert [c["text"] for c in chunks] == [" w0", " w1", " w2", " w3", " w4"]
                assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
                assert done == {"done": True, "outputTokens": 5}
                # --greedy asks for temperature 0 with presence (temperature_value).
                code, lines = await run_example(
                    *common, "--token", token, "--model", MODEL, "--max-tokens", "2",
                    "--greedy")
                assert code == 0 and lines[-1] == {"done": True, "outputTokens": 2}
                sent = engine.requests[-1].params
                assert sent.HasField("temperature_value") and sent.temperature_value == 0
                code, lines = await run_example(*common, "--token", token, "--list-models")
                assert (code, lines) == (0, [{"models": [f"{MODEL}@1.0"]}])
                code, lines = await run_example(*common, "--token", "tt_wrong", "--model", MODEL)
                assert code == 1 and lines[-1]["error"] == "UNAUTHENTICATED"
                code, lines = await run_example(
                    *common, "--token", token, "--model", MODEL, "--max-tokens", "100000")
                assert code == 1 and lines[-1]["error"] == "INVALID_ARGUMENT"
                assert "max_tokens" in lines[-1]["message"]

    trio.run(main)


@pytest.mark.parametrize(("argv", "wanted"), [
    (["--bootstrap", "127.0.0.1", "--gateway", "ab" * 32],
     'infer.js: bootstrap "127.0.0.1" is not HOST:PORT'),
    (["--bootstrap", "127.0.0.1:9", "--gateway", "nothex"],
     'infer.js: --gateway "nothex" is not a public key (64 hex characters)'),
    (["--bootstrap", "127.0.0.1:9", "--gateway", "ab" * 32, "--token", "tt_x"],
     "infer.js: PEER_NOT_FOUND"),  # nothing answers there
])
def test_the_javascript_example_reports_mistakes_in_one_line(
    argv: list[str], wanted: str
) -> None:
    async def main() -> None:
        err: list[str] = []
        with trio.fail_after(60):
            code, lines = await run_example(*argv, stderr=err)
        assert (code, lines) == (1, [])
        assert err[0].startswith(wanted) and err[0].count("\n") == 1, err[0]
        assert "    at " not in err[0]  # no stack trace

    trio.run(main)


def test_the_javascript_client_chats_through_the_model_template(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(120):
            async with (
                node_testnet(3) as bootstrap,
                chat_fleet(tmp_path, networks=swarm_networks(bootstrap), clock_ms=wall_ms) as f,
            ):
                token = f.store.issue_token("acme")
                common = ["--bootstrap", f"{bootstrap[0].host}:{bootstrap[0].port}",
                          "--gateway", f.gateway_net.public_key.hex(), "--token", token,
                          "--max-tokens", "6", "--greedy", "--system", "Be brief.",
                          "--chat", "Hello there"]
                code, lines = await run_example(*common, "--model", CHAT)
                assert code == 0, lines
                *chunks, done = lines
                assert done == {"done": True, "outputTokens": 6}
                client = GatewayClient(await f.gateway(), token)
                same = [c.payload.text async for c in client.chat(
                    CHAT, [("system", "Be brief."), ("user", "Hello there")], max_tokens=6,
                    greedy=True)]
                assert "".join(c["text"] for c in chunks) == "".join(same) != ""
                code, lines = await run_example(*common, "--model", GRU)
                assert code == 1 and lines[-1]["error"] == "INVALID_ARGUMENT"
                assert "no chat template" in lines[-1]["message"]

    trio.run(main)
