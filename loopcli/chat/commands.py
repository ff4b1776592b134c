"""Slash commands and completion of the prompt: `/command` names and `@path` file names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

# name -> (argument hint, what it does); the help screen and the command palette list these
COMMANDS = {
    "/help": ("", "show keys and commands"),
    "/undo": ("", "put the files back as they were before the last change"),
    "/diff": ("", "show every change made to the files in this session"),
    "/mode": ("[read-only|ask|auto-edit|yolo]", "show or switch the approval mode"),
    "/model": ("[name]", "show the model, or switch the served model (openai backend)"),
    "/compact": ("", "shorten what the model sees: old tool outputs become one-line stubs"),
    "/clear": ("", "start a new conversation (a new session)"),
    "/tokens": ("", "context used, tokens spent since start, speed of the last answer"),
    "/exit": ("", "quit (the session is saved; `loopcli chat --resume` comes back to it)"),
}
MAX_FILES = 20_000  # listed for @path completion
MAX_SHOWN = 8  # candidates shown under the prompt
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".tox"}
_AT_WORD = re.compile(r"@([^\s@]*)$")


def parse(text: str) -> tuple[str, str] | None:
    """('/mode', 'yolo') for a slash command line, None for a message to the model."""
    text = text.strip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text.partition(" ")
    return name.lower(), arg.strip()


def repo_files(root: Path) -> list[str]:
    """Files of the project, as git lists them (tracked and untracked, not ignored), else a
    walk that skips hidden and virtualenv folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, timeout=5)
        if out.returncode == 0:
            return sorted(p for p in out.stdout.decode("utf-8", "replace").split("\0") if p)[:MAX_FILES]
    except (OSError, subprocess.SubprocessError):
        pass
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        base = Path(folder).relative_to(root)
        found.extend((base / f).as_posix() for f in sorted(files))
        if len(found) >= MAX_FILES:
            break
    return found[:MAX_FILES]


def complete(text: str, files: list[str]) -> tuple[str, list[str]]:
    """Completion of the prompt's last word: (the new text, the candidates to show).

    `/mo` completes command names; `@src/ap` completes file paths (prefix matches first, then
    paths that contain the word). With several candidates the word grows to their common
    prefix."""
    if text.startswith("/") and " " not in text:
        return _extend(text, "", [c for c in COMMANDS if c.startswith(text.lower())])
    if text.startswith("/mode "):
        from loopcli.chat.approvals import MODES

        word = text[len("/mode "):]
        return _extend(text, "/mode ", [m for m in MODES if m.startswith(word)])
    match = _AT_WORD.search(text)
    if not match:
        return text, []
    word = match.group(1)
    head = text[:match.start()] + "@"
    hits = [f for f in files if f.startswith(word)]
    if not hits:
        hits = [f for f in files if word.lower() in f.lower()]
    return _extend(text, head, hits)


def _extend(text: str, head: str, hits: list[str]) -> tuple[str, list[str]]:
    if not hits:
        return text, []
    if len(hits) == 1:
        return head + hits[0] + " ", []
    common = os.path.commonprefix(hits)
    new = head + common if len(head + common) > len(text) else text
    return new, hits[:MAX_SHOWN] + ([f"… {len(hits) - MAX_SHOWN} more"] if len(hits) > MAX_SHOWN else [])


def expand_mentions(text: str, root: Path, limit: int = 20_000) -> str:
    """The message with each `@path` of an existing file followed by the file's text, so the
    model sees what the user points at (the first `limit` characters of each)."""
    extra = []
    for name in dict.fromkeys(re.findall(r"@([^\s@]+)", text)):
        path = (root / name)
        try:
            path = path.resolve()
            path.relative_to(root.resolve())  # nothing outside the project
            if path.is_file():
                body = path.read_text(encoding="utf-8", errors="replace")[:limit]
                extra.append(f"\n\n--- {name} ---\n{body}")
        except (OSError, ValueError):
            continue
    return text + "".join(extra)
