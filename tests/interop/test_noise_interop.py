"""Noise IK (as hyperdht) and XX (as secret-stream) against Node, in both directions."""

from __future__ import annotations

import os

import pytest
import trio
from transport_node_harness import start_node

from p2p_transport import crypto
from p2p_transport.noise import NoiseHandshake, Pattern, dht_handshake

pytestmark = pytest.mark.interop


async def _run(pattern: str, py_initiator: bool) -> None:
    node = await start_node("noise-peer.mjs")
    try:
        with trio.fail_after(20):
            py_kp = crypto.key_pair(os.urandom(32))
            node_seed = os.urandom(32)
            node_pk = crypto.key_pair(node_seed).public_key
            await node.send(
                cmd="init", pattern=pattern, initiator=not py_initiator, seed=node_seed.hex(),
                remotePublicKey=py_kp.public_key.hex(),
            )
            assert (await node.expect("ready"))["publicKey"] == node_pk.hex()
            if pattern == "IK":
                hs = dht_handshake(py_kp, node_pk if py_initiator else None)
            else:
                hs = NoiseHandshake(Pattern.XX, py_initiator, py_kp)
            py_turn = py_initiator
            n = 0
            while not hs.complete:
                payload = f"payload-{n}".encode() * (n + 1)
                if py_turn:
                    await node.send(cmd="recv", message=hs.send(payload).hex())
                    assert (await node.expect("payload"))["payload"] == payload.hex()
                else:
                    await node.send(cmd="send", payload=payload.hex())
                    msg = bytes.fromhex((await node.expect("message"))["message"])
                    assert hs.recv(msg) == payload
                py_turn = not py_turn
                n += 1
            final = await node.expect("final")
            res = hs.result
            assert res is not None
            assert res.hash.hex() == final["hash"]
            assert res.tx.hex() == final["rx"]
            assert res.rx.hex() == final["tx"]
            assert res.remote_public_key == node_pk
            assert final["remotePublicKey"] == py_kp.public_key.hex()
            # the Node side's remoteId is the id this side sends
            assert res.stream_id.hex() == final["remoteId"]
            if pattern == "IK":
                assert res.holepunch_secret.hex() == final["holepunchSecret"]
    finally:
        await node.close()


@pytest.mark.parametrize("py_initiator", [True, False], ids=["py-initiator", "py-responder"])
@pytest.mark.parametrize("pattern", ["IK", "XX"])
def test_noise_against_node(pattern: str, py_initiator: bool) -> None:
    trio.run(_run, pattern, py_initiator)
