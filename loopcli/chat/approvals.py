"""Approval modes: which tool calls run at once, which wait for the user, which are refused.

The modes sit on top of the sandbox policy (which bounds what a command that does run may
touch): read-only refuses every edit and command, ask (the default) asks before each,
auto-edit applies edits and asks before commands, yolo runs everything (still inside the
sandbox policy's limits).
"""

from __future__ import annotations

import difflib
import json
import shutil
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tools load with the agent, after the first screen
    from loopcli.tools.toolbox import Toolbox
    from loopcli.tools.workspace import Workspace

MODES = ("read-only", "ask", "auto-edit", "yolo")  # from strictest to loosest
EDIT_TOOLS = ("replace", "write", "replace_symbol", "insert_after_symbol", "undo")
SHELL_TOOLS = ("shell",)
DIFF_LINES = 400  # of a preview shown in an approval card

DENIED = ("The user denied this {kind}: it was not run. Do not retry it unchanged; ask the user "
          "what they want, or take another way.")
READ_ONLY = ("Not run: the chat is in read-only mode, where edits and shell commands are "
             "refused. Answer from what you can read, or tell the user to switch mode (/mode).")


def kind_of(tool: str) -> str:
    """'edit', 'shell' or 'read'."""
    if tool in EDIT_TOOLS:
        return "edit"
    if tool in SHELL_TOOLS:
        return "shell"
    return "read"


def decide(mode: str, kind: str, always: set[str] = frozenset()) -> str:
    """'run', 'ask' or 'deny' for a call of `kind` in `mode`; `always` holds the kinds the user
    approved for the rest of the session."""
    if kind == "read":
        return "run"
    if mode == "read-only":
        return "deny"
    if mode == "yolo" or kind in always or (mode == "auto-edit" and kind == "edit"):
        return "run"
    return "ask"


def tighter(a: str, b: str) -> str:
    """The stricter of two modes."""
    return a if MODES.index(a) <= MODES.index(b) else b


def preview(toolbox: Toolbox, name: str, arguments) -> str:
    """What a call would do, for the approval card: an edit as the unified diff it would make
    (run on a scratch copy of the file), a command as its text."""
    from loopcli.tools.toolbox import ArgumentError, check_arguments

    try:
        args = check_arguments(toolbox.tools[name], arguments)
    except (ArgumentError, KeyError) as exc:
        return f"(arguments the tool will refuse: {exc})"
    if name == "shell":
        return args["command"]
    if name == "undo":
        return "put the files back as they were before the last change"
    return _edit_diff(toolbox.workspace, name, args)


def _edit_diff(ws: Workspace, name: str, args: dict) -> str:
    from loopcli.tools import edit
    from loopcli.tools.errors import ToolError
    from loopcli.tools.workspace import Workspace

    try:
        source = ws.resolve(args["path"], for_write=True)
        rel = source.relative_to(ws.root).as_posix()
    except (ToolError, OSError, ValueError) as exc:
        return f"(this edit will fail: {exc})"
    with tempfile.TemporaryDirectory(prefix="loopcli-preview-") as tmp:
        scratch = Path(tmp) / rel
        scratch.parent.mkdir(parents=True, exist_ok=True)
        before = ""
        if source.is_file():
            shutil.copyfile(source, scratch)
            before = scratch.read_text(encoding="utf-8", errors="replace")
        try:
            run = {"replace": edit.replace, "write": edit.write,
                   "replace_symbol": edit.replace_symbol,
                   "insert_after_symbol": edit.insert_after_symbol}[name]
            run(Workspace(tmp), **_edit_args(name, args))
        except (ToolError, OSError, ValueError, TypeError) as exc:
            return f"(this edit will fail: {exc})"
        after = scratch.read_text(encoding="utf-8", errors="replace")
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                      f"a/{rel}", f"b/{rel}", lineterm=""))
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"… {len(lines) - DIFF_LINES} more lines"]
    return "\n".join(lines) or "(no change)"


def _edit_args(name: str, args: dict) -> dict:
    if name == "insert_after_symbol":
        return args
    if name == "replace_symbol":
        return {"path": args["path"], "symbol": args["symbol"], "new_code": args["code"]}
    return args


def describe(name: str, arguments) -> str:
    """`replace app.py`: a call in a few words, for card titles."""
    args = arguments if isinstance(arguments, dict) else _loads(arguments)
    subject = " ".join(str(args[k]) for k in ("path", "symbol", "command", "pattern") if k in args)
    subject = " ".join(subject.split())
    return f"{name} {subject[:100]}".strip()


def _loads(text) -> dict:
    try:
        value = json.loads(text or "{}")
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
