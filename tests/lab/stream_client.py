"""A Tether client for the lab tests, run inside a lab host: one connection to each gateway
named with ``--gateway`` (the first preferred), requests through ``tether.client.infer_across``
(a gateway lost mid-stream hands the stream to the next). Prints JSON lines on stdout:

* ``warm``: a 2-token request until one succeeds -> ``{"warm": seconds}``;
* ``place --workers N``: the gateway's ``Place`` until ``--rounds`` answers in a row name at
  least N workers -> ``{"placed": [worker ids]}``;
* ``stream --streams N --tokens T --after A``: N greedy streams at once; ``{"after": ...}``
  once every stream has A chunks (the moment a test injects its fault), then
  ``{"streams": [{"cid", "text", "chunks", "times", "error"}]}`` (``times``: when each chunk
  came, ``time.monotonic()``, which every namespace of the machine shares).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tether.client import GatewayClient, connect_gateway, infer_across
from tether.errors import TetherError
from tether.net.swarm import parse_address
from tether.rpc import RpcError
from tether.v1 import infer_pb2, services_pb2

MODEL = "kjv-textgen"
PROMPT = "and the lord spake unto moses, saying"


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def request(cid: str, tokens: int) -> infer_pb2.Infer.Request:
    req = infer_pb2.Infer.Request(model_id=MODEL, correlation_id=cid, retry_token="t1")
    req.input.text = PROMPT
    req.params.max_tokens = req.params.min_tokens = tokens
    req.params.temperature_value = 0  # greedy: every stream the same text
    return req


async def warm(clients: list[GatewayClient], timeout: float) -> None:
    start = time.monotonic()
    with trio.fail_after(timeout):
        while True:
            try:
                [c async for c in infer_across(clients, request(f"warm-{time.time_ns()}", 2))]
                break
            except (RpcError, TetherError) as exc:
                print(f"warm: {exc}", file=sys.stderr)
                await trio.sleep(1)
    say({"warm": round(time.monotonic() - start, 2)})


async def place(clients: list[GatewayClient], workers: int, rounds: int,
                timeout: float) -> None:
    in_a_row, seen = 0, []
    with trio.fail_after(timeout):
        while in_a_row < rounds:
            try:
                placed = await clients[0].stub.Place(
                    services_pb2.PlaceRequest(model_id=MODEL), metadata=clients[0].metadata,
                    timeout=10)
                seen = sorted(w.worker_id for w in placed.workers)
            except RpcError as exc:
                print(f"place: {exc}", file=sys.stderr)
                seen = []
            in_a_row = in_a_row + 1 if len(seen) >= workers else 0
            if in_a_row < rounds:
                await trio.sleep(0.5)
    say({"placed": seen})


async def stream(clients: list[GatewayClient], args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = [
        {"cid": f"{args.prefix}-{i}", "text": "", "chunks": 0, "times": [], "error": ""}
        for i in range(args.streams)]
    after = trio.Event()

    def check_after() -> None:
        if not after.is_set() and all(r["error"] or r["chunks"] >= args.after for r in results):
            after.set()
            say({"after": time.monotonic()})

    async def one(r: dict[str, Any]) -> None:
        try:
            async for chunk in infer_across(clients, request(r["cid"], args.tokens)):
                r["times"].append(round(time.monotonic(), 3))
                r["text"] += chunk.payload.text
                r["chunks"] += 1
                check_after()
        except (RpcError, TetherError) as exc:
            r["error"] = str(exc)[:500]
            r["times"].append(round(time.monotonic(), 3))
        check_after()

    async with trio.open_nursery() as nursery:
        for r in results:
            nursery.start_soon(one, r)
    say({"streams": results})


async def main(args: argparse.Namespace) -> None:
    bootstrap = [parse_address(b) for b in args.bootstrap.split(",")]
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect_gateway(
            bootstrap, args.token, gateway_key=bytes.fromhex(key), region=args.region,
            host=args.host, timeout=60)) for key in args.gateway]
        if args.mode == "warm":
            await warm(clients, args.timeout)
        elif args.mode == "place":
            await place(clients, args.workers, args.rounds, args.timeout)
        else:
            await stream(clients, args)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["warm", "place", "stream"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--region", default="us-east")
    p.add_argument("--gateway", action="append", required=True, help="gateway key (hex)")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--after", type=int, default=20)
    p.add_argument("--prefix", default="s")
    return p.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
