"""Rendering chat templates as transformers' `apply_chat_template` renders them.

The same Jinja environment (sandboxed, trim_blocks/lstrip_blocks, loop controls, the
`{% generation %}` tag), the same globals and filters (`raise_exception`, `strftime_now`,
`tojson` without HTML escaping and with indent/separators/sort_keys, `dict`, `namespace`) and the
same inputs: messages with None-valued keys dropped and reasoning fields aliased, tool schemas as
given, `documents`, `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`...).
Tests compare the output with transformers itself. One addition, as vLLM does: tool-call
arguments given as a JSON string (OpenAI's wire format) reach the template as a mapping, since
templates such as Qwen3-Coder's iterate over them.
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2 import TemplateError, nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ModelError

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks: rendered as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names (no way to CPython internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


class _Dict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # unlike jinja's own filter: no HTML escaping, as transformers renders it
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                     extensions=[_Generation, jinja2.ext.loopcontrols])
_ENV.filters["tojson"] = _tojson
_ENV.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                    dict=_Dict(), namespace=_Namespace)
_COMPILED: dict[str, jinja2.Template] = {}


def pick_template(template: str | list | dict, tools) -> str:
    """A named-template set's "tool_use" template when tools are given, else its "default"."""
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        chosen = template.get("tool_use") if tools and "tool_use" in template else template.get("default")
        if not isinstance(chosen, str):
            raise ModelError(f"the model has chat templates {sorted(map(str, template))} but no default one")
        return chosen
    return template


def _plain(value):
    """A JSON-only copy: what the template sees cannot reach back into our objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (str, bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    return f"<{type(value).__name__}>"


def _message(message: dict) -> dict:
    m = {k: v for k, v in _plain(message).items() if v is not None}
    reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
    if reasoning is not None:
        m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                args = json.loads(fn["arguments"])
            except json.JSONDecodeError:
                continue
            if isinstance(args, dict):
                fn["arguments"] = args
    return m


def render_chat(
    template: str | list | dict,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    documents: list[dict] | None = None,
    **extra,
) -> str:
    """Render `messages` (and `tools`, `extra` such as bos_token/eos_token) with the model's template."""
    source = pick_template(template, tools)
    try:
        compiled = _COMPILED.get(source) or _COMPILED.setdefault(source, _ENV.from_string(source))
        return compiled.render(messages=[_message(m) for m in messages], tools=_plain(tools),
                               documents=_plain(documents), add_generation_prompt=add_generation_prompt,
                               **_plain(extra))
    except TemplateError as exc:
        raise ModelError(f"chat template failed: {exc}") from None
