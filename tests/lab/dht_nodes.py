"""COUNT persistent Python DHT storage nodes (``p2p_transport.hyperdht.storage``) in one
process on HOST, bootstrapping from BOOTSTRAP, for the lab's DHT churn test (the Node
counterpart is ``tests/lab/node/dht_nodes.mjs``). Prints ``{"nodes": ["HOST:PORT", ...]}``
once all are bootstrapped, then runs until stopped.

    python tests/lab/dht_nodes.py HOST BOOTSTRAP_HOST:PORT COUNT
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2p_transport.hyperdht.storage import open_storage_node
from tether.net.swarm import parse_address


async def main(host: str, bootstrap: str, count: int) -> None:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(
            open_storage_node(host, bootstrap=[parse_address(bootstrap)]))
            for _ in range(count)]
        print(json.dumps({"nodes": [f"{n.address.host}:{n.address.port}" for n in nodes]}),
              flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
