"""The Tether RPC Gateway service (`bazel run //gateway`, `tether gateway`).

Serves ``tether.v1.Gateway`` to clients over Hyperswarm under a stable public
key (its key file) and on the topic ``tether/gateway/<region>``; validates
tenant tokens from the Metadata Store, rate-limits per tenant and forwards to
the orchestrator found on ``tether/control/<region>`` (or, while none is usable there,
on a ``--fallback-region``'s). With ``--http-port`` it
also serves the OpenAI-compatible HTTP API of ``gateway.openai``, with ``--grpc-port``
``tether.v1.Gateway`` over gRPC (``gateway.grpc_edge``); same checks on every edge.
Readiness (an orchestrator and a registry reachable, the token store readable) is
checked every few seconds and answered by ``/readyz`` on the HTTP edge and the metrics
port, and by ``grpc.health.v1.Health`` on the gRPC edge.
"""

from __future__ import annotations

import functools
import logging
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from gateway.assembly import assemble
from gateway.grpc_edge import GrpcEdge
from gateway.http import MAX_CONNECTIONS_PER_CLIENT, HttpApi, serve_http
from gateway.ratelimit import TokenBuckets
from gateway.service import GatewayService
from tether import health, logs, process, topics
from tether.errors import TetherError
from tether.net.swarm import SwarmNetwork

DESCRIPTION = (
    "Tether RPC Gateway: authenticates tenants, validates and rate-limits requests, "
    "starts traces and streams results to clients."
)


def build_parser() -> process.ArgumentParser:
    parser = process.ArgumentParser(prog="tether gateway", description=DESCRIPTION)
    process.add_common_arguments(parser, "gateway")
    parser.setting(
        "--rate", env="TETHER_RATE", default=20.0, type=process.positive(),
        help="requests per second per tenant (token bucket refill; default %(default)s)",
    )
    parser.setting(
        "--burst", env="TETHER_BURST", default=40, type=process.whole(1),
        help="token bucket size per tenant (default %(default)s)",
    )
    parser.setting(
        "--tls-cert", env="TETHER_TLS_CERT", metavar="PEM",
        help="certificate chain for the HTTP and gRPC edges: they serve TLS (with --tls-key)",
    )
    parser.setting("--tls-key", env="TETHER_TLS_KEY", metavar="PEM",
                   help="private key of --tls-cert")
    parser.setting(
        "--tls-client-ca", env="TETHER_TLS_CLIENT_CA", metavar="PEM",
        help="mutual TLS: both edges require a client certificate signed by this CA "
             "(with --tls-cert)",
    )
    parser.setting(
        "--http-per-client", env="TETHER_HTTP_PER_CLIENT", default=MAX_CONNECTIONS_PER_CLIENT,
        type=process.whole(1), metavar="N",
        help="connections the HTTP edge keeps open per client address; more are closed at "
             "once (default: %(default)s; raise it behind a proxy or for a load test)",
    )
    parser.setting(
        "--fallback-region", env="TETHER_FALLBACK_REGIONS", many=True, metavar="REGION",
        help="send work to this region's orchestrators while none of --region is usable "
        "(repeatable, in order; env TETHER_FALLBACK_REGIONS, comma-separated)",
    )
    for edge, env, what in (
        ("http", "TETHER_HTTP_PORT", "the OpenAI-compatible HTTP API"),
        ("grpc", "TETHER_GRPC_PORT", "tether.v1.Gateway over gRPC"),
    ):
        parser.setting(
            f"--{edge}-port", env=env, type=process.port,
            help=f"also serve {what} on --host:PORT (0: any free port; default: off)",
        )
    return parser


@dataclass(frozen=True)
class Tls:
    """The edges' certificate chain and private key (PEM files) and, for mutual TLS, the
    CA that signs the clients' certificates."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @classmethod
    def load(cls, cert: str | None, key: str | None, client_ca: str | None = None) -> Tls | None:
        """From the flags; None without them. Exits with a clear message when only one of
        the pair is given, a client CA comes without them, or the files do not load."""
        if not cert and not key:
            if client_ca:
                raise process.ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if not cert or not key:
            raise process.ConfigError("--tls-cert and --tls-key go together")
        tls = cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        try:
            tls.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise process.ConfigError(f"cannot load the TLS certificates and key: {exc}") from None
        return tls

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_pair(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain), as grpcio takes them."""
        return self.key_file.read_bytes(), self.cert_file.read_bytes()

    def grpc_client_ca(self) -> bytes | None:
        """The client CA (PEM) for grpcio; None: no client certificates asked for."""
        return self.client_ca_file.read_bytes() if self.client_ca_file else None


async def serve(
    config: process.ServiceConfig,
    rate: float,
    burst: int,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    tls: Tls | None = None,
    http_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    runtime: process.Runtime | None = None,
    fallback_regions: Sequence[str] = (),
) -> None:
    runtime = runtime or process.Runtime()
    store = await trio.to_thread.run_sync(config.open_store)
    if config.metadata_read_url:
        # The gateway only reads (tokens, tenants, model ids): all of it from the replica.
        store.close()
        store = config.open_read_store(store)
    network = SwarmNetwork(
        config.keypair(), {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    service = GatewayService(
        network=network,
        store=store,
        region=config.region,
        buckets=TokenBuckets(rate=rate, burst=burst),
        readiness=health.PROCESS,
        fallback_regions=fallback_regions,
    )
    # An access line per call on the Hyperswarm edge (the HTTP and gRPC edges log theirs).
    assembly = assemble(
        service, config.region, fallback_regions=fallback_regions,
        wrap=lambda handlers: logs.access_logged(
            handlers, logging.getLogger("tether.gateway.access"), "p2p"),
    )
    runtime.on_stop(network.close)
    try:
        async with assembly.running(network), trio.open_nursery() as nursery:
            extra = {}
            if http_port is not None:
                port = await nursery.start(functools.partial(
                    serve_http, HttpApi(service), config.host, http_port,
                    ssl_context=tls.ssl_context() if tls else None, on_stop=runtime.on_stop,
                    max_per_client=http_per_client,
                ))
                extra["http"] = f"{'https' if tls else 'http'}://{config.host}:{port}"
            if grpc_port is not None:
                edge = GrpcEdge(
                    service, config.host, grpc_port, tls=tls.grpc_pair() if tls else None,
                    client_ca=tls.grpc_client_ca() if tls else None,
                )
                port = await nursery.start(edge.run)
                extra["grpc"] = f"{config.host}:{port}"
            process.announce_ready(
                "gateway",
                network.public_key,
                region=config.region,
                topic=topics.gateway(config.region),
                **extra,
            )
            await trio.sleep_forever()
    finally:
        store.close()


@dataclass(frozen=True)
class Settings:
    """The gateway's settings, typed and checked (:func:`configure`)."""

    common: process.ServiceConfig
    rate: float
    burst: int
    http_port: int | None
    grpc_port: int | None
    http_per_client: int
    tls: Tls | None
    fallback_regions: list[str]


def configure(argv: list[str] | None) -> Settings:
    """The gateway's checked settings (ConfigError for the first that is wrong)."""
    args, config = process.configure(build_parser(), argv, "gateway", store=True)
    return Settings(
        common=config, rate=args.rate, burst=args.burst, http_port=args.http_port,
        grpc_port=args.grpc_port, http_per_client=args.http_per_client,
        tls=Tls.load(args.tls_cert, args.tls_key, args.tls_client_ca),
        fallback_regions=fallback_regions_from(args.fallback_region, config.region),
    )


def fallback_regions_from(flags: list[str] | None, own: str) -> list[str]:
    """``--fallback-region`` flags (else ``TETHER_FALLBACK_REGIONS``), checked region slugs
    other than the gateway's own."""
    names = [r.strip() for item in (flags or []) for r in item.split(",") if r.strip()]
    for name in names:
        try:
            topics.region(name)
        except TetherError as exc:
            raise process.ConfigError(f"--fallback-region: {exc.message}") from None
        if name == own:
            raise process.ConfigError(f"--fallback-region {name} is the gateway's own region")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("gateway"):
        settings = configure(argv)
    settings.common.prepare()
    process.setup_telemetry(settings.common)
    runtime = process.Runtime()
    return runtime.run("gateway", lambda: serve(
        settings.common, settings.rate, settings.burst,
        http_port=settings.http_port, grpc_port=settings.grpc_port, tls=settings.tls,
        http_per_client=settings.http_per_client, runtime=runtime,
        fallback_regions=settings.fallback_regions,
    ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
