"""Model version numbers and how a requested version resolves.

A published version is ``MAJOR.MINOR`` (two non-negative integers without leading zeros,
e.g. ``1.0``, ``2.13``). A request may name:

* ``MAJOR.MINOR`` — exactly that version, or NOT_FOUND;
* ``MAJOR`` — the highest MINOR published under that MAJOR (minor versions are compatible);
* nothing (empty string) — the highest version published, by MAJOR then MINOR.

Anything else is INVALID_ARGUMENT. Topic names (``tether/models/<model>/<version>/<region>``)
always carry the resolved ``MAJOR.MINOR``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tether.errors import InvalidArgument, NotFound

_NUM = r"(0|[1-9][0-9]{0,5})"
_EXACT = re.compile(rf"{_NUM}\.{_NUM}")
_MAJOR = re.compile(_NUM)
MODEL_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
MAX_MODEL_ID_LEN = 64


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _EXACT.fullmatch(text)
        if m is None:
            raise InvalidArgument(f"version {text!r} is not MAJOR.MINOR (e.g. 1.0)")
        return cls(int(m[1]), int(m[2]))


def check_model_id(model_id: str) -> str:
    if len(model_id) > MAX_MODEL_ID_LEN or MODEL_ID.fullmatch(model_id) is None:
        raise InvalidArgument(
            f"model id {model_id!r} must be lowercase kebab-case, at most {MAX_MODEL_ID_LEN} "
            "characters (e.g. all-minilm-l6-v2)")
    return model_id


def resolve(requested: str, published: Iterable[Version], *, model_id: str = "") -> Version:
    """Pick the published version a request names, by the rules in this module's docstring."""
    versions = sorted(published)
    label = model_id or "model"
    if not versions:
        raise NotFound(f"{label} has no published version", details={"model_id": model_id})
    if requested == "":
        return versions[-1]
    if _EXACT.fullmatch(requested):
        want = Version.parse(requested)
        if want in versions:
            return want
        raise NotFound(f"{label} {want} is not published; published: "
                       + ", ".join(map(str, versions)), details={"model_id": model_id})
    if _MAJOR.fullmatch(requested):
        major = int(requested)
        same = [v for v in versions if v.major == major]
        if same:
            return same[-1]
        raise NotFound(f"{label} has no version {major}.x; published: "
                       + ", ".join(map(str, versions)), details={"model_id": model_id})
    raise InvalidArgument(f"version {requested!r} must be MAJOR.MINOR, MAJOR, or empty")
