#!/usr/bin/env python3
"""Golden wire vectors for every message in ``proto/tether/v1``.

``tests/contract/golden/vectors.json`` maps each vector name to the message's
wire bytes (hex) and the same message in protobuf text format (fields by
*name*). The contract tests decode the bytes and compare them with the text,
and re-encode them: renumbering, retyping or removing a field changes what
the committed bytes mean, so the tests fail until someone deliberately runs

    python tools/golden_vectors.py --write

and commits the new vectors together with the schema change (and, for a
breaking change, the new buf baseline).

Samples are built by reflection: every field set to a value derived from its
name; one extra vector per additional member of each oneof.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import text_format, unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

VECTORS = ROOT / "tests" / "contract" / "golden" / "vectors.json"
MAX_DEPTH = 3


def message_classes() -> dict[str, type[Message]]:
    """Every message class of ``tether.v1``, nested ones included, by full name."""
    import tether.v1 as pkg

    found: dict[str, type[Message]] = {}

    def walk(cls: type[Message]) -> None:
        found[cls.DESCRIPTOR.full_name] = cls
        for nested in cls.DESCRIPTOR.nested_types:
            if nested.GetOptions().map_entry:
                continue
            walk(getattr(cls, nested.name))

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"tether.v1.{info.name}")
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(getattr(module, desc.name))
    return dict(sorted(found.items()))


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _scalar(field: Any, path: str) -> object:
    n = _seed(path)
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{n % 1000}"
    if t == FieldDescriptor.TYPE_BYTES:
        return hashlib.sha256(path.encode()).digest()[: 4 + n % 29]
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[n % len(values)]
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float(n % 1000) / 8  # exact in float32
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    ):
        return -(n % 100000) if n % 3 == 0 else n % 100000
    return n % 100000 + 1


def _fill_map(msg: Message, field: Any, fpath: str, depth: int,
              oneof_pick: dict[str, str]) -> None:
    key_f, val_f = field.message_type.fields
    target = getattr(msg, field.name)
    for i in range(2):
        key = _scalar(key_f, f"{fpath}#k{i}")
        if val_f.message_type is None:
            target[key] = _scalar(val_f, f"{fpath}#v{i}")
        elif depth < MAX_DEPTH:
            fill(target[key], f"{fpath}#v{i}", depth + 1, oneof_pick)


def _fill_repeated(msg: Message, field: Any, fpath: str, depth: int,
                   oneof_pick: dict[str, str]) -> None:
    target = getattr(msg, field.name)
    for i in range(2):
        if field.message_type is None:
            target.append(_scalar(field, f"{fpath}#{i}"))
        elif depth < MAX_DEPTH:
            fill(target.add(), f"{fpath}#{i}", depth + 1, oneof_pick)


def fill(msg: Message, path: str, depth: int, oneof_pick: dict[str, str]) -> None:
    desc = msg.DESCRIPTOR
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            chosen = oneof_pick.get(oneof.full_name, oneof.fields[0].name)
            if field.name != chosen:
                continue
        fpath = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _fill_map(msg, field, fpath, depth, oneof_pick)
        elif field.is_repeated:
            _fill_repeated(msg, field, fpath, depth, oneof_pick)
        elif field.message_type is not None:
            if depth < MAX_DEPTH:
                fill(getattr(msg, field.name), fpath, depth + 1, oneof_pick)
                getattr(msg, field.name).SetInParent()
        else:
            setattr(msg, field.name, _scalar(field, fpath))


def samples() -> Iterator[tuple[str, Message]]:
    for full_name, cls in message_classes().items():
        msg = cls()
        fill(msg, full_name, 0, {})
        yield full_name, msg
        for oneof in cls.DESCRIPTOR.oneofs:
            for member in oneof.fields[1:]:
                variant = cls()
                fill(variant, full_name, 0, {oneof.full_name: member.name})
                yield f"{full_name}#{member.name}", variant


def build() -> dict[str, dict[str, str]]:
    return {
        name: {
            "type": msg.DESCRIPTOR.full_name,
            "hex": msg.SerializeToString(deterministic=True).hex(),
            "text": text_format.MessageToString(msg),
        }
        for name, msg in samples()
    }


def _has_unknown_fields(msg: Message) -> bool:
    if len(unknown_fields.UnknownFieldSet(msg)):
        return True
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value.values() if field.message_type.GetOptions().map_entry else (
            value if field.is_repeated else [value]
        )
        if any(isinstance(v, Message) and _has_unknown_fields(v) for v in items):
            return True
    return False


def verify(vectors: dict[str, dict[str, str]], *, complete: bool = True) -> list[str]:
    """Problems found decoding the committed vectors with the current schema.

    ``complete`` also requires a vector for every message of the schema.
    """
    classes = message_classes()
    problems = [
        f"no golden vector for {name}" for name in classes if complete and name not in vectors
    ]
    for name, vec in sorted(vectors.items()):
        cls = classes.get(vec["type"])
        if cls is None:
            problems.append(f"{name}: message {vec['type']} no longer exists")
            continue
        wire = bytes.fromhex(vec["hex"])
        decoded = cls.FromString(wire)
        if _has_unknown_fields(decoded):
            problems.append(f"{name}: bytes carry fields the schema does not know")
        try:
            expected = text_format.Parse(vec["text"], cls())
        except text_format.ParseError as exc:
            problems.append(f"{name}: text no longer matches the schema: {exc}")
            continue
        if decoded != expected:
            problems.append(f"{name}: wire bytes decode to a different message than the text")
        elif expected.SerializeToString(deterministic=True) != wire:
            problems.append(f"{name}: re-encoding does not give the committed bytes")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="golden wire vectors for tether.v1")
    parser.add_argument("--write", action="store_true", help="rewrite the committed vectors")
    parser.add_argument(
        "--verify", action="store_true", help="check the committed vectors against the schema"
    )
    opts = parser.parse_args()
    if opts.verify:
        problems = verify(json.loads(VECTORS.read_text()))
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    vectors = build()
    if opts.write:
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(vectors, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(vectors)} vectors to {VECTORS.relative_to(ROOT)}")
        return 0
    committed = json.loads(VECTORS.read_text()) if VECTORS.exists() else {}
    changed = sorted(
        k for k in vectors.keys() | committed.keys() if vectors.get(k) != committed.get(k)
    )
    for name in changed:
        print(f"differs: {name}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
