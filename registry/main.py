"""The Tether Model Registry service (`bazel run //registry`, `tether registry`).

Serves ``tether.v1.Registry`` over Hyperswarm RPC on ``tether/registry/<region>``,
backed by the Metadata Store (models, versions, capabilities, policies). It answers
known services (its data folder's keys, ``--allow-caller``) and admitted workers.
"""

from __future__ import annotations

import sys

import trio

from registry.assembly import assemble
from registry.catalog import Catalog
from registry.service import RegistryService
from tether import process
from tether.admission import Admissions
from tether.callers import CallerPolicy
from tether.net.swarm import SwarmNetwork

DESCRIPTION = "Tether Model Registry: catalog of models, versions, capabilities and policies."


def build_parser() -> process.ArgumentParser:
    parser = process.ArgumentParser(prog="tether registry", description=DESCRIPTION)
    process.add_common_arguments(parser, "registry")
    return parser


async def serve(config: process.ServiceConfig, runtime: process.Runtime | None = None) -> None:
    runtime = runtime or process.Runtime()
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
        config.keypair(), {}, bootstrap=config.bootstrap, host=config.host, port=config.udp_port
    )
    runtime.on_stop(network.close)
    try:
        async with assemble(service, config.region, admissions=admissions).running(network):
            process.announce_ready("registry", network.public_key, region=config.region)
            await trio.sleep_forever()
    finally:
        store.close()
        reads.close()


def configure(argv: list[str] | None) -> process.ServiceConfig:
    """The registry's settings, typed and checked (ConfigError for the first that is
    wrong): the ones every service has."""
    return process.configure(build_parser(), argv, "registry", store=True)[1]


def main(argv: list[str] | None = None) -> int:
    with process.exit_on_config_error("registry"):
        config = configure(argv)
    config.prepare()
    process.setup_telemetry(config)
    runtime = process.Runtime()
    return runtime.run("registry", lambda: serve(config, runtime))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
