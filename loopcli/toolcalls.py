"""Tool calls that local models write as text, parsed into `ToolCall`s.

Recognised forms, in the order they are looked for:
  - Hermes / Qwen2.5:  <tool_call>{"name": ..., "arguments": {...}}</tool_call>
  - Qwen3-Coder XML:   <tool_call><function=NAME><parameter=KEY>value</parameter></function></tool_call>
    (also a bare <function=...> block without the <tool_call> wrapper, as OpenHands prompts it)
  - fenced JSON:       ```json {"name": ..., "arguments": {...}} ``` (or a list of such objects)
  - a reply that opens with such a JSON object or list (prose may follow).
A missing closing tag at the very end of the reply is tolerated (generation stopped there).
JSON repairs are limited to what small models commonly break and what cannot change meaning:
raw newlines inside strings, trailing commas, surplus closing braces after a complete object, and
single quotes when the text has no double quotes at all. Anything else becomes an error that names
the format, the problem and the expected form, for the agent to send back to the model.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from loopcli.backends.base import ToolCall

HERMES = "Hermes/Qwen <tool_call> JSON"
XML = "Qwen3-Coder <tool_call> XML"
BARE_XML = "<function=...> XML"
FENCED = "fenced JSON"
BARE_JSON = "JSON"

EXPECTED_HERMES = '<tool_call>\n{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}\n</tool_call>'
EXPECTED_XML = ("<tool_call>\n<function=TOOL_NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n"
                "</function>\n</tool_call>")
EXPECTED_FENCED = '```json\n{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}\n```'
EXPECTED = {HERMES: EXPECTED_HERMES, XML: EXPECTED_XML, BARE_XML: EXPECTED_XML,
            FENCED: EXPECTED_FENCED, BARE_JSON: EXPECTED_HERMES}

NAME_KEYS = ("name", "tool")
ARG_KEYS = ("arguments", "parameters", "args")

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_JSON_FENCE_LANGS = {"", "json", "jsonc", "json5", "tool_call", "tool"}
_FUNCTION_RE = re.compile(r"<function=([^>\n]*)>(.*?)(?:</function>|\Z)", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>")
_TRAILING_COMMA = re.compile(r",\s*[}\]]")
# A fenced block that failed to parse is only an error when it was meant as a call: a name key
# followed somewhere by an arguments key (two searches, so the time stays linear).
_NAME_KEY_RE = re.compile(r"""["'](?:name|tool)["']\s*:""")
_ARG_KEY_RE = re.compile(r"""["'](?:arguments|parameters|args)["']\s*:""")


@dataclass
class ParseResult:
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""  # the reply with all call markup (valid or not) removed


class Malformed(Exception):
    """One call could not be read; the message says what is wrong."""


def parse_tool_calls(text: str, tool_names: set[str] | None = None) -> ParseResult:
    """Find every tool call in a model reply; see the module docstring for the formats."""
    found: list[tuple[int, int, str, list | str]] = []  # (start, end, format, calls or error)
    taken: list[tuple[int, int]] = []
    for start, end, fmt, read in _candidates(text, taken):
        try:
            found.append((start, end, fmt, read()))
        except Malformed as e:
            found.append((start, end, fmt, str(e)))
        taken.append((start, end))

    result = ParseResult()
    for _, _, fmt, got in sorted(found, key=lambda f: f[0]):
        if isinstance(got, str):
            result.errors.append(_error(fmt, got))
            continue
        for name, args in got:
            if tool_names is not None and name not in tool_names:
                known = ", ".join(sorted(tool_names)) or "(none)"
                result.errors.append(f"Tool call ({fmt}): unknown tool {name!r}. "
                                     f"Available tools: {known}.")
            else:
                result.calls.append(ToolCall(name, args, f"call_{uuid.uuid4().hex[:12]}"))
    result.text = _remove_spans(text, sorted(taken))
    return result


def _error(fmt: str, problem: str) -> str:
    return f"Malformed tool call ({fmt}): {problem}. Expected form:\n{EXPECTED[fmt]}"


# ---------------------------------------------------------------- finding candidate spans

def _candidates(text: str, taken: list[tuple[int, int]]):
    """Yield (start, end, format, reader) for each span that holds a call attempt.

    `taken` grows as the caller accepts spans, so later searches skip text already claimed.
    """
    yield from _tagged_blocks(text)
    for m in _FUNCTION_RE.finditer(text):
        # unwrapped and unclosed without parameters: a mere mention of the syntax
        mention = not m.group(0).endswith("</function>") and "<parameter=" not in m.group(2)
        if not mention and not _overlaps(m.start(), m.end(), taken):
            yield m.start(), m.end(), BARE_XML, lambda m=m: _read_functions(m.group(0))
    for m in _FENCE_RE.finditer(text):
        if _overlaps(m.start(), m.end(), taken) or m.group(1).lower() not in _JSON_FENCE_LANGS:
            continue
        reader = _json_reader(m.group(2))
        if reader:
            yield m.start(), m.end(), FENCED, reader
    if not taken:
        yield from _bare_json(text)


def _bare_json(text: str):
    """A reply that opens with a call object (or list), possibly followed by prose."""
    start = len(text) - len(text.lstrip())
    if not text.startswith(("{", "["), start):
        return
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
        value = None
    if value is not None and _is_call_value(value):
        yield start, end, BARE_JSON, lambda: _calls_from_value(value)
    elif reader := _json_reader(text[start:]):  # a broken call attempt gets its error
        yield start, len(text), BARE_JSON, reader


def _tagged_blocks(text: str):
    """<tool_call> blocks; one may lack its closing tag if another opener or the end follows."""
    pos = 0
    while (start := text.find(_OPEN, pos)) >= 0:
        body_start = start + len(_OPEN)
        close = text.find(_CLOSE, body_start)
        reopen = text.find(_OPEN, body_start)
        if close >= 0 and (reopen < 0 or close < reopen):
            body, end = text[body_start:close], close + len(_CLOSE)
        else:
            end = reopen if reopen >= 0 else len(text)
            body = text[body_start:end]
            if not body.lstrip().startswith(("{", "[", "<function", "```")):
                pos = body_start  # a mere mention of the tag in prose
                continue
        fmt = XML if body.lstrip().startswith("<") else HERMES
        yield start, end, fmt, lambda body=body, fmt=fmt: _read_tagged(body, fmt)
        pos = end


def _overlaps(start: int, end: int, spans) -> bool:
    return any(start < e and s < end for s, e in spans)


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Cut the spans out, joining the pieces on one line break where markup stood."""
    pieces, pos = [], 0
    for s, e in spans:
        pieces.append(text[pos:s])
        pos = e
    pieces.append(text[pos:])
    if len(pieces) == 1:
        return text
    kept = [p.strip() for p in pieces]
    return "\n".join(p for p in kept if p)


# ---------------------------------------------------------------- reading one call

def _read_tagged(body: str, fmt: str) -> list[tuple[str, dict]]:
    if not body.strip():
        raise Malformed("the <tool_call> block is empty")
    if fmt == XML:
        return _read_functions(body)
    return _calls_from_value(_loads(_unfence(body.strip())))


def _json_reader(body: str):
    """A reader for JSON that is a call (or a broken call attempt), else None (plain JSON/prose)."""
    try:
        value = _loads(body)
    except Malformed:
        return (lambda: _calls_from_value(_loads(body))) if _call_attempt(body) else None
    return (lambda: _calls_from_value(value)) if _is_call_value(value) else None


def _call_attempt(body: str) -> bool:
    name = _NAME_KEY_RE.search(body)
    return bool(name and _ARG_KEY_RE.search(body, name.end()))


def _is_call_value(value) -> bool:
    items = value if isinstance(value, list) else [value]
    calls = [_call_dict(v) if isinstance(v, dict) else None for v in items]
    return bool(calls) and all(c is not None and any(k in c for k in ARG_KEYS) for c in calls)


def _call_dict(obj: dict) -> dict | None:
    """The dict that holds name and arguments (OpenAI's {"type": "function", "function": {...}} too)."""
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    return obj if any(isinstance(obj.get(k), str) for k in NAME_KEYS) else None


def _calls_from_value(value) -> list[tuple[str, dict]]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Malformed("the list of calls is empty")
    return [_call_from_object(v) for v in items]


def _call_from_object(obj) -> tuple[str, dict]:
    if not isinstance(obj, dict):
        raise Malformed(f"expected a JSON object with \"name\" and \"arguments\", got {_kind(obj)}")
    call = _call_dict(obj)
    if call is None:
        raise Malformed(f'missing "name" (the tool to call); keys given: {", ".join(obj) or "none"}')
    name = next(call[k] for k in NAME_KEYS if isinstance(call.get(k), str)).strip()
    if not name:
        raise Malformed('"name" is empty')
    args = next((call[k] for k in ARG_KEYS if k in call), {})
    if isinstance(args, str):  # arguments sent as a JSON-encoded string, as the OpenAI API does
        try:
            args = _loads(args) if args.strip() else {}
        except Malformed as e:
            raise Malformed(f'"arguments" is a string that is not a JSON object: {e}') from None
    if not isinstance(args, dict):
        raise Malformed(f'"arguments" must be a JSON object, got {_kind(args)}')
    return name, args


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _unfence(body: str) -> str:
    """Models sometimes wrap the JSON inside <tool_call> in a code fence too."""
    m = re.fullmatch(r"```[\w-]*[ \t]*\n?(.*?)\n?```", body, re.S)
    return m.group(1) if m else body


# ---------------------------------------------------------------- XML <function=...>

def _read_functions(body: str) -> list[tuple[str, dict]]:
    calls, pos = [], 0
    for m in _FUNCTION_RE.finditer(body):
        _expect_blank(body[pos:m.start()], "outside <function=...>")
        calls.append((_function_name(m.group(1)), _read_parameters(m.group(2))))
        pos = m.end()
    if not calls:
        raise Malformed("no <function=NAME> inside the <tool_call> block")
    _expect_blank(body[pos:], "after </function>")
    return calls


def _function_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise Malformed("the function name in <function=NAME> is empty")
    return name


def _read_parameters(body: str) -> dict:
    """<parameter=KEY>value</parameter> items; a missing </parameter> ends at the next tag."""
    matches = list(_PARAM_RE.finditer(body))
    _expect_blank(body[:matches[0].start()] if matches else body, "outside <parameter=...>")
    args = {}
    for i, m in enumerate(matches):
        key = m.group(1).strip()
        if not key:
            raise Malformed("a parameter name in <parameter=KEY> is empty")
        if key in args:
            raise Malformed(f"parameter {key!r} is given twice")
        region = body[m.end():matches[i + 1].start() if i + 1 < len(matches) else len(body)]
        value, closed, rest = region.partition("</parameter>")
        if closed:
            _expect_blank(rest, f"after </parameter> of {key!r}")
        args[key] = _parameter_value(value)
    return args


def _parameter_value(raw: str):
    """JSON numbers, booleans, objects and lists are decoded; anything else stays a string."""
    value = raw[1:] if raw.startswith("\n") else raw
    value = value[:-1] if value.endswith("\n") else value
    try:
        decoded = json.loads(value, parse_constant=_reject)
    except (ValueError, RecursionError):
        return value
    return decoded if isinstance(decoded, (int, float, bool, dict, list)) else value


def _reject(constant: str):
    raise ValueError(constant)  # NaN / Infinity are not JSON a model means


def _expect_blank(text: str, where: str) -> None:
    if text.strip():
        raise Malformed(f"unexpected text {where}: {_snippet(text.strip())}")


def _snippet(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------- lenient JSON

def _loads(text: str):
    """Parse JSON, trying only meaning-preserving repairs; errors point into the original text."""
    first_error = None
    for candidate in _repairs(text):
        try:
            return _decode_one(candidate)
        except Malformed as e:
            first_error = first_error or e
    raise first_error


def _repairs(text: str):
    yield text
    yield _drop_trailing_commas(text)
    if '"' not in text and "\\'" not in text:  # single quotes are unambiguous only then
        swapped = text.replace("'", '"')
        yield swapped
        yield _drop_trailing_commas(swapped)


def _decode_one(text: str):
    """One JSON value (raw newlines in strings allowed); surplus closing braces are dropped."""
    stripped = text.strip()
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(stripped)
    except json.JSONDecodeError as e:
        raise Malformed(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg} "
                        f"(near {_snippet(stripped[max(0, e.pos - 20):e.pos + 20])})") from None
    except RecursionError:
        raise Malformed("the JSON is nested too deeply; send a flat object of arguments") \
            from None
    rest = stripped[end:].strip()
    if rest.strip("}"):
        line = stripped.count("\n", 0, end) + 1
        col = end - stripped.rfind("\n", 0, end)
        raise Malformed(f"unexpected text after the JSON value at line {line} column {col}: "
                        f"{_snippet(rest)}")
    return value


def _drop_trailing_commas(text: str) -> str:
    """Remove commas that directly precede } or ], outside strings."""
    out, in_string, escaped = [], False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif in_string:
            escaped = ch == "\\"
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch == "," and _TRAILING_COMMA.match(text, i):
            continue
        out.append(ch)
    return "".join(out)
