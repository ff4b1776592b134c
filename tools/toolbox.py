"""The toolbox: every tool the agent may call, its JSON schema, and one forgiving `call`.

The agent gets its tools only from here. ``Toolbox.schemas()`` gives the OpenAI
function-calling definitions; ``Toolbox.call(name, arguments)`` checks and coerces the
arguments, runs the tool and returns a ``ToolResult``. Mistakes a model makes (unknown tool,
bad JSON, missing or extra arguments, wrong types, a ToolError from the tool) come back as
``ok=False`` with a message that names the tool, the problem and the expected form, so that
the model can retry; they never raise.

Before every tool that changes files (edits, write, shell) the whole tree is checkpointed, so
``undo`` reverts any of them, shell side effects included. ``shell`` counts as a failure
(``ok=False``) when the command exits non-zero or times out; its output is returned either way.

Arguments are checked by a small hand-written validator for the flat schemas used here
(types string/integer/boolean, required, minimum, no extra keys), not by jsonschema.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from . import edit, search, shell, view
from .checkpoints import Checkpoints
from .errors import ToolError
from .workspace import Workspace

MAX_DIFF_CHARS = 30_000  # a diff of a big rewrite must not fill the model's context
LABEL_CHARS = 80  # checkpoint labels name the call briefly
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_INTEGER = re.compile(r"[+-]?\d+")
_JSON_NAMES = {"string": "a string", "integer": "an integer", "boolean": "true or false"}


@dataclass
class ToolResult:
    output: str  # what the model reads
    ok: bool  # False: the call failed or was refused; `output` says why and how to retry
    mutated: bool  # the call ran a tool that may have changed files (edit, write, shell, undo)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    mutates: bool  # changes files; all but undo are checkpointed first
    run: Callable[[Toolbox, dict], str | shell.ShellResult]

    def schema(self) -> dict:
        """The OpenAI function-calling definition."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters,
        }}

    def signature(self) -> str:
        """`replace(path: string, old: string, new: string, all?: boolean)`: the expected form."""
        required = self.parameters["required"]
        args = [f"{key}{'' if key in required else '?'}: {spec['type']}"
                for key, spec in self.parameters["properties"].items()]
        return f"{self.name}({', '.join(args)})"


class ArgumentError(Exception):
    """Arguments that do not fit a tool's schema; the message lists every problem."""


def _param(kind: str, description: str, default: Any = None, minimum: int | None = None) -> dict:
    spec: dict[str, Any] = {"type": kind, "description": description}
    if default is not None:
        spec["default"] = default
    if minimum is not None:
        spec["minimum"] = minimum
    return spec


def _object(required: tuple[str, ...] = (), **properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def _shell(box: Toolbox, args: dict) -> shell.ShellResult:
    return shell.run(box.workspace, args["command"], timeout=args.get("timeout", box.shell_timeout),
                     environment=box.environment)


def _diff(box: Toolbox, args: dict) -> str:
    text = box.checkpoints.diff()
    if not text:
        return "No changes: the files are as they were when this session started."
    if len(text) <= MAX_DIFF_CHARS:
        return text
    return (f"{text[:MAX_DIFF_CHARS]}\n[diff cut: {len(text) - MAX_DIFF_CHARS:,} more characters; "
            "view the changed files to see the rest]")


_PATH = "File path relative to the project root, e.g. src/app.py."

TOOLS: tuple[Tool, ...] = (
    Tool(
        "view",
        "Show lines of a text file with line numbers: `limit` lines starting at line `start`. "
        "For a directory, list the files in it (path \".\" is the project root). Long files are "
        "shown in parts; the last line tells you the start to use for the next part. On a "
        "missing path the error suggests similar paths; otherwise use find_files.",
        _object(("path",),
                path=_param("string", "File or directory path relative to the project root."),
                start=_param("integer", "First line to show (1 is the first line).", 1, 1),
                limit=_param("integer", "How many lines to show.", 200, 1)),
        False, lambda box, a: view.view(box.workspace, **a),
    ),
    Tool(
        "outline",
        "List the classes, functions and methods defined in one source file with their line "
        "numbers, so you can view only the part you need. Works for Python, JavaScript, "
        "TypeScript, Go, Rust, Java, C, C++, Ruby and C#; for other files use view or search.",
        _object(("path",), path=_param("string", _PATH)),
        False, lambda box, a: view.outline(box.workspace, **a),
    ),
    Tool(
        "search",
        "Search the contents of the project's files. `pattern` is a Python regular expression; "
        "set literal=true to search for exact text (do this when the text has ( [ . * or \\). "
        "Shows up to 100 matching lines as path:line: text. Narrow it with `path` (a file or "
        "folder) or `glob` (file names such as *.py). Files ignored by .gitignore are skipped.",
        _object(("pattern",),
                pattern=_param("string", "Regular expression, or exact text with literal=true."),
                literal=_param("boolean", "Treat pattern as exact text, not a regex.", False),
                path=_param("string", "Only search this file or folder."),
                glob=_param("string", "Only search files whose name matches, e.g. *.py."),
                ignore_case=_param("boolean", "Ignore upper/lower case.", False)),
        False, lambda box, a: search.search(box.workspace, **a),
    ),
    Tool(
        "find_files",
        "Find files by name. `pattern` is a glob such as *.py or src/**/test_*.py, or any part "
        "of a file path (case-insensitive). Lists up to 100 paths.",
        _object(("pattern",), pattern=_param("string", "Glob or part of a file name.")),
        False, lambda box, a: search.find_files(box.workspace, a["pattern"]),
    ),
    Tool(
        "replace",
        "Replace text in an existing file. `old` must be copied from the file (a few whole "
        "lines are safest) and must occur exactly once, unless all=true replaces every "
        "occurrence. Small differences in spaces or indentation are tolerated. If `old` is not "
        "found, the error shows the closest lines: view the file and copy the text exactly. "
        "An edit that would break the file's syntax is refused.",
        _object(("path", "old", "new"),
                path=_param("string", _PATH),
                old=_param("string", "The exact text to replace, copied from the file."),
                new=_param("string", "The text to put in its place."),
                all=_param("boolean", "Replace every occurrence instead of exactly one.", False)),
        True, lambda box, a: edit.replace(box.workspace, **a),
    ),
    Tool(
        "write",
        "Create a new file with the given content; missing folders are created. An existing "
        "file is refused unless overwrite=true, which replaces all of it; to change part of a "
        "file use replace or replace_symbol instead.",
        _object(("path", "content"),
                path=_param("string", _PATH),
                content=_param("string", "The complete content of the file."),
                overwrite=_param("boolean", "Replace the file if it already exists.", False)),
        True, lambda box, a: edit.write(box.workspace, **a),
    ),
    Tool(
        "replace_symbol",
        "Replace one whole definition (function, method or class) with new code. `symbol` is "
        "its name, e.g. parse, or Parser.parse for a method of class Parser; use outline to see "
        "the names. `code` is the complete new definition including its def/signature line; "
        "indentation is adjusted for you.",
        _object(("path", "symbol", "code"),
                path=_param("string", _PATH),
                symbol=_param("string", "Name of the definition, e.g. Parser.parse."),
                code=_param("string", "The complete new definition.")),
        True, lambda box, a: edit.replace_symbol(
            box.workspace, a["path"], a["symbol"], a["code"]),
    ),
    Tool(
        "insert_after_symbol",
        "Insert new code (e.g. a new function or method) right after the definition of "
        "`symbol`, at the same indentation. `symbol` is a name such as parse or Parser.parse; "
        "use outline to see the names.",
        _object(("path", "symbol", "code"),
                path=_param("string", _PATH),
                symbol=_param("string", "Name of the definition to insert after."),
                code=_param("string", "The code to insert.")),
        True, lambda box, a: edit.insert_after_symbol(box.workspace, **a),
    ),
    Tool(
        "shell",
        "Run a bash command in the project root and return its output and exit code. Each call "
        "is a new shell: cd does not carry over (write cd dir && cmd). There is no terminal, so "
        "editors, pagers and interactive prompts are refused. Long output is cut in the middle. "
        "The command is killed after `timeout` seconds. Use it to run tests, git status or "
        "builds. Changed files can be reverted with undo.",
        _object(("command",),
                command=_param("string", "The bash command, e.g. python -m pytest -x -q."),
                timeout=_param("integer", "Seconds before the command is killed.", minimum=1)),
        True, _shell,
    ),
    Tool(
        "undo",
        "Put the files back as they were before your last change (replace, write, "
        "replace_symbol, insert_after_symbol or shell). Call it again to go back further. "
        "Files ignored by .gitignore that only shell commands changed are not restored.",
        _object(),
        True, lambda box, a: box.checkpoints.undo(),
    ),
    Tool(
        "diff",
        "Show a unified diff of every change to the project's files since this session started.",
        _object(),
        False, _diff,
    ),
)


class Toolbox:
    """The agent's tools over one workspace, with checkpoints for undo."""

    def __init__(self, root: str | os.PathLike, *, store_dir: str | os.PathLike | None = None,
                 shell_timeout: int = 120, environment=None):
        self.workspace = Workspace(root)
        self.environment = environment  # where shell commands run (tools.environment); None: local
        self.checkpoints = Checkpoints(self.workspace, store_dir)
        self.shell_timeout = shell_timeout
        self.tools = {tool.name: tool for tool in TOOLS}

    def schemas(self) -> list[dict]:
        return [tool.schema() for tool in self.tools.values()]

    def call(self, name: str, arguments: dict | str | None = None) -> ToolResult:
        """Run tool `name`; every model mistake becomes ok=False with a message to retry on."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(self._unknown_tool(name), ok=False, mutated=False)
        try:
            args = check_arguments(tool, arguments)
        except ArgumentError as exc:
            return ToolResult(f"{name}: invalid arguments: {exc}. Expected: {tool.signature()}",
                              ok=False, mutated=False)
        if tool.mutates and tool.name != "undo":
            # undo needs none: it keeps the state it replaces itself (see Checkpoints.undo)
            try:
                # the file an edit names is recorded even if ignored, so undo can restore it
                touched = [args["path"]] if "path" in args else []
                self.checkpoints.snapshot(f"{name}: {_label(args)}", paths=touched)
            except ToolError as exc:
                return ToolResult(f"{name} was not run: no checkpoint could be taken for undo: "
                                  f"{exc}", ok=False, mutated=False)
        try:
            outcome = tool.run(self, args)
        # OSError/ValueError: what the OS says of a path with a NUL byte or an over-long name
        except (ToolError, OSError, ValueError) as exc:
            return ToolResult(f"{name} failed: {exc}", ok=False, mutated=False)
        if isinstance(outcome, shell.ShellResult):
            return ToolResult(outcome.render(), ok=outcome.exit_code == 0, mutated=True)
        return ToolResult(outcome, ok=True, mutated=tool.mutates)

    def _unknown_tool(self, name: object) -> str:
        names = list(self.tools)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        return f"Unknown tool {name!r}.{hint} The tools are: {', '.join(names)}."


def _label(args: dict) -> str:
    """What the call is about: its path, symbol or command, clipped."""
    named = " ".join(str(args[key]) for key in ("path", "symbol", "command") if key in args)
    named = " ".join(named.split())
    return named if len(named) <= LABEL_CHARS else named[:LABEL_CHARS - 1] + "…"


# ---- argument checking ----------------------------------------------------------------------


def check_arguments(tool: Tool, arguments: dict | str | None) -> dict:
    """The arguments as the tool's function takes them: parsed and coerced.

    Absent optional arguments are left out, so the tool's own defaults apply; a null value
    counts as absent (models send them for optional arguments).
    Raises ArgumentError naming every problem at once.
    """
    args = _parse(arguments)
    properties = tool.parameters["properties"]
    problems, checked = [], {}
    for key, value in args.items():
        if key not in properties:
            problems.append(_unknown_argument(key, list(properties)))
        elif value is not None:
            try:
                checked[key] = _coerce(key, value, properties[key])
            except ArgumentError as exc:
                problems.append(str(exc))
    for key in tool.parameters["required"]:
        if key not in args:
            problems.append(f"missing required argument '{key}' ({properties[key]['type']})")
        elif args[key] is None:
            problems.append(f"argument '{key}' is required but was null")
    if problems:
        raise ArgumentError("; ".join(problems))
    return checked


def _parse(arguments: dict | str | None) -> dict:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = json.loads(arguments)
            if isinstance(arguments, str):  # double-encoded JSON, a common slip
                arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ArgumentError(
                f"the arguments are not valid JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}); send one JSON object such as {{\"path\": \"src/app.py\"}}"
            ) from None
    if not isinstance(arguments, dict):
        raise ArgumentError(
            f"the arguments must be a JSON object with named arguments, got "
            f"{type(arguments).__name__}"
        )
    return arguments


def _unknown_argument(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    accepted = ", ".join(known) if known else "none"
    return f"unknown argument '{key}'{hint}; the arguments are: {accepted}"


def _coerce(key: str, value: Any, spec: dict) -> Any:
    """`value` as spec['type']; the strings small models send for numbers and flags pass."""
    kind = spec["type"]
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "boolean":
        flag = _as_bool(value)
        if flag is not None:
            return flag
    if kind == "integer":
        number = _as_int(value)
        if number is not None:
            if number < spec.get("minimum", number):
                raise ArgumentError(f"argument '{key}' must be at least {spec['minimum']}, "
                                    f"got {number}")
            return number
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    raise ArgumentError(f"argument '{key}' must be {_JSON_NAMES[kind]}, got {shown}")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None  # True is an int in Python, but not a line number
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None
