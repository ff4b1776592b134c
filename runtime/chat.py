"""Rendering chat templates (Jinja, as Hugging Face and llama.cpp render them)."""

from __future__ import annotations

import json

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ModelError


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, indent=None) -> str:
    # unlike jinja's own filter: no HTML escaping, as transformers renders it
    return json.dumps(value, ensure_ascii=False, indent=indent)


def render_chat(
    template: str,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    **extra,
) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra
        )
    except TemplateError as exc:
        raise ModelError(f"chat template failed: {exc}") from None
