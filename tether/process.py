"""What every Tether service process shares: configuration, logging, the
network, the ready line, and a clean stop on SIGINT/SIGTERM.

Configuration comes from flags, else a TOML file given with ``--config`` (keys
are the flag names; a ``[<service>]`` table overrides the top level for that
service), else ``TETHER_*`` environment variables, else defaults. Each setting is
declared once, with its flag, variable, default and type (:meth:`ArgumentParser.setting`;
the README's table lists them); the environment is read, and every value checked, only
after the flags and the config file are parsed, and checking makes nothing on disk (the
data folder is made when the service starts: :meth:`ServiceConfig.prepare`).

``--metadata-read-url`` names a read-only copy of the store, e.g. a PostgreSQL streaming
replica in the service's own region: lookups that can be a moment behind go there (the
gateway's token and tenant checks, the registry's catalog lookups and the admitted
workers, the orchestrator's ``GetJob`` status and admitted workers); everything that
writes, and what must see its own writes (reservations, jobs and their takeover,
usage), stays on ``--metadata-url``. The schema is migrated on ``--metadata-url`` only.

A service writes its public key next to its key file (``<service>.pub``); each
worker has a key of its own (:func:`tether.admission.claim_worker_key`). With a metrics
port the service serves Prometheus metrics and its probes there (``/metrics``,
``/healthz``, ``/readyz``; see ``tether.health``), and its ready line says where
(``"metrics": "http://HOST:PORT"``). The
orchestrator takes work only from known gateways, a worker only from known
orchestrators: see :mod:`tether.callers`.

Invalid configuration (a malformed or out-of-range flag, setting or ``TETHER_*``
value, an unknown log level, a data dir that is not a writable directory, a metadata
store that does not open) raises :class:`ConfigError`; under
:func:`exit_on_config_error` the process prints one line,
``tether <service>: <what is wrong>``, on stderr and exits with status 2.

A service prints exactly one JSON line on stdout once it is reachable, e.g.
``{"service": "gateway", "public_key": "<64 hex>", "region": "local"}``; logs
go to stderr, one JSON line each (``TETHER_LOG_FORMAT=text``: plain text), with the
trace and correlation ids of the current request and never a token (``tether.logs``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import trio
from sqlalchemy.exc import DatabaseError

from p2p_transport.cenc import SocketAddress
from tether import health, logs, telemetry, topics
from tether.callers import CallerPolicy, parse_key
from tether.errors import TetherError
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore, sqlite_url
from tether.net.swarm import parse_address
from tether.v1 import status_pb2

#: The exit status of a process refused for its configuration (as argparse uses).
EXIT_CONFIG = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T")


class ConfigError(SystemExit):
    """Invalid configuration: one line for the operator, exit status 2.

    A ``SystemExit`` so that nothing on the way up mistakes it for a failure to report
    with a traceback; :func:`exit_on_config_error` prints it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = EXIT_CONFIG


@contextmanager
def exit_on_config_error(service: str) -> Iterator[None]:
    """Turn a :class:`ConfigError` raised inside (also one a task group wrapped) into
    ``tether <service>: <message>`` on stderr and exit status 2 (``service`` may be a
    ``tether`` subcommand, or empty)."""
    try:
        yield
    except ConfigError as exc:
        _refuse(service, exc)
    except BaseExceptionGroup as group:
        found = find_error(group, ConfigError)
        if found is None:
            raise
        _refuse(service, found)


E = TypeVar("E", bound=BaseException)


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` if it is a ``kind``, else the first ``kind`` inside it (trio wraps errors
    from task groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_error(inner, kind)) is not None:
                return found
    return None


def _refuse(service: str, exc: ConfigError) -> NoReturn:
    print(f"tether {service}: {exc.message}" if service else f"tether: {exc.message}",
          file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG) from None


@dataclass(frozen=True)
class EnvSetting:
    """Where a setting comes from when neither a flag nor the config file gives it: the
    environment variable ``variable``, else ``default``."""

    variable: str
    default: Any = None
    #: The flag type that checks a value (None: the text as it is).
    parse: Callable[[str], Any] | None = None
    #: A list: comma-separated in the environment.
    many: bool = False
    #: On or off: on unless empty, ``0`` or ``false``.
    switch: bool = False

    def read(self, environ: Mapping[str, str]) -> Any:
        """This setting's value from ``environ`` (its default when unset or empty); a bad
        value is a :class:`ConfigError` naming the variable."""
        raw = environ.get(self.variable, "")
        if not raw.strip():
            return self.default
        if self.switch:
            return raw.strip().lower() not in ("0", "false")
        if self.many:
            return [item.strip() for item in raw.split(",") if item.strip()]
        if self.parse is None:
            return raw
        try:
            return self.parse(raw)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{self.variable}={raw!r}: {exc}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as a :class:`ConfigError` (one line, status 2), and
    settings that fall back to ``TETHER_*`` variables (:meth:`setting`), read only after
    the flags and the config file are parsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: dest -> where its value comes from when no flag or config file gives it.
        self.environment: dict[str, EnvSetting] = {}

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, then the environment (or the default) for each setting that no flag
        and no config file gave."""
        parsed, extras = super().parse_known_args(args, namespace)
        for dest, setting in self.environment.items():
            if getattr(parsed, dest, None) is None:
                setattr(parsed, dest, setting.read(os.environ))
        return parsed, extras

    def setting(
        self,
        *flags: str,
        env: str,
        default: Any = None,
        type: Callable[[str], Any] | None = None,
        many: bool = False,
        switch: bool = False,
        **kwargs: Any,
    ) -> argparse.Action:
        """A flag whose value, when no flag and no config file gives it, is the variable
        ``env``'s, else ``default``; ``many``: repeatable (comma-separated in the
        environment); ``switch``: on/off."""
        if "help" in kwargs:
            kwargs["help"] = kwargs["help"].replace("%(default)s", str(default))
        if switch:
            action = self.add_argument(*flags, action="store_true", default=None, **kwargs)
        elif many:
            action = self.add_argument(*flags, action="append", default=None, **kwargs)
        elif type is not None:
            action = self.add_argument(*flags, type=type, default=None, **kwargs)
        else:
            action = self.add_argument(*flags, default=None, **kwargs)
        self.environment[action.dest] = EnvSetting(env, default, type, many, switch)
        return action

    def variables(self) -> list[str]:
        """Every ``TETHER_*`` variable this parser's settings read."""
        return sorted(s.variable for s in self.environment.values())


def whole(minimum: int) -> Callable[[str], int]:
    """A flag type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    parse.checks_config = True  # type: ignore[attr-defined]
    return parse


def positive(*, zero: bool = False) -> Callable[[str], float]:
    """A flag type: a finite number > 0 (>= 0 with ``zero``, where 0 means off)."""

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            wanted = "0 (off) or a positive number" if zero else "a positive number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    parse.checks_config = True  # type: ignore[attr-defined]
    return parse


def port(text: str) -> int:
    """A flag type: a TCP port, 0 to 65535."""
    value = whole(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


port.checks_config = True  # type: ignore[attr-defined]


def env_value(name: str, default: str, parse: Callable[[str], T]) -> T:
    """``parse`` of the environment variable ``name`` (else of ``default``); a bad value
    is a :class:`ConfigError` that names the variable."""
    raw = os.environ.get(name, default)
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None


def log_level(text: str) -> str:
    level = str(text).strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level {text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def data_dir_from(text: str) -> Path:
    """The data folder; a :class:`ConfigError` unless it is a writable directory or can be
    made as one. Checking makes nothing: the service makes it when it starts
    (:meth:`ServiceConfig.prepare`)."""
    data_dir = Path(text)
    # `bazel run` starts the program in its runfiles; relative paths mean the caller's folder.
    caller_dir = os.environ.get("BUILD_WORKING_DIRECTORY")
    if caller_dir and not data_dir.is_absolute():
        data_dir = Path(caller_dir) / data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"data dir {data_dir} is not a directory")
    # The folder itself, or the nearest one above it that exists (where it would be made).
    existing = data_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"data dir {data_dir} is not a writable directory: "
                          f"{exc.strerror or exc}") from None
    return data_dir


def check_store(url: str) -> None:
    """Open the metadata store and read from it; a store that does not open (a corrupt
    SQLite file, a database that refuses) is a :class:`ConfigError`. Nothing is written:
    the service migrates the schema when it starts. A SQLite file not made yet has nothing
    to check (and checking makes neither it nor its folder)."""
    sqlite_path = url.removeprefix("sqlite:///")
    if sqlite_path != url and not sqlite_path.startswith(":memory:") and not Path(
            sqlite_path).exists():
        return
    try:
        store = MetadataStore(url)
    except Exception as exc:  # SQLAlchemy raises several types for a malformed URL
        raise ConfigError(f"metadata URL is not usable: {exc}") from None
    probe = "SELECT count(*) FROM sqlite_master" if url.startswith("sqlite") else "SELECT 1"
    try:
        with store.engine.connect() as connection:
            connection.exec_driver_sql(probe)
    except DatabaseError as exc:
        raise ConfigError(
            f"cannot open the metadata store {store.engine.url.render_as_string()}: "
            f"{getattr(exc, 'orig', None) or exc}"
        ) from None
    finally:
        store.close()


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
    #: Serve Prometheus metrics and probes on metrics_host:<port> (None: no endpoint;
    #: 0: any free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: Peers allowed to call the privileged methods besides the keys folder's (see callers).
    allow_callers: tuple[bytes, ...] = ()
    allow_any_caller: bool = False
    #: A read-only copy of the store (a replica) for reads that may lag (see the module doc).
    metadata_read_url: str | None = None

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

    def prepare(self) -> None:
        """Make the data folder (settings are checked without making anything)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

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

    def open_read_store(self, store: MetadataStore) -> MetadataStore:
        """The store for reads that may lag: ``--metadata-read-url``'s (never migrated: a
        replica follows its primary's schema), else ``store`` itself."""
        if not self.metadata_read_url:
            return store
        return MetadataStore(self.metadata_read_url)


def add_common_arguments(parser: ArgumentParser, service: str) -> None:
    """The settings every service has (the table in the module doc)."""
    parser.setting(
        "--config", env="TETHER_CONFIG", metavar="FILE",
        help=f"TOML file of settings (flag names as keys; a [{service}] table for this service)",
    )
    parser.setting("--region", env="TETHER_REGION", default="local",
                   help="the region this service serves (default %(default)s)")
    parser.setting(
        "--bootstrap", env="TETHER_BOOTSTRAP", many=True, metavar="HOST:PORT",
        help="DHT bootstrap node (repeatable; env TETHER_BOOTSTRAP, comma-separated)",
    )
    parser.setting("--data-dir", env="TETHER_DATA_DIR", default="var/tether",
                   help="where keys and the SQLite metadata store live (default %(default)s)")
    parser.setting("--metadata-url", env="TETHER_METADATA_URL",
                   help="the Metadata Store's URL (default: SQLite in the data dir)")
    parser.setting(
        "--metadata-read-url", env="TETHER_METADATA_READ_URL",
        help="a read-only copy of the Metadata Store (e.g. a PostgreSQL replica in this "
        "region) for reads that may lag: tokens, catalog lookups, admitted workers, job status",
    )
    parser.setting("--key-file", env="TETHER_KEY_FILE",
                   help="this service's key (default: <data-dir>/keys/<service>.key)")
    parser.setting("--host", env="TETHER_HOST", default="127.0.0.1",
                   help="the address to bind (on a network of machines: this one's)")
    parser.setting(
        "--udp-port", env="TETHER_UDP_PORT", default=0, type=port,
        help="UDP port of the Hyperswarm socket (default 0: any free port; fix it to open "
        "it in a firewall)",
    )
    parser.setting("--log-level", env="TETHER_LOG_LEVEL", default="INFO",
                   help=f"one of {', '.join(LOG_LEVELS)}")
    parser.setting(
        "--allow-caller", env="TETHER_ALLOW_CALLERS", many=True, metavar="KEY",
        help="public key (64 hex) of a peer allowed to send this service work: a gateway "
        "for the orchestrator, an orchestrator for a worker (repeatable; env "
        "TETHER_ALLOW_CALLERS, comma-separated; the keys in <data-dir>/keys/*.pub always are)",
    )
    parser.setting(
        "--allow-any-caller", env="TETHER_ALLOW_ANY_CALLER", default=False, switch=True,
        help="take work from any peer (only on a closed network)",
    )
    parser.setting(
        "--metrics-port", env="TETHER_METRICS_PORT", type=port,
        help="serve Prometheus metrics and the /healthz and /readyz probes on "
        "--metrics-host:PORT (0: any free port; default: off)",
    )
    parser.setting(
        "--metrics-host", env="TETHER_METRICS_HOST", default="127.0.0.1",
        help="the address metrics and probes bind (default: %(default)s; 0.0.0.0: every "
        "interface, e.g. for a scraper in another container)",
    )
    parser.set_defaults(service=service)


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, service: str
) -> argparse.Namespace:
    """Parse ``argv``: flags, else the settings of ``--config`` (a TOML file), else the
    ``TETHER_*`` environment, else the defaults; each value checked once it is known."""
    # Only the flags, for --config: the environment is read once the config file is too.
    pre, _ = argparse.ArgumentParser.parse_known_args(parser, argv)
    pre.config = pre.config or os.environ.get("TETHER_CONFIG") or None
    if pre.config:
        try:
            with open(pre.config, "rb") as f:
                settings = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {pre.config}: {exc}") from None
        section = settings.pop(service, {})
        merged = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        merged.update(section if isinstance(section, dict) else {})
        known = {a.dest for a in parser._actions}
        values = {key.replace("-", "_"): value for key, value in merged.items()}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ConfigError(f"unknown settings in {pre.config}: {', '.join(unknown)}")
        for key, value in values.items():
            if key in ("bootstrap", "allow_caller") and isinstance(value, str):
                values[key] = [value]
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    _recheck(parser, args)
    return args


def _recheck(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse checks the type of strings only; a config file's numbers go through
    the same flag types here."""
    for action in parser._actions:
        value: Any = getattr(args, action.dest, None)
        check = action.type
        if not callable(check) or not getattr(check, "checks_config", False):
            continue
        if value is None or isinstance(value, str | bool | list):
            continue  # checked by argparse already, or not a number setting
        try:
            check(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{action.option_strings[0]}: {exc}") from None


def bootstrap_from(flags: list[str] | None) -> list[SocketAddress]:
    """``--bootstrap`` flags (each may hold several, comma-separated), else the
    ``TETHER_BOOTSTRAP`` environment variable; a ConfigError if none."""
    texts = [
        b.strip()
        for item in (flags or [os.environ.get("TETHER_BOOTSTRAP", "")])
        for b in item.split(",")
        if b.strip()
    ]
    if not texts:
        raise ConfigError(
            "no DHT bootstrap node; pass --bootstrap HOST:PORT "
            "(or set TETHER_BOOTSTRAP), e.g. the one `tether up` prints"
        )
    try:
        return [_resolved(parse_address(b)) for b in texts]
    except ValueError as exc:
        raise ConfigError(f"--bootstrap: {exc}") from None


def _resolved(addr: SocketAddress) -> SocketAddress:
    """``addr`` with a host name looked up once, as IPv4: the DHT's wire format carries
    addresses, not names (a Kubernetes StatefulSet's DHT pod is known by its DNS name)."""
    try:
        ipaddress.IPv4Address(addr.host)
        return addr
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(addr.host, addr.port, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"cannot resolve {addr.host!r} to an IPv4 address: {exc}") from None
    return SocketAddress(str(found[0][4][0]), addr.port)


def region(text: str) -> str:
    """A region slug; a ConfigError otherwise (topics raise TopicError, not ValueError)."""
    try:
        return topics.region(text)
    except TetherError as exc:
        raise ConfigError(f"--region: {exc.message}") from None


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """Check the parsed settings (ConfigError for the first that is wrong)."""
    bootstrap = bootstrap_from(args.bootstrap)
    region(args.region)
    level = log_level(args.log_level)
    try:
        telemetry.check_environment()
        logs.env_format()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data_dir = data_dir_from(args.data_dir)
    key_file = Path(args.key_file) if args.key_file else data_dir / "keys" / f"{args.service}.key"
    callers = [
        k.strip()
        for item in (args.allow_caller or [])
        for k in item.split(",")
        if k.strip()
    ]
    try:
        allow_callers = tuple(parse_key(k) for k in callers)
    except ValueError as exc:
        raise ConfigError(f"--allow-caller: {exc}") from None
    return ServiceConfig(
        service=args.service,
        region=args.region,
        bootstrap=bootstrap,
        data_dir=data_dir,
        metadata_url=args.metadata_url or sqlite_url(data_dir / "metadata.db"),
        metadata_read_url=args.metadata_read_url or None,
        key_file=key_file,
        host=args.host,
        udp_port=args.udp_port,
        log_level=level,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        allow_callers=allow_callers,
        allow_any_caller=bool(args.allow_any_caller),
    )


def configure(
    parser: argparse.ArgumentParser, argv: list[str] | None, service: str, *, store: bool
) -> tuple[argparse.Namespace, ServiceConfig]:
    """Parse and check a service's settings, and (``store``) that its metadata store
    opens: everything a service checks before it starts anything."""
    args = parse_args(parser, argv, service)
    config = config_from_args(args)
    if store:
        check_store(config.metadata_url)
        if config.metadata_read_url:
            check_store(config.metadata_read_url)
    return args, config


def setup_telemetry(config: ServiceConfig) -> None:
    """Logs with trace ids, traces, and metrics (Prometheus and probes when
    ``metrics_port``)."""
    setup_logging(config.service, config.log_level)
    telemetry.setup_metrics(
        config.service, prometheus_port=config.metrics_port,
        prometheus_host=config.metrics_host,
    )


def setup_logging(service: str, level: str, *, default_format: str = "json") -> None:
    """Logs on stderr as ``tether.logs`` says (JSON unless ``TETHER_LOG_FORMAT=text``;
    ``default_format`` for a command run by a person), then traces."""
    try:
        logs.setup(service, log_level(level), default_format=default_format)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    telemetry.setup(f"tether-{service}")


def announce_ready(service: str, public_key: bytes, **extra: object) -> None:
    """The one stdout line saying the service is reachable (and where its metrics and
    probes are, when it serves them); the process is ready from here on."""
    line = {"service": service, "public_key": public_key.hex(), **extra}
    metrics = telemetry.metrics_url()
    if metrics is not None:
        line["metrics"] = metrics
    health.PROCESS.set(health.STARTED, True)
    print(json.dumps(line), flush=True)


#: The most a graceful stop may take before the process is cancelled anyway.
STOP_TIMEOUT_S = 10.0


class Runtime:
    """One service process's run: it owns the graceful-stop hooks (a worker's drain, a
    network that unannounces itself while it can still talk). On SIGINT/SIGTERM the hooks
    run newest first (a drain registered after its network's close runs before it), for
    at most ``stop_timeout_s`` together; then the service is cancelled."""

    def __init__(self, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.stop_timeout_s = stop_timeout_s
        self._hooks: list[Callable[[], Awaitable[None]]] = []

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` when a signal asks the process to stop, before anything is
        cancelled (see the class doc for the order)."""
        self._hooks.append(hook)

    async def stop(self) -> None:
        """Run the stop hooks, newest first, for up to ``stop_timeout_s`` in all."""
        with trio.move_on_after(self.stop_timeout_s):
            for hook in reversed(self._hooks):
                await hook()

    def run(self, service: str, body: Callable[[], Awaitable[None]]) -> int:
        """:func:`run_service` with this runtime's hooks."""
        return run_service(service, body, runtime=self)

    async def run_until_signalled(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body``; SIGINT/SIGTERM run the stop hooks, then cancel it. A second
        signal while the hooks run (a drain) stops at once."""
        log = logging.getLogger("tether")
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        log.info("stopping on signal (another one stops at once)")
                        health.PROCESS.drain()  # probes say not-ready while it stops
                        async with trio.open_nursery() as stopping:

                            async def run_hooks() -> None:
                                await self.stop()
                                stopping.cancel_scope.cancel()

                            stopping.start_soon(run_hooks)
                            async for _ in signals:
                                log.warning("second signal: stopping now")
                                stopping.cancel_scope.cancel()
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)
            await body()
            nursery.cancel_scope.cancel()


def run_service(
    service: str, body: Callable[[], Awaitable[None]], *, runtime: Runtime | None = None
) -> int:
    """Run a service until a signal stops it; 0. A Tether error that stops it (a model
    no replica serves a verified copy of, a registry that refuses) is one line on stderr,
    ``tether <service>: <message>``, and 1; its traceback is logged at DEBUG (so is a
    bootstrap node that does not answer: one line and 1). A bug
    (INTERNAL, UNKNOWN, or not a Tether error) keeps its traceback."""
    try:
        trio.run((runtime or Runtime()).run_until_signalled, body)
    except BaseException as exc:
        from p2p_transport.dht_rpc.query import QueryError

        if find_error(exc, QueryError) is not None:  # nothing answered at --bootstrap
            logging.getLogger("tether").debug("%s stopped", service, exc_info=exc)
            print(f"tether {service}: no DHT bootstrap node answered; is the network up? "
                  "(--bootstrap: the one `tether up` prints)", file=sys.stderr, flush=True)
            return 1
        error = find_error(exc, TetherError)
        if error is None or error.code in _BUGS:
            raise
        logging.getLogger("tether").debug("%s stopped", service, exc_info=exc)
        print(f"tether {service}: {error.message}", file=sys.stderr, flush=True)
        return 1
    return 0


_BUGS = {status_pb2.STATUS_CODE_INTERNAL, status_pb2.STATUS_CODE_UNKNOWN}
