"""The ``tether`` command.

    tether up [--metrics]             a whole local network; runs until Ctrl-C (--metrics:
                                      each service its own metrics and probes port)
    tether demo --prompt TEXT         the same, one prompt streamed, then a clean stop
    tether infer --gateway KEY ...    talk to a running gateway (--chat MESSAGE: a chat
                                      turn through the model's chat template)
    tether gateway|orchestrator|registry|worker [...]   run one service
    tether token --tenant NAME [--e2e]  issue a tenant token (prints it once); --e2e
                                      seals the tenant's requests end to end
    tether admit KEY | tether revoke KEY | tether admit --list   which worker keys get work
    tether status                     one screen of the running network
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from tether import process
from tether.errors import TetherError
from tether.metadata.store import MetadataStore, sqlite_url

if TYPE_CHECKING:
    from tether.v1 import infer_pb2

SERVICES = {
    "gateway": "gateway.main",
    "orchestrator": "orchestrator.main",
    "registry": "registry.main",
    "worker": "worker.main",
}
DEFAULT_MODEL = "smollm2-135m-instruct"
# Shipped models without a chat template: their prompt is always text to continue.
TEXT_ONLY_MODELS = {"kjv-textgen"}
DEFAULT_CHAT_PROMPT = "What is the capital of France?"
DEFAULT_TEXT_PROMPT = "And God said"


def _service_main(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(SERVICES[name])
    return int(module.main(argv))


async def _stream_prompt(
    bootstrap: list, token: str, gateway_key: bytes | None, args: argparse.Namespace
) -> int:
    from tether.client import connect_gateway

    async with connect_gateway(
        bootstrap, token, gateway_key=gateway_key, region=args.region, host=args.host,
        timeout=args.timeout,
    ) as client:
        if args.embed:
            async for chunk in client.embed(
                args.model, args.embed, timeout=args.timeout, sealed=args.sealed
            ):
                _print_payload(chunk.payload)
            return 0
        usage = None
        as_text = args.text or args.model in TEXT_ONLY_MODELS
        prompt = args.prompt or (DEFAULT_TEXT_PROMPT if as_text else DEFAULT_CHAT_PROMPT)
        options: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature,
                   "seed": args.seed, "greedy": args.greedy, "timeout": args.timeout,
                   "sealed": args.sealed}
        if as_text:
            chunks = client.generate(args.model, prompt, **options)
        else:  # the prompt is the user's message, rendered by the model's chat template
            chunks = client.chat(args.model, [("user", prompt)], **options)
        echoed = not as_text
        async for chunk in chunks:
            if not echoed:  # a continued prompt, once the answer starts
                sys.stdout.write(prompt)
                echoed = True
            if chunk.payload.text:
                sys.stdout.write(chunk.payload.text)
                sys.stdout.flush()
            if chunk.done:
                usage = chunk.usage
        print()
        if usage is not None:
            print(
                f"-- {usage.output_tokens} tokens from {args.model}, "
                f"{usage.compute_ms} ms compute",
                file=sys.stderr,
            )
        return 0


def _add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=None,
                   help=f"the user's message (default {DEFAULT_CHAT_PROMPT!r}), or with --text "
                   f"the text to continue (default {DEFAULT_TEXT_PROMPT!r})")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL} (default: SmolLM2-135M-Instruct, a chat model) or "
                   "kjv-textgen (continues text)")
    p.add_argument("--text", action="store_true",
                   help="send the prompt as text to continue, not as a chat message "
                   f"(always so for {', '.join(sorted(TEXT_ONLY_MODELS))})")
    p.add_argument("--embed", action="append", metavar="TEXT",
                   help="embed TEXT instead (repeatable)")
    p.add_argument("--max-tokens", type=process.whole(0), default=40,
                   help="the most tokens to generate (default %(default)s; 0: the model's "
                   "own limit)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (default 0: the model's own, 0.8 for kjv-textgen)")
    p.add_argument("--greedy", action="store_true",
                   help="always take the likeliest token: the same prompt gives the same answer")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed for a repeatable answer (default 0: a fresh one each time)")
    p.add_argument("--timeout", type=process.positive(), default=120.0,
                   help="seconds to wait for the gateway and the whole answer "
                   "(default %(default)s)")
    p.add_argument("--region", type=_region, default=os.environ.get("TETHER_REGION", "local"),
                   help="the region whose gateway to use (default: TETHER_REGION or local)")
    p.add_argument("--host", default=os.environ.get("TETHER_HOST", "127.0.0.1"),
                   help="the local address to talk from (default 127.0.0.1; on a network of "
                   "machines, this machine's address)")
    p.add_argument("--sealed", action="store_true",
                   help="seal the prompt and the answer end to end to the chosen worker: "
                   "the gateway and orchestrator see only ciphertext")


def _region(text: str) -> str:
    """A flag type: a region slug (one line, not a traceback, when it is not)."""
    try:
        return process.region(text)
    except process.ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--region: ")) from None


def _add_store_arguments(p: argparse.ArgumentParser) -> None:
    """Where the Metadata Store is: the data folder's SQLite file, or --metadata-url."""
    p.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", "var/tether"),
                   help="the data folder `tether up` made (env TETHER_DATA_DIR; default "
                   "%(default)s)")
    p.add_argument("--metadata-url", default=os.environ.get("TETHER_METADATA_URL"),
                   help="the Metadata Store's URL instead (env TETHER_METADATA_URL)")


def _add_operator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                   help="DHT bootstrap node (repeatable or comma-separated; env "
                   "TETHER_BOOTSTRAP)")
    p.add_argument("--region", type=_region, default=os.environ.get("TETHER_REGION", "local"),
                   help="the region's orchestrators (default: TETHER_REGION or local)")
    p.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", "var/tether"),
                   help="where the operator key is (keys/operator.key)")
    p.add_argument("--timeout", type=process.positive(), default=30.0,
                   help="seconds to find an orchestrator and get its answer "
                   "(default %(default)s)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tether")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = process.ArgumentParser(prog="tether", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"tether {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_network_commands(sub)
    _add_client_commands(sub)
    _add_operator_commands(sub)
    _add_store_commands(sub)
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service", add_help=False)
    return parser


def _add_network_commands(sub: Any) -> None:
    for name in ("up", "demo"):
        p = sub.add_parser(name, help="run a whole local network" + (
            ", stream one prompt, stop" if name == "demo" else " until Ctrl-C"))
        p.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", "var/tether"),
                       help="where the network keeps its keys, models, database and logs "
                       "(env TETHER_DATA_DIR; default %(default)s)")
        p.add_argument("--verbose", "-v", action="store_true",
                       help="show the services' logs here too (they always go to "
                       "<data-dir>/logs/)")
        if name == "demo":
            _add_prompt_arguments(p)
        else:
            p.add_argument("--region", default=os.environ.get("TETHER_REGION", "local"),
                           help="the network's region (default: TETHER_REGION or local; "
                           "checked with every other setting before anything starts)")
            p.add_argument("--http-port", type=process.port, default=0,
                           help="the gateway's HTTP API port (default: any free port)")
            p.add_argument("--grpc-port", type=process.port, default=0,
                           help="the gateway's gRPC port (default: any free port)")
            base = os.environ.get("TETHER_METRICS_PORT", "").strip()
            p.add_argument("--metrics", action="store_true", default=bool(base),
                           help="every service serves Prometheus metrics and /healthz, "
                           "/readyz on a port of its own (printed as \"metrics\"); on "
                           "with TETHER_METRICS_PORT set")
            p.add_argument("--metrics-port", type=process.port, metavar="BASE",
                           default=process.env_value("TETHER_METRICS_PORT", "0", process.port),
                           help="with --metrics: ports BASE, BASE+1, ... for the registry, "
                           "orchestrator, gateway and worker (env TETHER_METRICS_PORT; "
                           "default 0: any free ports)")
            p.add_argument("--metrics-host",
                           default=os.environ.get("TETHER_METRICS_HOST", "127.0.0.1"),
                           help="with --metrics: the address they bind (default: %(default)s)")


def _add_client_commands(sub: Any) -> None:
    p = sub.add_parser("infer", help="send a prompt (or a chat message) to a running gateway")
    p.add_argument("--gateway", help="gateway public key (64 hex); default: find by topic")
    p.add_argument("--token", default=os.environ.get("TETHER_TOKEN"), required=False,
                   help="the tenant token (env TETHER_TOKEN; `tether up` prints one)")
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                   help="DHT bootstrap node (repeatable or comma-separated, as `tether up` "
                   "prints it; env TETHER_BOOTSTRAP)")
    _add_prompt_arguments(p)
    p.add_argument("--chat", "--user", dest="chat", metavar="MESSAGE",
                   help="send MESSAGE as the user's turn of a conversation, rendered with "
                   "the model's chat template (instead of --prompt)")
    p.add_argument("--system", metavar="TEXT", help="with --chat: the system message first")
    p = sub.add_parser(
        "dlq",
        help="list failed jobs kept in the dead-letter queue, or replay one",
        description="`tether dlq` lists dead letters (newest first, one JSON line each); "
        "`tether dlq replay ID --bootstrap HOST:PORT` runs one again under a new retry "
        "token and streams its answer.",
    )
    p.add_argument("action", nargs="?", choices=("list", "replay"), default="list",
                   help="list (default) or replay ID")
    p.add_argument("letter_id", nargs="?", type=int, metavar="ID", help="the letter to replay")
    p.add_argument("--limit", type=process.whole(1), default=20,
                   help="list at most this many letters (default %(default)s)")
    p.add_argument("--again", action="store_true", help="replay a letter replayed before")
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                   help="for replay: DHT bootstrap node (env TETHER_BOOTSTRAP)")
    p.add_argument("--region", type=_region, default=os.environ.get("TETHER_REGION", "local"),
                   help="for replay: the region's orchestrators")
    p.add_argument("--timeout", type=process.positive(), default=120.0,
                   help="for replay: seconds for the whole answer (default %(default)s)")
    _add_store_arguments(p)


def _add_operator_commands(sub: Any) -> None:
    p = sub.add_parser(
        "rollout",
        help="split a model's traffic between versions (canary), halted past an error budget",
        description="Send a canary rollout to the region's orchestrators: requests that name "
        "no version go to each version in proportion; a version whose error rate passes "
        "--max-error-rate is halted and its share moves to the others. Weights of 0 end it.",
    )
    p.add_argument("model", help="the model whose traffic to split")
    p.add_argument("weights", nargs="+", metavar="VERSION=PERCENT", help="e.g. 1.0=90 1.1=10")
    p.add_argument("--max-error-rate", type=float, default=0.05,
                   help="halt a version whose error rate passes this (default %(default)s)")
    _add_operator_arguments(p)
    p = sub.add_parser("fleet", help="the workers an orchestrator of the region sees (JSON lines)")
    _add_operator_arguments(p)
    p = sub.add_parser(
        "status",
        help="one screen of the running network: services, workers by region, breakers, "
        "rollouts, recent error rate",
        description="Asks an orchestrator of the region (as the operator) what it sees.",
    )
    _add_operator_arguments(p)
    p = sub.add_parser("drain", help="take workers out of placement (all present when none named)")
    p.add_argument("workers", nargs="*", metavar="WORKER_ID",
                   help="the workers to drain (default: every worker present)")
    _add_operator_arguments(p)


def _add_store_commands(sub: Any) -> None:
    p = sub.add_parser(
        "usage",
        help="usage per tenant and model version over a period (the billing export)",
        description="One JSON line per (tenant, model, version): requests, input and output "
        "tokens and compute time recorded in [--since, --until).",
    )
    p.add_argument("--since", default="0", help="unix ms or ISO date/time (UTC); default: all")
    p.add_argument("--until", default=None, help="unix ms or ISO date/time (UTC); default: now")
    p.add_argument("--tenant", default=None, help="only this tenant's usage")
    _add_store_arguments(p)
    p = sub.add_parser(
        "admit",
        help="admit a worker key: orchestrators place work only on admitted workers",
        description="Admit a worker's public key in the Metadata Store; orchestrators "
        "sharing the store place work on it from its next heartbeat (within 5 s). "
        "Workers started with this data folder are admitted with no setup, unless "
        "revoked. --list prints every admitted or revoked key, one JSON line each.",
    )
    p.add_argument("key", nargs="?", metavar="KEY",
                   help="the worker's public key (64 hex), or its .pub file")
    p.add_argument("--name", default="", help="a name to remember the worker by")
    p.add_argument("--list", action="store_true", help="list admitted and revoked keys")
    _add_store_arguments(p)
    p = sub.add_parser(
        "revoke",
        help="revoke a worker key: out of placement within one heartbeat (5 s)",
        description="Revoke a worker's public key in the Metadata Store: orchestrators "
        "take it out of placement within one heartbeat period (5 s) and close its "
        "connection, so requests it was streaming move to other workers. A revocation "
        "also overrides the data folder's own worker keys.",
    )
    p.add_argument("key", metavar="KEY", help="the worker's public key (64 hex), or its .pub file")
    _add_store_arguments(p)
    p = sub.add_parser(
        "key",
        help="print a service's public key in this data folder (made if missing)",
        description="Print the public key (64 hex) a service started with this data folder "
        "will use, making its key pair now if it has none: e.g. a worker's, so that an "
        "operator admits it (tether admit) before it first starts.",
    )
    p.add_argument("service", choices=SERVICES, help="whose key: %(choices)s")
    p.add_argument("--worker-id", default="worker-1",
                   help="for a worker: its --worker-id (default %(default)s)")
    p.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR", "var/tether"),
                   help="the data folder (env TETHER_DATA_DIR; default %(default)s)")
    p = sub.add_parser("token", help="issue a tenant token")
    p.add_argument("--tenant", required=True, help="the tenant the token acts for")
    e2e = p.add_mutually_exclusive_group()
    e2e.add_argument("--e2e", action="store_true", default=None,
                     help="seal this tenant's requests end to end from its gateways on "
                     "(a tenant policy: every token of the tenant)")
    e2e.add_argument("--no-e2e", dest="e2e", action="store_false",
                     help="stop sealing this tenant's requests")
    _add_store_arguments(p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVICES:
        return _service_main(argv[0], argv[1:])
    with process.exit_on_config_error(argv[0] if argv and not argv[0].startswith("-") else ""):
        args = build_parser().parse_args(argv)
    with process.exit_on_config_error(args.command):
        process.setup_logging(args.command, os.environ.get("TETHER_LOG_LEVEL", "INFO"),
                              default_format="text")
        return _run(args)


def _command(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The function that runs ``args.command`` (a trio one runs under ``trio.run``)."""
    if args.command == "dlq":
        return _trio(_dlq_replay) if args.action == "replay" else _dlq
    return _COMMANDS.get(args.command)


def _trio(
    fn: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    return lambda args: trio.run(fn, args)


def _run(args: argparse.Namespace) -> int:
    try:
        command = _command(args)
        if command is not None:
            return command(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        from p2p_transport.dht_rpc.query import QueryError

        if process.find_error(exc, QueryError) is not None:
            bootstrap = ",".join(getattr(args, "bootstrap", None) or []) or os.environ.get(
                "TETHER_BOOTSTRAP", "")
            print(f"tether {args.command}: no DHT bootstrap node answered ({bootstrap}): "
                  "is the network up? (--bootstrap: the one `tether up` prints)",
                  file=sys.stderr)
            return 1
        error = process.find_error(exc, TetherError)
        if error is None:
            raise
        print(f"tether {args.command}: {error}", file=sys.stderr)
        return 1
    return 2


async def _up(args: argparse.Namespace) -> int:
    from app.localnet import Metrics, local_network

    log = logging.getLogger("tether.up")
    metrics = (Metrics(args.metrics_host, args.metrics_port)
               if getattr(args, "metrics", False) else None)
    data_dir = Path(args.data_dir)
    steps: list[str] = []

    def progress(step: str) -> None:
        if not steps and not args.verbose:  # the settings are checked by now
            _log_to_file(args.command, data_dir / "logs" / f"tether-{args.command}.log")
            print(f"tether {args.command}: service logs in {data_dir / 'logs'} "
                  "(--verbose: here instead)", file=sys.stderr, flush=True)
        steps.append(step)
        print(f"tether {args.command}: {step}...", file=sys.stderr, flush=True)

    async with local_network(
        data_dir,
        region=getattr(args, "region", "local"),
        http_port=getattr(args, "http_port", 0),
        grpc_port=getattr(args, "grpc_port", 0),
        metrics=metrics,
        verbose=args.verbose,
        progress=progress,
    ) as net:
        if args.command == "demo":
            print(
                f"tether demo: network up (models {', '.join(net.published)}); "
                f"prompt -> gateway {net.gateway_key[:16]}...",
                file=sys.stderr,
            )
            return await _stream_prompt(
                net.bootstrap, net.token, bytes.fromhex(net.gateway_key), args
            )
        print(
            json.dumps(
                {
                    "bootstrap": net.bootstrap_text,
                    "gateway": net.gateway_key,
                    "http": net.http_url,
                    "grpc": net.grpc_address,
                    "token": net.token,
                    "models": net.published,
                    **({"metrics": net.metrics} if metrics else {}),
                }
            ),
            flush=True,
        )
        print(up_hint(net.bootstrap_text, net.gateway_key, net.http_url), file=sys.stderr,
              flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                log.info("stopping")
                break
    return 0


def _log_to_file(command: str, path: Path) -> None:
    """This command's own log lines go to ``path`` (the terminal keeps the answer)."""
    from tether import logs

    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    stream = path.open("a", encoding="utf-8")
    root.handlers[:] = [logs.handler(f"tether-{command}", logs.env_format("text"), stream)]


def up_hint(bootstrap: str, gateway_key: str, http_url: str) -> str:
    """What to try once ``tether up`` runs. The token is in the JSON line above, once,
    and never in a log: the hint names it ``$TETHER_TOKEN``."""
    return (
        "tether is up. Set TETHER_TOKEN to the \"token\" above, then try:\n"
        f"  tether infer --bootstrap {bootstrap} --gateway {gateway_key} "
        "--prompt 'What is the capital of France?'\n"
        f"  curl {http_url}/v1/completions -H \"authorization: Bearer $TETHER_TOKEN\" "
        "-d '{\"model\": \"kjv-textgen\", \"prompt\": \"In the beginning\", "
        "\"stream\": true}'"
    )


async def _infer(args: argparse.Namespace) -> int:
    bootstrap = process.bootstrap_from(args.bootstrap)
    if not args.token:
        raise process.ConfigError("pass --token (or set TETHER_TOKEN)")
    gateway = _key_flag("--gateway", args.gateway) if args.gateway else None
    if args.system is not None and args.chat is None:
        raise process.ConfigError("--system goes with --chat MESSAGE")
    if args.chat is not None:
        return await _stream_chat(bootstrap, args.token, gateway, args)
    return await _stream_prompt(bootstrap, args.token, gateway, args)


def _key_flag(flag: str, text: str) -> bytes:
    """A public key flag (64 hex characters); a ConfigError naming the flag otherwise."""
    from tether.callers import parse_key

    try:
        return parse_key(text)
    except ValueError as exc:
        raise process.ConfigError(f"{flag}: {exc}") from None


async def _stream_chat(
    bootstrap: list, token: str, gateway_key: bytes | None, args: argparse.Namespace
) -> int:
    """``tether infer --chat``: the answer to one user message (after ``--system``)."""
    from tether.client import connect_gateway

    messages = [("system", args.system)] if args.system is not None else []
    messages.append(("user", args.chat))
    async with connect_gateway(
        bootstrap, token, gateway_key=gateway_key, region=args.region, host=args.host,
        timeout=args.timeout,
    ) as client:
        last = None
        async for chunk in client.chat(
            args.model, messages, max_tokens=args.max_tokens, temperature=args.temperature,
            seed=args.seed, greedy=args.greedy, timeout=args.timeout, sealed=args.sealed,
        ):
            sys.stdout.write(chunk.payload.text)
            sys.stdout.flush()
            last = chunk
        print()
        if last is not None and last.done:
            print(f"-- {last.usage.output_tokens} tokens from {args.model}, "
                  f"{last.usage.compute_ms} ms compute", file=sys.stderr)
        return 0


def require_data_dir(args: argparse.Namespace) -> Path:
    """The data folder an operator command works in; a ConfigError (one line, status 2)
    when ``--data-dir`` holds no Tether network, rather than making an empty one here."""
    data_dir = Path(args.data_dir)
    if (getattr(args, "metadata_url", None) or (data_dir / "metadata.db").is_file()
            or (data_dir / "keys").is_dir()):
        return data_dir
    raise process.ConfigError(
        f"{data_dir} is not a Tether data dir (no metadata.db, no keys/): run this where "
        "`tether up` ran, or pass --data-dir (env TETHER_DATA_DIR) or --metadata-url")


def _open_store(args: argparse.Namespace, *, existing: bool = True) -> MetadataStore:
    """The Metadata Store; ``existing``: only one a network made (``require_data_dir``)."""
    if existing:
        require_data_dir(args)
    url = args.metadata_url or sqlite_url(Path(args.data_dir) / "metadata.db")
    store = MetadataStore(url)
    store.migrate()
    return store


def _dlq(args: argparse.Namespace) -> int:
    """One JSON line per dead letter, newest first."""
    from tether.v1 import infer_pb2, status_pb2

    store = _open_store(args)
    try:
        for letter in store.dead_letters(limit=args.limit):
            request = infer_pb2.Infer.Request.FromString(letter.request)
            print(json.dumps({
                "id": letter.id,
                "correlation_id": letter.correlation_id,
                "tenant": letter.tenant_id,
                "model": f"{letter.model_id}@{letter.version}",
                "worker": letter.worker_id,
                "attempts": letter.attempts,
                "error": status_pb2.StatusCode.Name(letter.error_code).removeprefix("STATUS_CODE_"),
                "message": letter.error_message,
                "input": request.input.WhichOneof("kind"),
                "at_unix_ms": letter.created_unix_ms,
                "replayed_as": letter.replayed_as or None,
            }))
    finally:
        store.close()
    return 0


async def _dlq_replay(args: argparse.Namespace) -> int:
    """Replay one dead letter through an orchestrator; its answer goes to stdout."""
    from tether import operator
    from tether.v1 import services_rpc

    if args.letter_id is None:
        raise process.ConfigError("which letter? pass its id (`tether dlq` lists them)")
    bootstrap = process.bootstrap_from(args.bootstrap)
    store = _open_store(args)
    try:
        keypair = operator.operator_keypair(require_data_dir(args))
        async with operator.connect_orchestrator(bootstrap, keypair, region=args.region,
                                                 timeout=args.timeout) as rpc:
            last = None
            async for chunk in operator.replay(
                store, services_rpc.OrchestratorStub(rpc), args.letter_id, again=args.again,
                timeout=args.timeout,
            ):
                _print_payload(chunk.payload)
                last = chunk
        print()
        usage = last.usage if last is not None else None
        print(json.dumps({
            "replayed": args.letter_id,
            "correlation_id": last.correlation_id if last is not None else "",
            "output_tokens": usage.output_tokens if usage is not None else 0,
        }), file=sys.stderr)
    finally:
        store.close()
    return 0


async def _control(args: argparse.Namespace) -> int:
    """Send one control message to an orchestrator of the region; print its answer."""
    from tether import operator
    from tether.v1 import services_rpc

    bootstrap = process.bootstrap_from(args.bootstrap)
    try:
        if args.command == "rollout":
            message = operator.rollout_message(
                args.model, args.weights, max_error_rate=args.max_error_rate, region=args.region
            )
        else:
            message = operator.drain_message(args.workers, region=args.region)
    except ValueError as exc:
        raise process.ConfigError(str(exc)) from None
    keypair = operator.operator_keypair(require_data_dir(args))
    async with operator.connect_orchestrator(bootstrap, keypair, region=args.region,
                                             timeout=args.timeout) as rpc:
        ack = await services_rpc.ControlStub(rpc).Apply(message, timeout=args.timeout)
    print(json.dumps({"accepted": ack.accepted, "id": ack.id, "message": ack.message}))
    return 0 if ack.accepted else 1


async def _fleet(args: argparse.Namespace) -> int:
    """The orchestrator's fleet snapshot: one JSON line per healthy worker."""
    from tether import operator
    from tether.v1 import services_pb2, services_rpc

    bootstrap = process.bootstrap_from(args.bootstrap)
    keypair = operator.operator_keypair(require_data_dir(args))
    async with operator.connect_orchestrator(bootstrap, keypair, region=args.region,
                                             timeout=args.timeout) as rpc:
        fleet = await services_rpc.OrchestratorStub(rpc).GetFleet(
            services_pb2.GetFleetRequest(), timeout=args.timeout
        )
    if args.command == "status":
        from tether.status import render

        print(render(fleet, region=args.region))
        return 0
    for w in sorted(fleet.workers, key=lambda w: (w.region, w.worker_id)):
        print(json.dumps({
            "worker": w.worker_id, "region": w.region, "gpu_class": w.gpu_class,
            "models": [f"{m.model_id}@{m.version}" for m in w.supported],
            "slots": w.capacity.slots, "in_use": w.capacity.in_use,
            "queue_depth": w.capacity.queue_depth, "draining": w.draining,
            "key": w.pub_key.hex(),
        }))
    return 0


def _print_payload(payload: infer_pb2.Payload) -> None:
    if payload.HasField("embedding"):
        values = payload.embedding.values
        head = ", ".join(f"{v:+.4f}" for v in values[:6])
        print(f"[{payload.embedding.index}] dim={len(values)} [{head}, ...]")
    elif payload.text:
        sys.stdout.write(payload.text)
        sys.stdout.flush()


def _unix_ms(text: str, flag: str) -> int:
    """Unix milliseconds from digits or an ISO date/time (UTC unless it says otherwise)."""
    import datetime

    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise process.ConfigError(f"{flag} {text!r} is neither unix ms nor an ISO "
                                  "date/time (e.g. 2026-11-01 or 2026-11-01T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def _usage(args: argparse.Namespace) -> int:
    since = _unix_ms(args.since, "--since")
    until = _unix_ms(args.until, "--until") if args.until else None
    store = _open_store(args)
    try:
        for line in store.usage_report(since_ms=since, until_ms=until, tenant_id=args.tenant):
            print(json.dumps({
                "tenant": line.tenant_id, "model": f"{line.model_id}@{line.version}",
                "requests": line.requests, "input_tokens": line.input_tokens,
                "output_tokens": line.output_tokens, "compute_ms": line.compute_ms,
                "since_unix_ms": since, "until_unix_ms": until,
            }))
    finally:
        store.close()
    return 0


def _worker_key(text: str) -> bytes:
    """A worker key from 64 hex characters or a ``.pub`` file holding them."""
    from tether.callers import parse_key

    path = Path(text)
    if not text.strip() or len(text) == 64 or not path.is_file():
        return parse_key(text)
    try:
        return parse_key(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{text}: {exc}") from None


def _admission(args: argparse.Namespace) -> int:
    """tether admit KEY / tether admit --list / tether revoke KEY (see their help)."""
    from tether.admission import worker_keys_dir

    if args.command == "admit" and args.list:
        return _admissions_list(args, worker_keys_dir(Path(args.data_dir)))
    if not args.key:
        print("tether admit: which key? pass a worker's public key (64 hex) or "
              "--list", file=sys.stderr)
        return 2
    try:
        key = _worker_key(args.key)
    except ValueError as exc:
        print(f"tether {args.command}: {exc}", file=sys.stderr)
        return 2
    store = _open_store(args)
    try:
        if args.command == "admit":
            row = store.admit_worker(key, name=args.name)
        else:
            row = store.revoke_worker(key)
    finally:
        store.close()
    print(json.dumps({"key": row.public_key, "name": row.name,
                      "admitted": not row.revoked}))
    return 0


def _admissions_list(args: argparse.Namespace, keys_dir: Path) -> int:
    """One JSON line per key: the store's, then the data folder's not in the store."""
    from tether.callers import parse_key

    store = _open_store(args)
    try:
        rows = store.worker_admissions()
    finally:
        store.close()
    listed = {r.public_key for r in rows}
    for r in rows:
        print(json.dumps({"key": r.public_key, "name": r.name, "admitted": not r.revoked,
                          "by": "store", "at_unix_ms": r.revoked_unix_ms
                          if r.revoked else r.admitted_unix_ms}))
    for path in sorted(keys_dir.glob("*.pub")) if keys_dir.is_dir() else []:
        try:
            key = parse_key(path.read_text()).hex()
        except (OSError, ValueError):
            continue
        if key not in listed:
            print(json.dumps({"key": key, "name": path.stem, "admitted": True,
                              "by": "data folder"}))
    return 0


def _key(args: argparse.Namespace) -> int:
    """``tether key SERVICE``: the key that service will start with (see its parser)."""
    from tether.admission import worker_key_path
    from tether.keys import KeyPair

    data_dir = process.data_dir_from(args.data_dir)
    if args.service == "worker":
        path = worker_key_path(data_dir, args.worker_id)
    else:
        path = data_dir / "keys" / f"{args.service}.key"
    keypair = KeyPair.load_or_generate(path)
    keypair.save_public(path.with_suffix(".pub"))
    print(keypair.public_key.hex())
    return 0


def _token(args: argparse.Namespace) -> int:
    store = _open_store(args, existing=False)  # (a store made for the services to come)
    try:
        if args.e2e is not None:
            store.set_tenant_e2e(args.tenant, args.e2e)
        print(store.issue_token(args.tenant, label="tether token"))
    finally:
        store.close()
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _trio(_up), "demo": _trio(_up), "infer": _trio(_infer),
    "rollout": _trio(_control), "drain": _trio(_control),
    "fleet": _trio(_fleet), "status": _trio(_fleet),
    "token": _token, "key": _key, "admit": _admission, "revoke": _admission, "usage": _usage,
}


if __name__ == "__main__":
    sys.exit(main())

