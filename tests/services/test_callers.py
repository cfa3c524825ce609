"""Who may send a service work: keys given in the configuration, and the `.pub` files
that services sharing a data folder write for each other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from orchestrator import main as orchestrator_main
from registry.catalog import Catalog
from registry.service import RegistryService
from tether import blocking, process
from tether.callers import CallerPolicy, parse_key
from tether.errors import PermissionDenied
from tether.keys import KeyPair
from tether.metadata.store import MetadataStore
from tether.net.local import LocalHub, LocalNetwork
from tether.rpc import RpcError, ServerContext, StatusCode, collect_handlers
from tether.v1 import registry_pb2, services_rpc


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def call_from(key: bytes | str) -> ServerContext:
    peer = key.hex() if isinstance(key, bytes) else key
    return ServerContext(method="tether.v1.Orchestrator/Submit", metadata={}, peer=peer)


def test_given_keys_are_allowed_and_others_refused_with_the_fix_in_the_message() -> None:
    gateway, stranger = KeyPair.generate().public_key, KeyPair.generate().public_key
    policy = CallerPolicy([gateway], role="gateway")
    policy.check(call_from(gateway))
    with pytest.raises(PermissionDenied) as info:
        policy.check(call_from(stranger))
    message = info.value.message
    assert "only for known gateways" in message and f"--allow-caller {stranger.hex()}" in message
    assert info.value.details["peer"] == stranger.hex()
    for peer in ("", "zz", "ab" * 31):  # no peer, not hex, too short
        with pytest.raises(PermissionDenied):
            policy.check(call_from(peer))
    CallerPolicy.anyone().check(call_from(stranger))


def test_pub_files_in_the_keys_folder_are_read_again_when_it_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    clock = Clock()
    policy = CallerPolicy(keys_dir=keys, role="gateway", clock=clock)
    gateway = KeyPair.generate()
    with pytest.raises(PermissionDenied, match=r"keys/\*\.pub"):
        policy.check(call_from(gateway.public_key))  # the folder does not exist yet
    gateway.save_public(keys / "gateway.pub")
    (keys / "notes.pub").write_text("not a key\n")  # ignored, with a warning
    assert policy.allows(gateway.public_key)  # a new file: read at once
    (keys / "gateway.pub").unlink()
    assert policy.allows(gateway.public_key)  # known until a stranger makes it look again
    stranger = KeyPair.generate().public_key
    assert not policy.allows(stranger)
    assert not policy.allows(gateway.public_key)
    # Strangers calling in a loop do not make it read the files again...
    calls: list[int] = []

    def read_keys_dir() -> Iterator[bytes]:
        calls.append(1)
        return iter(())

    policy._read_keys_dir = read_keys_dir  # type: ignore[method-assign]
    for _ in range(5):
        assert not policy.allows(stranger)
    assert calls == []
    clock.now += 1.0  # ...but once a second it does, whatever changed
    assert not policy.allows(stranger)
    assert calls == [1]


def test_parse_key() -> None:
    key = KeyPair.generate().public_key
    assert parse_key(f" {key.hex()}\n") == key
    for bad in ("", "00", "g" * 64, key.hex() + "00"):
        with pytest.raises(ValueError, match="64 hex"):
            parse_key(bad)


def test_service_config_writes_its_pub_file_and_reads_allow_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_ALLOW_CALLERS", raising=False)
    monkeypatch.delenv("TETHER_ALLOW_ANY_CALLER", raising=False)
    a, b = KeyPair.generate().public_key, KeyPair.generate().public_key
    parser = orchestrator_main.build_parser()
    base = ["--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path)]
    cfg = process.config_from_args(
        process.parse_args(parser, [*base, "--allow-caller", a.hex()], "orchestrator")
    )
    assert cfg.allow_callers == (a,) and not cfg.allow_any_caller
    keypair = cfg.keypair()
    assert (tmp_path / "keys" / "orchestrator.pub").read_text() == keypair.public_key.hex() + "\n"
    policy = cfg.callers("gateway")
    assert policy.allows(a) and policy.allows(keypair.public_key) and not policy.allows(b)
    # The environment takes a comma-separated list; a bad key stops the service clearly.
    monkeypatch.setenv("TETHER_ALLOW_CALLERS", f"{a.hex()}, {b.hex()}")
    cfg = process.config_from_args(process.parse_args(parser, base, "orchestrator"))
    assert cfg.allow_callers == (a, b)
    with pytest.raises(SystemExit, match="--allow-caller: not a public key"):
        process.config_from_args(
            process.parse_args(parser, [*base, "--allow-caller", "abc"], "orchestrator")
        )
    monkeypatch.setenv("TETHER_ALLOW_ANY_CALLER", "1")
    parser = orchestrator_main.build_parser()  # flag defaults come from the environment
    cfg = process.config_from_args(process.parse_args(parser, base, "orchestrator"))
    assert cfg.callers("gateway").allows(KeyPair.generate().public_key)


def test_only_a_records_publisher_may_publish_it_over_rpc(tmp_path: Path) -> None:
    publisher, impostor = KeyPair.generate(), KeyPair.generate()
    store = MetadataStore.sqlite(tmp_path / "meta.db")
    store.migrate()
    service = RegistryService(
        Catalog(store), callers=CallerPolicy([publisher.public_key], role="publisher")
    )
    hub = LocalHub()

    async def main() -> None:
        registry = LocalNetwork(hub, KeyPair.generate(), collect_handlers(service))
        async with registry.running():
            for caller, record_key, refused in (
                (impostor, publisher.public_key, "known publishers"),  # not allowed at all
                (publisher, impostor.public_key, "connect with the key named"),  # not its own
            ):
                net = LocalNetwork(hub, caller, {})
                async with net.running():
                    stub = services_rpc.RegistryStub((await net.connect(registry.public_key)).rpc)
                    with pytest.raises(RpcError) as info:
                        await stub.Publish(model_record(record_key), timeout=5)
                    assert info.value.code == StatusCode.PERMISSION_DENIED
                    assert refused in info.value.message
            assert service.catalog.store.model_ids() == []
            net = LocalNetwork(hub, publisher, {})
            async with net.running():
                stub = services_rpc.RegistryStub((await net.connect(registry.public_key)).rpc)
                stored = await stub.Publish(model_record(publisher.public_key), timeout=5)
                assert stored.model.model_id == "tiny-lm" and stored.created_unix_ms > 0

    with blocking.inline():
        trio.run(main)
    store.close()


def model_record(publisher_key: bytes) -> registry_pb2.ModelRecord:
    record = registry_pb2.ModelRecord(publisher_key=publisher_key)
    record.model.model_id, record.model.version = "tiny-lm", "1.0"
    record.capabilities.task = registry_pb2.TASK_TEXT_GENERATION
    record.artifacts.add(digest="ab" * 32, size_bytes=1, format="onnx", role="model")
    return record
