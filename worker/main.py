"""The Tether Inference Worker service (`bazel run //worker`, `tether worker`).

Resolves the models it serves through the registry, fetches and verifies their
artifacts, loads them (TensorRT when a GPU and TensorRT are present, ONNX
Runtime otherwise), serves ``tether.v1.Worker`` over Hyperswarm RPC, and
announces itself on ``tether/presence/<region>`` and on
``tether/models/<model>/<version>/<region>`` with signed heartbeats every 5 s.
SIGINT/SIGTERM drain it: no new work, in-flight requests finish.

Each worker has its own key (``tether.admission.claim_worker_key``): by default
``<data-dir>/keys/workers/<worker-id>.key``, or the first free ``worker-<n>.key``.
Orchestrators place work on it only once it is admitted (``tether admit``, or by
sharing the orchestrator's data folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from tether import health, process, topics
from tether.admission import WorkerKey, claim_worker_key
from tether.artifacts import ArtifactStore, blob_store_from_spec
from tether.errors import FailedPrecondition, TetherError
from tether.keys import KeyPair
from tether.net import wait_for_peer
from tether.net.swarm import SwarmNetwork
from tether.rpc import RpcError, StatusCode
from tether.v1 import registry_pb2, services_pb2, services_rpc
from worker.assembly import assemble
from worker.engine.detect import select_backend
from worker.engine.engine import DEFAULT_MAX_BATCH, ExecutionEngine
from worker.engine.runtime import WorkerEngine
from worker.loader import ModelLoader
from worker.service import WorkerConfig, WorkerService

DESCRIPTION = (
    "Tether Inference Worker: loads verified model artifacts, runs inference on CPU or GPU, "
    "streams result chunks and announces its health on the presence topic."
)
log = logging.getLogger("tether.worker")


def build_parser() -> process.ArgumentParser:
    parser = process.ArgumentParser(prog="tether worker", description=DESCRIPTION)
    process.add_common_arguments(parser, "worker")
    parser.setting(
        "--worker-id", env="TETHER_WORKER_ID",
        help="this worker's name in the fleet; its key is <data-dir>/keys/workers/<id>.key "
        "(default: worker-<key prefix>, with the first free keys/workers/worker-<n>.key)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL[@VERSION]",
        help="serve this model (repeatable); default: every model the registry lists",
    )
    parser.setting(
        "--artifacts", env="TETHER_ARTIFACTS", many=True, metavar="REPLICA",
        help="artifact replica: a directory or s3://KEY:SECRET@HOST:PORT/BUCKET "
        "(repeatable; env TETHER_ARTIFACTS, comma-separated; default <data-dir>/artifacts/r0..r2)",
    )
    one, none = process.whole(1), process.whole(0)
    parser.setting(
        "--max-batch", env="TETHER_MAX_BATCH", default=DEFAULT_MAX_BATCH, type=one,
        help="text generation: sequences of one model stepped together (continuous batching; "
        "each also reserves its KV cache within --kv-cache-mb before it joins)",
    )
    parser.setting(
        "--kv-cache-mb", env="TETHER_KV_CACHE_MB", default=1024, type=one,
        help="KV-cache memory all running sequences may hold (reported in heartbeats)",
    )
    parser.setting(
        "--slots", env="TETHER_SLOTS", type=one,
        help="requests run at once (default: --max-batch: with continuous batching the "
        "capacity the scheduler sees is in sequences)",
    )
    parser.setting(
        "--queue-limit", env="TETHER_QUEUE_LIMIT", default=16, type=none,
        help="requests that may wait for a slot (default %(default)s)",
    )
    parser.setting(
        "--cache-mb", env="TETHER_CACHE_MB", default=2048, type=one,
        help="model cache budget (RAM on CPU, VRAM on GPU)",
    )
    parser.add_argument("--cpu", action="store_true", help="use ONNX Runtime even on a GPU")
    return parser


def artifact_replicas(
    args: Settings | argparse.Namespace, config: process.ServiceConfig
) -> list[str]:
    specs = [s.strip() for item in args.artifacts or [] for s in item.split(",") if s.strip()]
    return specs or [str(config.data_dir / "artifacts" / f"r{i}") for i in range(3)]


async def resolve_models(
    network: SwarmNetwork, region: str, wanted: list[str]
) -> list[registry_pb2.ModelRecord]:
    peer = await wait_for_peer(network, topics.registry(region), timeout=30)
    registry = services_rpc.RegistryStub(peer.rpc)
    if not wanted:
        listed = await registry.ListModels(services_pb2.ListModelsRequest(), timeout=30)
        return list(listed.models)
    records = []
    for item in wanted:
        model, _, version = item.partition("@")
        records.append(
            await registry.Resolve(
                services_pb2.ResolveRequest(model_id=model, version=version), timeout=30
            )
        )
    return records


def claim_key(config: process.ServiceConfig, args: Settings | argparse.Namespace) -> WorkerKey:
    """This worker's own key, held until released (see the module doc); ``--key-file``
    when given, else one in ``<data-dir>/keys/workers/``."""
    try:
        return claim_worker_key(
            config.data_dir,
            worker_id=args.worker_id,
            key_file=Path(args.key_file) if args.key_file else None,
        )
    except TetherError as exc:
        raise SystemExit(f"worker: {exc.message}") from None


async def serve(
    config: process.ServiceConfig, args: Settings | argparse.Namespace,
    runtime: process.Runtime | None = None,
) -> None:
    claimed = claim_key(config, args)
    config.key_file = claimed.path
    try:
        await _serve(config, args, claimed.keypair, runtime or process.Runtime())
    finally:
        claimed.release()


async def _serve(
    config: process.ServiceConfig, args: Settings | argparse.Namespace, keypair: KeyPair,
    runtime: process.Runtime,
) -> None:
    worker_id = args.worker_id or f"worker-{keypair.public_key.hex()[:8]}"
    backend, caps = select_backend(config.data_dir / "engines", prefer_cpu=args.cpu)
    network = SwarmNetwork(
        keypair, {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    async with network.running():
        await network.join(topics.registry(config.region), server=False, client=True)
        try:
            records = await resolve_models(network, config.region, args.model)
        except RpcError as exc:
            if exc.code != StatusCode.PERMISSION_DENIED:
                raise
            raise SystemExit(
                f"worker: the registry does not know this worker ({exc.message}); an "
                f"operator admits it with: tether admit {keypair.public_key.hex()}"
            ) from None
        if not records:
            raise FailedPrecondition("the registry lists no models to serve; publish one first")
        # Artifacts must be signed by the key that published each record.
        artifacts = ArtifactStore(
            [blob_store_from_spec(s, create_bucket=False) for s in artifact_replicas(args, config)],
            trusted_keys={r.publisher_key for r in records},
        )
        loader = ModelLoader(artifacts, backend, budget_bytes=args.cache_mb * 1024 * 1024)
        engine = WorkerEngine(loader, records, engine=ExecutionEngine(
            loader, max_batch=args.max_batch, kv_budget_bytes=args.kv_cache_mb * 1024 * 1024))
        await engine.warm()
        service = WorkerService(
            WorkerConfig(
                worker_id=worker_id,
                region=config.region,
                gpu_class=caps.gpu_class,
                vram_gb=caps.vram_gb,
                accelerators=list(caps.accelerators),
                slots=args.slots or args.max_batch,
                queue_limit=args.queue_limit,
            ),
            engine,
            keypair,
            callers=config.callers("orchestrator"),
            readiness=health.PROCESS,
        )
        await assemble(
            service, config.region, [(r.model.model_id, r.model.version) for r in records]
        ).run(network)
        process.announce_ready(
            "worker",
            network.public_key,
            region=config.region,
            worker_id=worker_id,
            models=[f"{r.model.model_id}@{r.model.version}" for r in records],
            engine=caps.gpu_class,
        )
        async def drain() -> None:
            service.stop_announcing()
            drained = await service.drain(grace_s=process.STOP_TIMEOUT_S / 2)
            log.info("drained (all in-flight finished: %s)", drained)
            await network.close()

        runtime.on_stop(drain)
        await trio.sleep_forever()


@dataclass(frozen=True)
class Settings:
    """The worker's settings, typed and checked (:func:`configure`); :func:`serve` reads
    them by the flags' names."""

    common: process.ServiceConfig
    worker_id: str | None
    model: list[str]
    artifacts: list[str] | None
    max_batch: int
    kv_cache_mb: int
    #: None: --max-batch.
    slots: int | None
    queue_limit: int
    cache_mb: int
    cpu: bool
    #: The --key-file given, if any (else the worker claims one: see the module doc).
    key_file: str | None


def configure(argv: list[str] | None) -> Settings:
    """The worker's checked settings (ConfigError for the first that is wrong)."""
    args, config = process.configure(build_parser(), argv, "worker", store=False)
    return Settings(
        common=config, worker_id=args.worker_id, model=list(args.model),
        artifacts=args.artifacts, max_batch=args.max_batch, kv_cache_mb=args.kv_cache_mb,
        slots=args.slots, queue_limit=args.queue_limit, cache_mb=args.cache_mb,
        cpu=bool(args.cpu), key_file=args.key_file,
    )


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("worker"):
        settings = configure(argv)
    config = settings.common
    config.prepare()
    process.setup_telemetry(config)
    runtime = process.Runtime()
    return runtime.run("worker", lambda: serve(config, settings, runtime))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
