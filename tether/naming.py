"""Model ids, versions and how a requested version resolves: the one home of these rules.

Every service and tool checks names with this module -- the gateway before any work
(``tether.validation``), the registry when publishing and resolving, the worker's engine when
resolving what it serves, and topic names (``tether.topics``) -- so one name is valid
everywhere or nowhere.

Model id
    Lowercase letters and digits in runs joined by single ``-`` or ``.`` (``all-minilm-l6-v2``,
    ``llama3.1-8b``), at most :data:`MAX_MODEL_ID_CHARS` characters.

Version
    ``MAJOR.MINOR``: two integers without leading zeros (``1.0``, ``2.13``; not ``01.0``), each
    at most :data:`MAX_VERSION_DIGITS` digits. Topic names carry this exact form.

Requested version
    ``MAJOR.MINOR`` -- exactly that version, or NOT_FOUND; ``MAJOR`` -- the highest MINOR
    published under that MAJOR (minor versions are compatible); nothing (empty) -- the highest
    version published, by MAJOR then MINOR. Anything else is INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tether.errors import InvalidArgument, NotFound

MAX_MODEL_ID_CHARS = 64
MAX_VERSION_DIGITS = 6

_NUMBER = rf"(0|[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}})"
MODEL_ID_RE = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
VERSION_RE = re.compile(rf"{_NUMBER}\.{_NUMBER}")
MAJOR_RE = re.compile(_NUMBER)


@dataclass(frozen=True, order=True)
class Version:
    """A published ``MAJOR.MINOR``; ordered by MAJOR then MINOR."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version ``text`` names exactly; INVALID_ARGUMENT unless it is ``MAJOR.MINOR``."""
        m = VERSION_RE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidArgument(f"version {text!r} is not MAJOR.MINOR (e.g. 1.0)",
                                  details={"field": "version"})
        return cls(int(m[1]), int(m[2]))


def check_model_id(model_id: str) -> str:
    """``model_id`` unchanged, or INVALID_ARGUMENT naming the rule."""
    if (not isinstance(model_id, str) or len(model_id) > MAX_MODEL_ID_CHARS
            or MODEL_ID_RE.fullmatch(model_id) is None):
        raise InvalidArgument(
            f"model id {model_id!r} must be lowercase letters and digits joined by '-' or '.', "
            f"at most {MAX_MODEL_ID_CHARS} characters (e.g. all-minilm-l6-v2)",
            details={"field": "model_id"})
    return model_id


def check_version(version: str) -> str:
    """An exact ``MAJOR.MINOR`` unchanged, or INVALID_ARGUMENT."""
    Version.parse(version)
    return version


def check_requested_version(requested: str) -> str:
    """What a request may name (``MAJOR.MINOR``, ``MAJOR`` or empty) unchanged, or
    INVALID_ARGUMENT."""
    if requested == "" or VERSION_RE.fullmatch(requested) or MAJOR_RE.fullmatch(requested):
        return requested
    raise InvalidArgument(f"version {requested!r} must be MAJOR.MINOR, MAJOR, or empty",
                          details={"field": "version"})


def resolve(requested: str, published: Iterable[Version], *, model_id: str = "") -> Version:
    """Pick the published version a request names, by the rules in this module's docstring."""
    check_requested_version(requested)
    versions = sorted(published)
    label = model_id or "model"
    details = {"model_id": model_id}
    if not versions:
        raise NotFound(f"{label} has no published version", details=details)
    if requested == "":
        return versions[-1]
    listed = ", ".join(map(str, versions))
    if "." in requested:
        want = Version.parse(requested)
        if want in versions:
            return want
        raise NotFound(f"{label} {want} is not published; published: {listed}",
                       details=details)
    major = int(requested)
    same = [v for v in versions if v.major == major]
    if not same:
        raise NotFound(f"{label} has no version {major}.x; published: {listed}",
                       details=details)
    return same[-1]
