"""Chat templates: a conversation to a prompt, the way Hugging Face ``transformers`` does it.

A model's ``tokenizer_config.json`` carries its ``chat_template``, a Jinja2 template. It is
rendered as ``transformers``' ``apply_chat_template`` renders it: in an
``ImmutableSandboxedEnvironment`` (templates come with models, so they are untrusted: no
attribute access outside the sandbox, no mutation of the arguments) with ``trim_blocks`` and
``lstrip_blocks``, the ``tojson`` filter that does not escape HTML, a ``raise_exception``
function (its message becomes INVALID_ARGUMENT), and the variables ``messages``,
``bos_token``, ``eos_token`` and ``add_generation_prompt``. The rendered text is tokenized
without adding special tokens: the template writes them itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tether.errors import FailedPrecondition, InvalidArgument

MAX_MESSAGES = 256


class TemplateError(Exception):
    """Raised by a template's ``raise_exception``."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise FailedPrecondition(f"the model's chat template does not compile: {exc}") from exc


def render_chat(template: str | None, messages: Sequence[tuple[str, str]], *,
                bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt for ``messages`` ((role, content) pairs), by the model's template."""
    if template is None:
        # The client's error (it chose the model), so INVALID_ARGUMENT: never dead-lettered.
        raise InvalidArgument("the model has no chat template (tokenizer_config.json): send "
                              "a prompt (input.text, /v1/completions) instead of messages",
                              details={"field": "messages"})
    if not messages:
        raise InvalidArgument("input.messages is empty")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"{len(messages)} messages; at most {MAX_MESSAGES}")
    for i, (role, _) in enumerate(messages):
        if not role:
            raise InvalidArgument(f"message {i} has no role", details={"index": str(i)})
    try:
        return compile_template(template).render(
            messages=[{"role": r, "content": c} for r, c in messages], bos_token=bos_token,
            eos_token=eos_token, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise InvalidArgument(f"the model's chat template refuses the messages: {exc}") from exc
    except Exception as exc:  # an untrusted template can fail any way (sandbox, TypeError...)
        raise FailedPrecondition(f"the model's chat template failed: {exc!r}") from exc
