"""LoRA adapters merged into ONNX initializers on load.

An adapter artifact (format ``lora``) is a numpy ``.npz`` archive (read with pickling off)
holding, for each ONNX initializer it changes, ``<name>.lora_A`` (rank x in) and
``<name>.lora_B`` (out x rank) with ``B @ A`` of the initializer's shape, and optionally
``<name>.alpha`` (a scalar). Merging computes ``W += (B @ A) * alpha / rank`` (``alpha``
defaults to ``rank``, a scale of 1), then the graph runs with no adapter cost at all.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
from onnx import numpy_helper

from tether.errors import InvalidArgument

SUFFIX_A, SUFFIX_B, SUFFIX_ALPHA = ".lora_A", ".lora_B", ".alpha"


def read_adapter(blob: bytes) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Parse an adapter archive into ``{initializer: (A, B, scale)}``."""
    try:
        return _read_adapter(blob)
    except InvalidArgument:
        raise
    except Exception as exc:  # zip and .npy readers raise many kinds on corrupt input
        raise InvalidArgument(f"LoRA adapter is not a valid .npz archive: {exc!r}") from exc


def _read_adapter(blob: bytes) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidArgument(f"LoRA adapter is not an .npz archive: {exc}") from exc
    if not all(a.dtype.kind in "fiu" for a in arrays.values()):
        raise InvalidArgument("LoRA adapter arrays must be numeric")
    targets = sorted({k.removesuffix(SUFFIX_A) for k in arrays if k.endswith(SUFFIX_A)})
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name in targets:
        a, b = arrays[name + SUFFIX_A], arrays.get(name + SUFFIX_B)
        if b is None:
            raise InvalidArgument(f"LoRA adapter has {name}{SUFFIX_A} but no {name}{SUFFIX_B}")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise InvalidArgument(
                f"LoRA factors of {name} do not chain: B {b.shape} @ A {a.shape}")
        rank = a.shape[0]
        alpha_arr = arrays.get(name + SUFFIX_ALPHA)
        if alpha_arr is not None and alpha_arr.size != 1:
            raise InvalidArgument(f"{name}{SUFFIX_ALPHA} must be a scalar")
        alpha = float(alpha_arr.reshape(())) if alpha_arr is not None else float(rank)
        if rank == 0 or not np.isfinite(alpha):
            raise InvalidArgument(f"LoRA factors of {name} have rank 0 or a non-finite alpha")
        out[name] = (a.astype(np.float32), b.astype(np.float32), alpha / rank)
    if not out:
        raise InvalidArgument("LoRA adapter changes no initializer")
    return out


def merge_adapters(onnx_bytes: bytes, adapters: list[bytes]) -> bytes:
    """Return ``onnx_bytes`` with every adapter merged into its target initializers."""
    if not adapters:
        return onnx_bytes
    model = onnx.load_from_string(onnx_bytes)
    inits = {init.name: init for init in model.graph.initializer}
    for blob in adapters:
        for name, (a, b, scale) in read_adapter(blob).items():
            init = inits.get(name)
            if init is None:
                raise InvalidArgument(f"LoRA adapter targets {name!r}, which the model lacks")
            w = numpy_helper.to_array(init)
            delta = (b @ a) * scale
            if delta.shape != w.shape:
                raise InvalidArgument(
                    f"LoRA delta for {name} is {delta.shape}, the weight is {w.shape}")
            merged = (w.astype(np.float32) + delta).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(merged, name))
    return model.SerializeToString()


def write_adapter(factors: dict[str, tuple[np.ndarray, np.ndarray, float | None]]) -> bytes:
    """Serialize ``{initializer: (A, B, alpha or None)}`` to the adapter format."""
    arrays: dict[str, np.ndarray] = {}
    for name, (a, b, alpha) in factors.items():
        arrays[name + SUFFIX_A] = np.asarray(a, dtype=np.float32)
        arrays[name + SUFFIX_B] = np.asarray(b, dtype=np.float32)
        if alpha is not None:
            arrays[name + SUFFIX_ALPHA] = np.asarray(alpha, dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
