"""Publish a model version: sign its artifacts, replicate them, register the version.

    python tools/publish_model.py worker/models/kjv-textgen \\
        --db sqlite:///var/tether.db --key var/keys/publisher.key \\
        --replica var/artifacts/r0 --replica var/artifacts/r1 --replica var/artifacts/r2

A replica is a local directory or an S3 bucket, ``s3://ACCESS:SECRET@HOST:PORT/BUCKET``
(plain HTTP; ``s3s://`` for HTTPS). At least ``--min-replicas`` (default 3) are required and
every one must take the write unless ``--write-quorum`` says fewer. The publisher key is created
(mode 0600) if the file does not exist. A folder without ``model.json`` that is a Hugging Face
Optimum ONNX export of a decoder-only model (``model.onnx``, ``config.json``, ``tokenizer.json``,
``generation_config.json``, ``tokenizer_config.json``) is published unchanged, as text
generation, under ``--model-id`` (default: the folder's name) and ``--version`` (default 1.0).
``--db`` takes any SQLAlchemy URL, e.g.
``postgresql+psycopg://user@127.0.0.1:5432/tether``. Prints the stored ModelRecord as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import json_format

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from registry.catalog import Catalog  # noqa: E402
from registry.publish import ModelPackage, publish_package  # noqa: E402
from tether.artifacts import ArtifactStore, blob_store_from_spec  # noqa: E402
from tether.errors import TetherError  # noqa: E402
from tether.keys import KeyPair  # noqa: E402
from tether.metadata import MetadataStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model_dir", type=Path, help="folder with model.json, or an Optimum export")
    p.add_argument("--model-id", default=None, help="id of an export without model.json")
    p.add_argument("--db", default=f"sqlite:///{REPO / 'var' / 'tether.db'}")
    p.add_argument("--key", type=Path, default=REPO / "var" / "keys" / "publisher.key")
    p.add_argument("--replica", action="append", default=[], help="directory or s3:// URL")
    p.add_argument("--min-replicas", type=int, default=3)
    p.add_argument("--write-quorum", type=int, default=None)
    p.add_argument("--version", default=None, help="override model.json's version")
    args = p.parse_args(argv)
    replicas = args.replica or [str(REPO / "var" / "artifacts" / f"r{i}") for i in range(3)]
    try:
        publisher = KeyPair.load_or_generate(args.key)
        artifacts = ArtifactStore([blob_store_from_spec(r) for r in replicas],
                                  trusted_keys={publisher.public_key},
                                  write_quorum=args.write_quorum, min_replicas=args.min_replicas)
        store = MetadataStore(args.db)
        store.migrate()
        pkg = ModelPackage.load(args.model_dir, version=args.version, model_id=args.model_id)
        record = publish_package(pkg, Catalog(store), artifacts, publisher)
        store.close()
    except TetherError as exc:
        print(f"publish failed: {exc.code_name}: {exc.message}", file=sys.stderr)
        return 1
    print(json_format.MessageToJson(record, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
