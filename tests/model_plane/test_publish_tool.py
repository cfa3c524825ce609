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
