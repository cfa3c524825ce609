"""The Tether Model Registry service (`bazel run //registry`, `tether registry`).

Serves ``tether.v1.Registry`` over Hyperswarm RPC on ``tether/registry/<region>``,
backed by the Metadata Store (models, versions, capabilities, policies). It answers
known services (its data folder's keys, ``--allow-caller``) and admitted workers.
"""

from __future__ import annotations

import argparse
import sys

import trio

from registry.catalog import Catalog
from registry.service import RegistryService
from tether import process, topics
from tether.admission import Admissions
from tether.callers import CallerPolicy
from tether.net.swarm import SwarmNetwork
from tether.rpc import collect_handlers

DESCRIPTION = "Tether Model Registry: catalog of models, versions, capabilities and policies."


def build_parser() -> argparse.ArgumentParser:
    parser = process.ArgumentParser(prog="tether registry", description=DESCRIPTION)
    process.add_common_arguments(parser, "registry")
    return parser


async def serve(config: process.ServiceConfig) -> None:
    store = await trio.to_thread.run_sync(config.open_store)
    reads = config.open_read_store(store)
    admissions = Admissions.from_store(reads, config.data_dir)
    await admissions.reload()
    readers = CallerPolicy(
        config.allow_callers,
        keys_dir=config.data_dir / "keys",
        allow_any=config.allow_any_caller,
        role="service",
        also=admissions.admits,
        hint=" (a worker: admit it with `tether admit KEY`)",
    )
    service = RegistryService(
        Catalog(store), callers=config.callers("publisher"), readers=readers,
        admissions=admissions, lookups=Catalog(reads) if reads is not store else None,
    )
    network = SwarmNetwork(
        config.keypair(),
        collect_handlers(service),
        bootstrap=config.bootstrap,
        host=config.host,
        port=config.udp_port,
    )
    process.on_stop(network.close)
    try:
        async with network.running(), trio.open_nursery() as nursery:
            nursery.start_soon(admissions.follow)
            await network.join(topics.registry(config.region), server=True, client=False)
            process.announce_ready("registry", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()
        reads.close()


def configure(argv: list[str] | None) -> tuple[argparse.Namespace, process.ServiceConfig]:
    """The registry's checked settings (ConfigError for the first that is wrong)."""
    return process.configure(build_parser(), argv, "registry", store=True)


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("registry"):
        _, config = configure(argv)
    process.setup_telemetry(config)
    return process.run_service("registry", lambda: serve(config))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
