"""A registry replica in a process of its own (``python -m tests.integration.registry_process``),
so that tests can kill it for real (SIGKILL) and start it again with the same key. It runs the
real ``RegistryService`` over a catalog in the given SQLite metadata store, on a real
``SwarmNetwork``. It prints one line, ``ready``, once it has announced.
"""

from __future__ import annotations

import argparse
import sys

import trio

from registry.catalog import Catalog
from registry.service import RegistryService
from tether import topics
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net.swarm import SwarmNetwork, parse_address
from tether.rpc import collect_handlers


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="append", required=True)
    parser.add_argument("--db", required=True, help="the SQLite metadata store's path")
    parser.add_argument("--seed", required=True, help="the registry's key seed (hex)")
    parser.add_argument("--region", default="eu-west")
    args = parser.parse_args(argv)
    store = MetadataStore.sqlite(args.db)
    net = SwarmNetwork(
        KeyPair.from_seed(bytes.fromhex(args.seed)),
        collect_handlers(RegistryService(Catalog(store))),
        bootstrap=[parse_address(b) for b in args.bootstrap],
    )
    async with net.running():
        await net.join(topics.registry(args.region), server=True, client=False)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
