"""Tether's topic namespace (spec §5.1) and how a name becomes a swarm topic.

Names are lowercase, slash-separated, region mandatory:

- ``tether/presence/<region>``                   workers announce here
- ``tether/models/<model>/<version>/<region>``   workers serving a model version
- ``tether/control/<region>``                    orchestrators (control plane)
- ``tether/jobs/<correlation-id>``                ephemeral per-request streams
- ``tether/gateway/<region>``                    gateways, for clients
- ``tether/registry/<region>``                   registries

``<region>`` is a cloud-style slug (``us-east``); ``<model>`` and ``<version>`` follow
:mod:`tether.naming` (``llama3.1-8b``, ``MAJOR.MINOR``).

The 32-byte Hyperswarm topic of a name is BLAKE2b-256 of its UTF-8 bytes, the
same as Node's ``hypercore-crypto`` ``hash(Buffer.from(name))``, so Node peers
can join Tether topics by name.
"""

from __future__ import annotations

import hashlib
import re

from tether import naming
from tether.errors import InvalidArgument

_SLUG = r"[a-z0-9]+(?:-[a-z0-9]+)*"
REGION_RE = re.compile(rf"^{_SLUG}$")
CORRELATION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MAX_NAME_LENGTH = 200


class TopicError(InvalidArgument):
    """A topic name or one of its parts breaks the naming rules."""


def _refuse(kind: str, value: object, example: str) -> TopicError:
    return TopicError(
        f"invalid {kind} {value!r}: expected something like {example!r}",
        details={kind: str(value)},
    )


def _check(kind: str, value: str, pattern: re.Pattern[str], example: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _refuse(kind, value, example)
    return value


def region(value: str) -> str:
    return _check("region", value, REGION_RE, "eu-west")


def model(value: str) -> str:
    """A model id by :mod:`tether.naming`'s rule."""
    try:
        return naming.check_model_id(value)
    except InvalidArgument:
        raise _refuse("model", value, "mixtral-8x7b") from None


def version(value: str) -> str:
    """An exact ``MAJOR.MINOR`` by :mod:`tether.naming`'s rule."""
    try:
        return naming.check_version(value)
    except InvalidArgument:
        raise _refuse("version", value, "1.0") from None


def presence(region_: str) -> str:
    return f"tether/presence/{region(region_)}"


def models(model_: str, version_: str, region_: str) -> str:
    return f"tether/models/{model(model_)}/{version(version_)}/{region(region_)}"


def control(region_: str) -> str:
    return f"tether/control/{region(region_)}"


def gateway(region_: str) -> str:
    return f"tether/gateway/{region(region_)}"


def registry(region_: str) -> str:
    return f"tether/registry/{region(region_)}"


def jobs(correlation_id: str) -> str:
    return f"tether/jobs/{_check('correlation id', correlation_id, CORRELATION_RE, 'job-42')}"


_BUILDERS = {
    "presence": (1, lambda p: presence(p[0])),
    "models": (3, lambda p: models(p[0], p[1], p[2])),
    "control": (1, lambda p: control(p[0])),
    "gateway": (1, lambda p: gateway(p[0])),
    "registry": (1, lambda p: registry(p[0])),
    "jobs": (1, lambda p: jobs(p[0])),
}


def validate(name: str) -> str:
    """Check a full topic name; returns it unchanged or raises TopicError."""
    if len(name) > MAX_NAME_LENGTH:
        raise TopicError(f"topic name longer than {MAX_NAME_LENGTH} characters")
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "tether" or parts[1] not in _BUILDERS:
        kinds = ", ".join(sorted(_BUILDERS))
        raise TopicError(f"invalid topic {name!r}: expected tether/<{kinds}>/...")
    arity, build = _BUILDERS[parts[1]]
    if len(parts) - 2 != arity:
        raise TopicError(f"invalid topic {name!r}: {parts[1]} takes {arity} part(s)")
    built: str = build(parts[2:])
    return built


def topic_key(name: str) -> bytes:
    """The 32-byte swarm topic for a validated name (BLAKE2b-256 of UTF-8)."""
    return hashlib.blake2b(validate(name).encode(), digest_size=32).digest()
