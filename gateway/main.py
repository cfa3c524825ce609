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

import argparse
import functools
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from gateway.grpc_edge import GrpcEdge
from gateway.http import MAX_CONNECTIONS_PER_CLIENT, HttpApi, serve_http
from gateway.ratelimit import TokenBuckets
from gateway.service import GatewayService
from tether import health, logs, process, topics
from tether.errors import TetherError
from tether.net.swarm import SwarmNetwork
from tether.rpc import collect_handlers

DESCRIPTION = (
    "Tether RPC Gateway: authenticates tenants, validates and rate-limits requests, "
    "starts traces and streams results to clients."
)


def build_parser() -> argparse.ArgumentParser:
    parser = process.ArgumentParser(prog="tether gateway", description=DESCRIPTION)
    process.add_common_arguments(parser, "gateway")
    rate, burst = process.positive(), process.whole(1)
    parser.add_argument(
        "--rate",
        type=rate,
        default=process.env_value("TETHER_RATE", "20", rate),
        help="requests per second per tenant (token bucket refill)",
    )
    parser.add_argument(
        "--burst",
        type=burst,
        default=process.env_value("TETHER_BURST", "40", burst),
        help="token bucket size per tenant",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("TETHER_TLS_CERT"),
        metavar="PEM",
        help="certificate chain for the HTTP and gRPC edges: they serve TLS (with --tls-key)",
    )
    parser.add_argument(
        "--tls-key", default=os.environ.get("TETHER_TLS_KEY"), metavar="PEM",
        help="private key of --tls-cert",
    )
    parser.add_argument(
        "--tls-client-ca", default=os.environ.get("TETHER_TLS_CLIENT_CA"), metavar="PEM",
        help="mutual TLS: both edges require a client certificate signed by this CA "
             "(with --tls-cert)",
    )
    parser.add_argument(
        "--http-per-client", type=int, metavar="N",
        default=int(os.environ.get("TETHER_HTTP_PER_CLIENT", MAX_CONNECTIONS_PER_CLIENT)),
        help="connections the HTTP edge keeps open per client address; more are closed at "
             "once (default: %(default)s; raise it behind a proxy or for a load test)",
    )
    parser.add_argument(
        "--fallback-region",
        action="append",
        default=None,
        metavar="REGION",
        help="send work to this region's orchestrators while none of --region is usable "
        "(repeatable, in order; env TETHER_FALLBACK_REGIONS, comma-separated)",
    )
    for edge, env, what in (
        ("http", "TETHER_HTTP_PORT", "the OpenAI-compatible HTTP API"),
        ("grpc", "TETHER_GRPC_PORT", "tether.v1.Gateway over gRPC"),
    ):
        parser.add_argument(
            f"--{edge}-port",
            type=process.port,
            default=process.env_value(env, "", lambda text: process.port(text) if text else None),
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
    fallback_regions: Sequence[str] = (),
) -> None:
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
    network.handlers.update(logs.access_logged(
        collect_handlers(service), logging.getLogger("tether.gateway.access"), "p2p"))
    process.on_stop(network.close)
    try:
        async with network.running(), trio.open_nursery() as nursery:
            await network.join(topics.gateway(config.region), server=True, client=False)
            await network.join(topics.control(config.region), server=False, client=True)
            for fallback in fallback_regions:
                await network.join(topics.control(fallback), server=False, client=True)
            await network.join(topics.registry(config.region), server=False, client=True)
            nursery.start_soon(service.watch_readiness)
            nursery.start_soon(service.orchestrators.watch)  # finds dead orchestrators
            extra = {}
            if http_port is not None:
                port = await nursery.start(functools.partial(
                    serve_http, HttpApi(service), config.host, http_port,
                    ssl_context=tls.ssl_context() if tls else None, on_stop=process.on_stop,
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


def fallback_regions_from(flags: list[str] | None, own: str) -> list[str]:
    """``--fallback-region`` flags (else ``TETHER_FALLBACK_REGIONS``), checked region slugs
    other than the gateway's own."""
    names = [r.strip() for item in (flags or [os.environ.get("TETHER_FALLBACK_REGIONS", "")])
             for r in item.split(",") if r.strip()]
    for name in names:
        try:
            topics.region(name)
        except TetherError as exc:
            raise process.ConfigError(f"--fallback-region: {exc.message}") from None
        if name == own:
            raise process.ConfigError(f"--fallback-region {name} is the gateway's own region")
    return list(dict.fromkeys(names))


def configure(
    argv: list[str] | None,
) -> tuple[argparse.Namespace, process.ServiceConfig, Tls | None]:
    """The gateway's checked settings (ConfigError for the first that is wrong)."""
    args, config = process.configure(build_parser(), argv, "gateway", store=True)
    fallback_regions_from(args.fallback_region, config.region)
    return args, config, Tls.load(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("gateway"):
        args, config, tls = configure(argv)
    process.setup_telemetry(config)
    return process.run_service("gateway", lambda: serve(
        config, args.rate, args.burst,
        http_port=args.http_port, grpc_port=args.grpc_port, tls=tls,
        http_per_client=args.http_per_client,
        fallback_regions=fallback_regions_from(args.fallback_region, config.region),
    ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
