"""``tools/publish_model.py``: sign, replicate (N >= 3) and register, from the command line."""

from __future__ import annotations

import importlib.util
import json
import stat

from model_plane_support import MODELS_DIR, REPO

from registry.catalog import Catalog
from tether.artifacts import ArtifactStore, LocalDirectoryStore
from tether.keys import KeyPair
from tether.metadata import MetadataStore


def load_tool():
    spec = importlib.util.spec_from_file_location("publish_model",
                                                  REPO / "tools" / "publish_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_command(tmp_path, capsys) -> None:
    tool = load_tool()
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    key = tmp_path / "keys" / "publisher.key"
    replicas = [str(tmp_path / f"r{i}") for i in range(4)]
    args = [str(MODELS_DIR / "kjv-textgen"), "--db", db, "--key", str(key)]
    for r in replicas:
        args += ["--replica", r]
    assert tool.main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == {"modelId": "kjv-textgen", "version": "1.0"}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tool.main(args) == 0  # publishing the same files again changes nothing
    capsys.readouterr()

    publisher = KeyPair.load(key)
    store = MetadataStore(db)
    stored = Catalog(store).resolve("kjv-textgen", "1")
    artifacts = ArtifactStore([LocalDirectoryStore(r) for r in replicas],
                              trusted_keys={publisher.public_key})
    for ref in stored.artifacts:
        assert len(artifacts.replicas_holding(ref.digest)) == 4
        assert artifacts.fetch(ref.digest).manifest.model_id == "kjv-textgen"
    store.close()

    assert tool.main([*args[:5], "--replica", replicas[0], "--replica", replicas[1]]) == 1
    assert "at least 3 replicas" in capsys.readouterr().err


def test_a_model_json_declares_its_degrade_policy(tmp_path, capsys) -> None:
    """``allow_degrade`` and ``degrade_to`` (no version: the target's latest) in
    model.json reach the published record, where the orchestrator reads them."""
    tool = load_tool()
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    common = ["--db", db, "--key", str(tmp_path / "publisher.key")]
    for i in range(3):
        common += ["--replica", str(tmp_path / f"r{i}")]
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.onnx").write_bytes(b"not really onnx")
    (big / "model.json").write_text(json.dumps({
        "model_id": "big-textgen", "version": "2.0", "task": "text_generation",
        "files": {"model": "model.onnx"},
        "allow_degrade": True, "degrade_to": {"model_id": "kjv-textgen"},
    }))
    assert tool.main([str(big), *common]) == 1  # the target must be published first
    assert "kjv-textgen" in capsys.readouterr().err
    assert tool.main([str(MODELS_DIR / "kjv-textgen"), *common]) == 0
    assert tool.main([str(big), *common]) == 0
    capsys.readouterr()
    store = MetadataStore(db)
    record = Catalog(store).resolve("big-textgen")
    assert record.policy.allow_degrade
    assert (record.capabilities.degrade_to.model_id, record.capabilities.degrade_to.version) == (
        "kjv-textgen", "")
    assert Catalog(store).degrade(record).model.model_id == "kjv-textgen"
    store.close()
