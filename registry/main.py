"""The Tether Model Registry service (`bazel run //registry`, `tether registry`).

Serves ``tether.v1.Registry`` over Hyperswarm RPC on ``tether/registry/<region>``,
backed by the Metadata Store (models, versions, capabilities, policies).
"""

from __future__ import annotations

import argparse
import sys

import trio

from registry.catalog import Catalog
from registry.service import RegistryService
from tether import process, topics
from tether.net.swarm import SwarmNetwork
from tether.rpc import collect_handlers

DESCRIPTION = "Tether Model Registry: catalog of models, versions, capabilities and policies."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether registry", description=DESCRIPTION)
    process.add_common_arguments(parser, "registry")
    return parser


async def serve(config: process.ServiceConfig) -> None:
    store = await trio.to_thread.run_sync(config.open_store)
    service = RegistryService(Catalog(store), callers=config.callers("publisher"))
    network = SwarmNetwork(
        config.keypair(),
        collect_handlers(service),
        bootstrap=config.bootstrap,
        host=config.host,
        port=config.udp_port,
    )
    process.on_stop(network.close)
    try:
        async with network.running():
            await network.join(topics.registry(config.region), server=True, client=False)
            process.announce_ready("registry", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    config = process.config_from_args(process.parse_args(build_parser(), argv, "registry"))
    process.setup_telemetry(config)
    trio.run(process.run_until_signalled, lambda: serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
