"""Publishing a model: sign and replicate its artifacts, then register the version.

A model on disk is a folder with a ``model.json``: id, version, task, input/output schema,
limits, placement needs, policy, and which files are the ``model``, ``tokenizer``,
``config``, ``generation_config``, ``tokenizer_config`` and ``adapter:<name>`` artifacts.
A Hugging Face Optimum ONNX export of a decoder-only model (``model.onnx``, ``config.json``,
``tokenizer.json`` and optionally ``generation_config.json`` and ``tokenizer_config.json``)
publishes unchanged without a ``model.json``: :meth:`ModelPackage.from_export` names its
files, and the id comes from the caller (default: the folder's name).
``files_dir`` may point elsewhere, relative to the repository,
for files built rather than committed, and ``sha256`` pins what such a build must produce.
:func:`publish_package` uploads each file through the :class:`tether.artifacts.ArtifactStore`
(signed manifest, N replicas) and stores the resulting ``tether.v1.ModelRecord`` with the
:class:`registry.catalog.Catalog`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from registry.catalog import Catalog
from tether.artifacts import ArtifactStore, sha256_hex
from tether.errors import DataLoss, InvalidArgument, NotFound
from tether.keys import KeyPair
from tether.naming import Version, check_model_id
from tether.v1 import presence_pb2, registry_pb2, tensor_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "text_generation": registry_pb2.TASK_TEXT_GENERATION,
    "embedding": registry_pb2.TASK_EMBEDDING,
    "tensor": registry_pb2.TASK_TENSOR,
}
DTYPES = {
    "float32": tensor_pb2.DATA_TYPE_FLOAT32, "float16": tensor_pb2.DATA_TYPE_FLOAT16,
    "int64": tensor_pb2.DATA_TYPE_INT64, "int32": tensor_pb2.DATA_TYPE_INT32,
    "int8": tensor_pb2.DATA_TYPE_INT8, "uint8": tensor_pb2.DATA_TYPE_UINT8,
    "bool": tensor_pb2.DATA_TYPE_BOOL,
}
FORMATS = {"model": "onnx", "tokenizer": "tokenizer"}
# Files of an Optimum export, by artifact role (the first graph name found is the model).
EXPORT_GRAPHS = ("model.onnx", "decoder_model_merged.onnx")
EXPORT_FILES = {"tokenizer": "tokenizer.json", "config": "config.json",
                "generation_config": "generation_config.json",
                "tokenizer_config": "tokenizer_config.json"}
EXPORT_VERSION = "1.0"


@dataclass
class ModelPackage:
    """A model folder's ``model.json``, parsed and checked."""

    model_id: str
    version: str
    task: int
    files: dict[str, Path]
    description: str = ""
    max_input_length: int = 0
    inputs: list[registry_pb2.TensorSpec] = field(default_factory=list)
    outputs: list[registry_pb2.TensorSpec] = field(default_factory=list)
    gpu_classes: list[str] = field(default_factory=list)
    min_vram_gb: int = 0
    degrade_to: tuple[str, str] | None = None
    allowed_tenants: list[str] = field(default_factory=list)
    allow_degrade: bool = False
    rate_limit_rps: float = 0.0

    @classmethod
    def from_export(cls, folder: str | Path, *, model_id: str | None = None,
                    version: str | None = None) -> ModelPackage:
        """A Hugging Face Optimum export of a decoder-only model, files as they are."""
        folder = Path(folder)
        graph = next((folder / g for g in EXPORT_GRAPHS if (folder / g).is_file()), None)
        if graph is None or not (folder / "config.json").is_file():
            raise NotFound(f"{folder} has no model.json, and is not an ONNX export (config.json "
                           f"and one of {', '.join(EXPORT_GRAPHS)})")
        if (graph.parent / (graph.name + "_data")).exists():
            raise InvalidArgument(f"{graph} keeps its weights in an external data file; "
                                  "re-export it as one file")
        files = {"model": graph}
        files.update({role: folder / name for role, name in EXPORT_FILES.items()
                      if (folder / name).is_file()})
        if "tokenizer" not in files:
            raise NotFound(f"{folder} has no tokenizer.json")
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{folder}/config.json is not JSON: {exc}") from exc
        name = model_id or folder.resolve().name.lower()
        return cls(model_id=check_model_id(name),
                   version=str(Version.parse(version or EXPORT_VERSION)),
                   task=registry_pb2.TASK_TEXT_GENERATION, files=files,
                   description=str(config.get("_name_or_path") or config.get("model_type", "")),
                   max_input_length=int(config.get("max_position_embeddings", 0)))

    @classmethod
    def load(cls, folder: str | Path, *, version: str | None = None,
             model_id: str | None = None) -> ModelPackage:
        """The package in ``folder``: its model.json, else an Optimum export as it is."""
        folder = Path(folder)
        try:
            spec = json.loads((folder / "model.json").read_text())
        except FileNotFoundError:
            return cls.from_export(folder, model_id=model_id, version=version)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{folder}/model.json is not JSON: {exc}") from exc
        files_dir = REPO_ROOT / spec["files_dir"] if "files_dir" in spec else folder
        files = {role: files_dir / name for role, name in spec["files"].items()}
        for role, path in files.items():
            if not path.is_file():
                hint = f" (build it: {spec['build']})" if "build" in spec else ""
                raise NotFound(f"{role} file {path} is missing{hint}")
        for role, want in spec.get("sha256", {}).items():
            got = sha256_hex(files[role].read_bytes())
            if got != want:
                raise DataLoss(f"{files[role]} hashes to {got}, model.json expects {want}"
                               + (f"; rebuild it: {spec['build']}" if "build" in spec else ""))
        if spec.get("task") not in TASKS:
            raise InvalidArgument(f"task must be one of {sorted(TASKS)}")
        degrade = spec.get("degrade_to")
        return cls(
            model_id=check_model_id(model_id or spec["model_id"]),
            version=str(Version.parse(version or spec["version"])),
            task=TASKS[spec["task"]], files=files, description=spec.get("description", ""),
            max_input_length=int(spec.get("max_input_length", 0)),
            inputs=[_tensor_spec(s) for s in spec.get("inputs", [])],
            outputs=[_tensor_spec(s) for s in spec.get("outputs", [])],
            gpu_classes=list(spec.get("gpu_classes", [])),
            min_vram_gb=int(spec.get("min_vram_gb", 0)),
            degrade_to=(degrade["model_id"], degrade.get("version", "")) if degrade else None,
            allowed_tenants=list(spec.get("allowed_tenants", [])),
            allow_degrade=bool(spec.get("allow_degrade", False)),
            rate_limit_rps=float(spec.get("rate_limit_rps", 0.0)))


def _tensor_spec(s: dict) -> registry_pb2.TensorSpec:
    if s.get("dtype") not in DTYPES:
        raise InvalidArgument(f"tensor {s.get('name')!r} has unknown dtype {s.get('dtype')!r}")
    return registry_pb2.TensorSpec(name=s["name"], dtype=DTYPES[s["dtype"]],
                                   shape=[int(d) for d in s["shape"]])


def publish_package(pkg: ModelPackage, catalog: Catalog, artifacts: ArtifactStore,
                    publisher: KeyPair) -> registry_pb2.ModelRecord:
    """Sign and replicate every file of ``pkg``, then register it; returns the stored record."""
    refs = []
    for role, path in sorted(pkg.files.items()):
        fmt = "lora" if role.startswith("adapter:") else FORMATS.get(role, "json")
        refs.append(artifacts.publish(path.read_bytes(), fmt=fmt, model_id=pkg.model_id,
                                      version=pkg.version, role=role, publisher=publisher))
    caps = registry_pb2.Capabilities(
        task=pkg.task, inputs=pkg.inputs, outputs=pkg.outputs,  # type: ignore[arg-type]
        gpu_classes=pkg.gpu_classes, min_vram_gb=pkg.min_vram_gb,
        max_input_length=pkg.max_input_length)
    if pkg.degrade_to:
        caps.degrade_to.CopyFrom(presence_pb2.ModelKey(model_id=pkg.degrade_to[0],
                                                       version=pkg.degrade_to[1]))
    record = registry_pb2.ModelRecord(
        model=presence_pb2.ModelKey(model_id=pkg.model_id, version=pkg.version),
        capabilities=caps,
        policy=registry_pb2.Policy(allowed_tenants=pkg.allowed_tenants,
                                   rate_limit_rps=pkg.rate_limit_rps,
                                   allow_degrade=pkg.allow_degrade),
        artifacts=refs, publisher_key=publisher.public_key, description=pkg.description)
    return catalog.publish(record)
