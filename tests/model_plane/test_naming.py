"""One grammar for model ids and versions, proved against every entry point.

The same table runs through ``tether.naming`` itself, the gateway's request validation, the
registry's publish and resolve, the worker's version resolution and topic names: a name is
accepted by all of them or refused (INVALID_ARGUMENT) by all of them. Before ``tether.naming``
these were four rules: the registry refused dots the topics allowed, the worker took ``"01"``
for ``"1"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from registry.catalog import Catalog
from tether import limits, naming, topics
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.errors import InvalidArgument, NotFound
from tether.keys import KeyPair
from tether.metadata import MetadataStore
from tether.v1 import infer_pb2, presence_pb2, registry_pb2
from tether.validation import validate_target
from worker.engine.backends import Backend
from worker.engine.runtime import WorkerEngine
from worker.loader import ModelLoader

KP = KeyPair.from_seed(b"\x05" * 32)

MODEL_IDS = [
    ("all-minilm-l6-v2", True),
    ("llama3.1-8b", True),  # dots join runs as hyphens do
    ("m", True),
    ("7b", True),
    ("a" * naming.MAX_MODEL_ID_CHARS, True),
    ("a" * (naming.MAX_MODEL_ID_CHARS + 1), False),
    ("", False),
    ("Bad_Name", False),
    ("UPPER", False),
    ("-lead", False),
    ("trail-", False),
    ("trail.", False),
    (".lead", False),
    ("a..b", False),
    ("a--b", False),
    ("a.-b", False),
    ("a b", False),
    ("a/b", False),
    ("a\n", False),
    ("ü", False),
]

EXACT_VERSIONS = [
    ("1.0", True),
    ("0.0", True),
    ("2.13", True),
    ("999999.999999", True),
    ("1000000.0", False),  # seven digits
    ("01.0", False),  # leading zeros
    ("1.01", False),
    ("00.0", False),
    ("1", False),
    ("1.0.0", False),
    ("", False),
    ("1.", False),
    (".1", False),
    (" 1.0", False),
    ("1.0\n", False),
    ("+1.0", False),
    ("-1.0", False),
    ("v1.0", False),
    ("\u0661.\u0660", False),  # Arabic-Indic digits: str.isdigit() says yes
]

REQUESTED_VERSIONS = [
    ("", True),
    ("0", True),
    ("1", True),
    ("12", True),
    ("1.0", True),
    ("2.13", True),
    ("01", False),
    ("00", False),
    ("01.0", False),
    ("1.01", False),
    ("1000000", False),
    ("1.", False),
    (".1", False),
    ("1.0.0", False),
    ("latest", False),
    ("v1", False),
    ("\u0661", False),
    (" 1", False),
    ("1\n", False),
]


def record(model_id: str, version: str) -> registry_pb2.ModelRecord:
    caps = registry_pb2.Capabilities(task=registry_pb2.TASK_EMBEDDING, max_input_length=256)
    return registry_pb2.ModelRecord(
        model=presence_pb2.ModelKey(model_id=model_id, version=version), capabilities=caps,
        artifacts=[registry_pb2.ArtifactRef(digest="ab" * 32, size_bytes=10, format="onnx",
                                            role="model")],
        publisher_key=KP.public_key)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    store = MetadataStore.sqlite(tmp_path_factory.mktemp("naming") / "meta.db")
    store.migrate()
    catalog = Catalog(store)
    catalog.publish(record("m", "1.0"))
    yield catalog
    store.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> WorkerEngine:
    """The worker's real resolution over a record of ``m`` 1.0; nothing is ever loaded, so
    the loader has no backend."""
    blobs = LocalDirectoryStore(tmp_path_factory.mktemp("blobs"), "r0")
    loader = ModelLoader(ArtifactStore([blobs], min_replicas=1), cast(Backend, None),
                         budget_bytes=1)
    return WorkerEngine(loader, [record("m", "1.0")])


def accepted(check: Callable[[], object]) -> bool:
    """True when ``check`` accepts the grammar (a well-formed unknown name is NOT_FOUND)."""
    try:
        check()
    except NotFound:
        return True
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize(("model_id", "ok"), MODEL_IDS)
def test_model_ids_agree_everywhere(model_id: str, ok: bool, catalog: Catalog) -> None:
    verdicts = {
        "naming": accepted(lambda: naming.check_model_id(model_id)),
        "gateway": accepted(lambda: validate_target(model_id, "", "")),
        "registry resolve": accepted(lambda: catalog.resolve(model_id)),
        "registry publish": accepted(lambda: catalog.publish(record(model_id, "1.0"))),
        "topics": accepted(lambda: topics.models(model_id, "1.0", "eu-west")),
    }
    assert verdicts == dict.fromkeys(verdicts, ok)


@pytest.mark.parametrize(("version", "ok"), EXACT_VERSIONS)
def test_published_versions_agree_everywhere(version: str, ok: bool, catalog: Catalog) -> None:
    verdicts = {
        "naming": accepted(lambda: naming.Version.parse(version)),
        "registry publish": accepted(lambda: catalog.publish(record("pub", version))),
        "registry get": accepted(lambda: catalog.get("pub", version)),
        "topics": accepted(lambda: topics.models("m", version, "eu-west")),
    }
    assert verdicts == dict.fromkeys(verdicts, ok)


@pytest.mark.parametrize(("version", "ok"), REQUESTED_VERSIONS)
def test_requested_versions_agree_everywhere(
    version: str, ok: bool, catalog: Catalog, worker: WorkerEngine
) -> None:
    verdicts = {
        "naming": accepted(lambda: naming.resolve(version, [naming.Version(1, 0)])),
        "gateway": accepted(lambda: validate_target("m", version, "")),
        "registry": accepted(lambda: catalog.resolve("m", version)),
        "worker": accepted(lambda: worker.resolve("m", version)),
    }
    assert verdicts == dict.fromkeys(verdicts, ok)


@pytest.mark.parametrize(("requested", "chosen"), [("", "1.10"), ("1", "1.10"), ("1.2", "1.2"),
                                                   ("0", "0.9")])
def test_the_registry_and_the_worker_resolve_alike(
    requested: str, chosen: str, tmp_path: Path
) -> None:
    published = ["0.9", "1.0", "1.2", "1.10"]
    store = MetadataStore.sqlite(tmp_path / "meta.db")
    store.migrate()
    catalog = Catalog(store)
    for v in published:
        catalog.publish(record("m", v))
    loader = ModelLoader(ArtifactStore([LocalDirectoryStore(tmp_path / "b", "r0")], min_replicas=1),
                         cast(Backend, None), budget_bytes=1)
    worker = WorkerEngine(loader, [record("m", v) for v in published])
    assert catalog.resolve("m", requested).model.version == chosen
    assert worker.resolve("m", requested).model.version == chosen
    store.close()


def test_the_default_token_limit_and_the_quota_charged_are_one_number() -> None:
    """The orchestrator charges ``limits.max_tokens`` tokens of quota and the engine stops at
    ``limits.check_generation``'s limit: for a request that names none, both are the default,
    and the default is one a request may ask for."""
    assert 0 < limits.DEFAULT_MAX_TOKENS <= limits.MAX_NEW_TOKENS
    for asked in (0, 1, limits.DEFAULT_MAX_TOKENS, limits.MAX_NEW_TOKENS):
        params = infer_pb2.GenerationParams(max_tokens=asked)
        assert limits.max_tokens(params) == limits.check_generation(params)
        assert limits.max_tokens(params) == (asked or limits.DEFAULT_MAX_TOKENS)
