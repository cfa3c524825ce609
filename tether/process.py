"""What every Tether service process shares: configuration, logging, the
network, the ready line, and a clean stop on SIGINT/SIGTERM.

Configuration comes from flags, else a TOML file given with ``--config`` (keys
are the flag names; a ``[<service>]`` table overrides the top level for that
service), else environment variables, else defaults:

=================  =====================  ===================================
flag               environment            default
=================  =====================  ===================================
``--region``       ``TETHER_REGION``      ``local``
``--bootstrap``    ``TETHER_BOOTSTRAP``   (required; ``HOST:PORT``, comma-
                                          separated in the environment)
``--data-dir``     ``TETHER_DATA_DIR``    ``var/tether``
``--metadata-url`` ``TETHER_METADATA_URL`` SQLite file in the data dir
``--key-file``     ``TETHER_KEY_FILE``    ``<data-dir>/keys/<service>.key``
``--host``         ``TETHER_HOST``        ``127.0.0.1``
``--udp-port``     ``TETHER_UDP_PORT``    ``0`` (any free port)
``--allow-caller`` ``TETHER_ALLOW_CALLERS`` the keys in ``<data-dir>/keys/*.pub``
=================  =====================  ===================================

A service writes its public key next to its key file (``<service>.pub``). The
orchestrator takes work only from known gateways, a worker only from known
orchestrators: see :mod:`tether.callers`.

A service prints exactly one JSON line on stdout once it is reachable, e.g.
``{"service": "gateway", "public_key": "<64 hex>", "region": "local"}``; logs
go to stderr with the trace id of the current request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from p2p_transport.cenc import SocketAddress
from tether import telemetry, topics
from tether.callers import CallerPolicy, parse_key
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore, sqlite_url
from tether.net.swarm import parse_address


@dataclass
class ServiceConfig:
    service: str
    region: str
    bootstrap: list[SocketAddress]
    data_dir: Path
    metadata_url: str
    key_file: Path
    host: str
    log_level: str
    #: The UDP port of the service's Hyperswarm socket (0: any free one); a fixed port is
    #: what a firewall opens.
    udp_port: int = 0
    #: Serve Prometheus metrics on 127.0.0.1:<port> (None: no endpoint).
    metrics_port: int | None = None
    #: Peers allowed to call the privileged methods besides the keys folder's (see callers).
    allow_callers: tuple[bytes, ...] = ()
    allow_any_caller: bool = False

    @classmethod
    def local(
        cls,
        service: str,
        data_dir: Path,
        bootstrap: list[SocketAddress],
        *,
        region: str = "local",
        log_level: str = "INFO",
    ) -> ServiceConfig:
        """The configuration ``tether up`` gives a service: everything in ``data_dir``."""
        return cls(
            service=service,
            region=region,
            bootstrap=bootstrap,
            data_dir=data_dir,
            metadata_url=sqlite_url(data_dir / "metadata.db"),
            key_file=data_dir / "keys" / f"{service}.key",
            host="127.0.0.1",
            log_level=log_level,
        )

    def keypair(self) -> KeyPair:
        """This service's key pair (made on first start); its public key is written to
        ``<key-file>.pub`` so that services sharing the data folder know it."""
        keypair = KeyPair.load_or_generate(self.key_file)
        keypair.save_public(self.key_file.with_suffix(".pub"))
        return keypair

    def callers(self, role: str) -> CallerPolicy:
        """Who may call this service's privileged methods (``role``: who they should be)."""
        if self.allow_any_caller:
            logging.getLogger("tether.callers").warning(
                "--allow-any-caller: any peer may call the %s's privileged methods", self.service
            )
        return CallerPolicy(
            self.allow_callers,
            keys_dir=self.data_dir / "keys",
            allow_any=self.allow_any_caller,
            role=role,
        )

    def open_store(self) -> MetadataStore:
        store = MetadataStore(self.metadata_url)
        store.migrate()
        return store


def add_common_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    env = os.environ.get
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=env("TETHER_CONFIG"),
        help=f"TOML file of settings (flag names as keys; a [{service}] table for this service)",
    )
    parser.add_argument("--region", default=env("TETHER_REGION", "local"))
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="DHT bootstrap node (repeatable; env TETHER_BOOTSTRAP, comma-separated)",
    )
    parser.add_argument("--data-dir", default=env("TETHER_DATA_DIR", "var/tether"))
    parser.add_argument("--metadata-url", default=env("TETHER_METADATA_URL"))
    parser.add_argument("--key-file", default=env("TETHER_KEY_FILE"))
    parser.add_argument("--host", default=env("TETHER_HOST", "127.0.0.1"),
                        help="the address to bind (on a network of machines: this one's)")
    parser.add_argument(
        "--udp-port",
        type=int,
        default=int(env("TETHER_UDP_PORT", "0")),
        help="UDP port of the Hyperswarm socket (default 0: any free port; fix it to open "
        "it in a firewall)",
    )
    parser.add_argument("--log-level", default=env("TETHER_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--allow-caller",
        action="append",
        default=None,
        metavar="KEY",
        help="public key (64 hex) of a peer allowed to send this service work: a gateway "
        "for the orchestrator, an orchestrator for a worker (repeatable; env "
        "TETHER_ALLOW_CALLERS, comma-separated; the keys in <data-dir>/keys/*.pub always are)",
    )
    parser.add_argument(
        "--allow-any-caller",
        action="store_true",
        default=env("TETHER_ALLOW_ANY_CALLER", "") not in ("", "0", "false"),
        help="take work from any peer (only on a closed network)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("TETHER_METRICS_PORT", "0")) or None,
        help="serve Prometheus metrics on 127.0.0.1:PORT",
    )
    parser.set_defaults(service=service)


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, service: str
) -> argparse.Namespace:
    """Parse ``argv`` with the settings of ``--config`` as defaults under the flags."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            with open(pre.config, "rb") as f:
                settings = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"{service}: cannot read config file {pre.config}: {exc}") from None
        section = settings.pop(service, {})
        merged = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        merged.update(section if isinstance(section, dict) else {})
        known = {a.dest for a in parser._actions}
        values = {key.replace("-", "_"): value for key, value in merged.items()}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise SystemExit(f"{service}: unknown settings in {pre.config}: {', '.join(unknown)}")
        for key, value in values.items():
            if key in ("bootstrap", "allow_caller") and isinstance(value, str):
                values[key] = [value]
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def bootstrap_from(flags: list[str] | None, command: str) -> list[SocketAddress]:
    """``--bootstrap`` flags (each may hold several, comma-separated), else the
    ``TETHER_BOOTSTRAP`` environment variable; exits with a clear message if none."""
    texts = [
        b.strip()
        for item in (flags or [os.environ.get("TETHER_BOOTSTRAP", "")])
        for b in item.split(",")
        if b.strip()
    ]
    if not texts:
        raise SystemExit(
            f"{command}: no DHT bootstrap node; pass --bootstrap HOST:PORT "
            "(or set TETHER_BOOTSTRAP), e.g. the one `tether up` prints"
        )
    try:
        return [parse_address(b) for b in texts]
    except ValueError as exc:
        raise SystemExit(f"{command}: {exc}") from None


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    bootstrap = bootstrap_from(args.bootstrap, args.service)
    try:
        topics.region(args.region)
    except ValueError as exc:
        raise SystemExit(f"{args.service}: {exc}") from None
    data_dir = Path(args.data_dir)
    # `bazel run` starts the program in its runfiles; relative paths mean the caller's folder.
    caller_dir = os.environ.get("BUILD_WORKING_DIRECTORY")
    if caller_dir and not data_dir.is_absolute():
        data_dir = Path(caller_dir) / data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file = Path(args.key_file) if args.key_file else data_dir / "keys" / f"{args.service}.key"
    callers = [
        k.strip()
        for item in (args.allow_caller or [os.environ.get("TETHER_ALLOW_CALLERS", "")])
        for k in item.split(",")
        if k.strip()
    ]
    try:
        allow_callers = tuple(parse_key(k) for k in callers)
    except ValueError as exc:
        raise SystemExit(f"{args.service}: --allow-caller: {exc}") from None
    return ServiceConfig(
        service=args.service,
        region=args.region,
        bootstrap=bootstrap,
        data_dir=data_dir,
        metadata_url=args.metadata_url or sqlite_url(data_dir / "metadata.db"),
        key_file=key_file,
        host=args.host,
        udp_port=args.udp_port,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
        allow_callers=allow_callers,
        allow_any_caller=bool(args.allow_any_caller),
    )


def setup_telemetry(config: ServiceConfig) -> None:
    """Logs with trace ids, traces, and metrics (Prometheus when ``metrics_port``)."""
    setup_logging(config.service, config.log_level)
    telemetry.setup_metrics(config.service, prometheus_port=config.metrics_port)


def setup_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(telemetry.TraceIdFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {service} %(levelname)s %(name)s trace=%(trace_id)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    telemetry.setup(f"tether-{service}")


def announce_ready(service: str, public_key: bytes, **extra: object) -> None:
    """The one stdout line saying the service is reachable."""
    line = {"service": service, "public_key": public_key.hex(), **extra}
    print(json.dumps(line), flush=True)


#: Graceful-stop hooks of this process, run in order on SIGINT/SIGTERM.
_STOP_HOOKS: list[Callable[[], Awaitable[None]]] = []
#: The most a graceful stop may take before the process is cancelled anyway.
STOP_TIMEOUT_S = 10.0


def on_stop(hook: Callable[[], Awaitable[None]]) -> None:
    """Run ``hook`` when a signal asks the process to stop, before anything is cancelled
    (a worker drains, a network unannounces itself while it can still talk)."""
    _STOP_HOOKS.append(hook)


async def run_until_signalled(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body``; SIGINT/SIGTERM run the stop hooks, then cancel it."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    logging.getLogger("tether").info("stopping on signal")
                    with trio.move_on_after(STOP_TIMEOUT_S):
                        for hook in reversed(_STOP_HOOKS):
                            await hook()
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_signals)
        await body()
        nursery.cancel_scope.cancel()
