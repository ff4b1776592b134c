"""Looking at the workspace: a numbered window of a file, a directory listing, a file's outline."""

from __future__ import annotations

import difflib
import itertools
import os
from pathlib import Path, PurePosixPath

from . import textfile
from .errors import ToolError
from .languages import language_for
from .tags import Tag, extract_tags
from .workspace import FileInfo, Workspace, open_file, plural, read_file

MAX_LINE_CHARS = 1_000  # one minified line must not fill the context
MAX_VIEW_CHARS = 40_000  # budget of one window, whatever its line count
MAX_DIR_ENTRIES = 200
MAX_OUTLINE_SYMBOLS = 400
MAX_OUTLINE_BYTES = 10_000_000  # tree-sitter copes; the model rarely needs more
MAX_SIGNATURE_CHARS = 160


def view(ws: Workspace, path: str, start: int = 1, limit: int = 200) -> str:
    """Lines `start`..`start+limit-1` of a file, numbered; a listing for a directory."""
    real = _existing(ws, path)
    if real.is_dir():
        return _list_directory(ws, real)
    info = ws.file_info(real)
    if info.binary:
        return (f"{info.summary()}; not shown as text. "
                "Inspect it with the shell if needed (e.g. `file`, `xxd | head`).")
    if limit < 1:
        raise ToolError(f"limit must be at least 1 (got {limit})")
    total, lines = _window(real, info, start, limit)
    if total == 0:
        return f"{info.path}: empty file (0 lines)"
    end = start + len(lines) - 1
    width = len(str(end))
    body, shown = [], 0
    for number, text in enumerate(lines, start):
        row = f"{number:>{width}}\t{_clip(text)}"
        shown += len(row) + 1
        if body and shown > MAX_VIEW_CHARS:
            end = number - 1  # stop at the budget; the footer says where to go on
            break
        body.append(row)
    return "\n".join([_header(info, start, end, total), *body, *_footer(end, total)])


def _existing(ws: Workspace, path: str) -> Path:
    real = ws.resolve(path)
    if not real.exists():
        raise ToolError(f"{path} does not exist.{suggest(ws, ws.relative(real))}")
    return real


def suggest(ws: Workspace, rel: str) -> str:
    """' Did you mean: …?' with paths that share the name or look alike (for a missing `rel`)."""
    files = ws.files()
    dirs = {str(parent) for f in files for parent in PurePosixPath(f).parents if str(parent) != "."}
    candidates = files + sorted(dirs)
    name = PurePosixPath(rel).name
    same_name = [c for c in candidates if PurePosixPath(c).name == name]
    close = difflib.get_close_matches(rel, candidates, n=5, cutoff=0.6)
    picks = list(dict.fromkeys(same_name + close))[:5]
    return f" Did you mean: {', '.join(picks)}?" if picks else " Use find_files to look for it."


def _window(real: Path, info: FileInfo, start: int, limit: int) -> tuple[int, list[str]]:
    """(total lines, the lines of the window); lines split on LF, a CR before it dropped."""
    if info.huge:
        total = info.lines or 0
        _check_start(info.path, start, total)
        with os.fdopen(open_file(real), "rb") as handle:  # no symlink or FIFO on the way
            raw = itertools.islice(handle, start - 1, start - 1 + limit)
            lines = [line.rstrip(b"\n").removesuffix(b"\r").decode("utf-8", "replace")
                     for line in raw]
        return total, lines
    text = textfile.read(real).text  # same decoding as the edit tools
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start another
    _check_start(info.path, start, len(lines))
    return len(lines), lines[start - 1:start - 1 + limit]


def _check_start(rel: str, start: int, total: int) -> None:
    if start < 1:
        raise ToolError(f"start must be at least 1 (lines are numbered from 1), got {start}")
    if start > max(total, 1):
        raise ToolError(
            f"start {start} is past the end of {rel}, which has {plural(total, 'line')}; "
            f"use a start between 1 and {max(total, 1)}"
        )


def _clip(text: str) -> str:
    if len(text) <= MAX_LINE_CHARS:
        return text
    return f"{text[:MAX_LINE_CHARS]}… [line cut: {len(text) - MAX_LINE_CHARS:,} more chars]"


def _header(info: FileInfo, start: int, end: int, total: int) -> str:
    if info.huge:
        return (f"{info.summary()}; showing lines {start}-{end} "
                "(use search with path= to find lines in it)")
    return f"{info.path} (lines {start}-{end} of {total})"


def _footer(end: int, total: int) -> list[str]:
    if end >= total:
        return []
    return [f"[{total - end:,} more lines not shown; view with start={end + 1} to continue]"]


def _list_directory(ws: Workspace, real: Path) -> str:
    rel = ws.relative(real)
    prefix = "" if rel == "." else rel + "/"
    inside = [f[len(prefix):] for f in ws.files() if f.startswith(prefix)]
    if not inside:
        return _list_plain(rel, real)
    tree = _tree(inside)
    rows = _tree_rows(tree, depth=2)
    if len(rows) > MAX_DIR_ENTRIES:
        rows = _tree_rows(tree, depth=1)
    header = f"{prefix or './'} (directory, {len(inside):,} files; ignored files are not listed)"
    return "\n".join([header, *_bounded(rows)])


def _list_plain(rel: str, real: Path) -> str:
    """Direct listing for a directory git ignores (or an empty one)."""
    try:
        entries = sorted(os.scandir(real), key=lambda e: (not e.is_dir(), e.name))
    except OSError as exc:
        raise ToolError(f"cannot list {rel}: {exc.strerror}") from None
    rows = [f"  {e.name}/" if e.is_dir() else f"  {e.name}" for e in entries]
    if not rows:
        return f"{rel}/ (empty directory)"
    return "\n".join([f"{rel}/ (directory ignored by git or outside its listing, "
                      f"{len(rows)} entries)", *_bounded(rows)])


def _bounded(rows: list[str]) -> list[str]:
    if len(rows) <= MAX_DIR_ENTRIES:
        return rows
    left = len(rows) - MAX_DIR_ENTRIES
    return rows[:MAX_DIR_ENTRIES] + [f"[{left:,} more entries not shown; view a subdirectory]"]


def _tree(paths: list[str]) -> dict:
    """Nested dicts of directory names; files map to None."""
    root: dict = {}
    for path in paths:
        *folders, name = path.split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = None
    return root


def _count_files(node: dict) -> int:
    return sum(1 if child is None else _count_files(child) for child in node.values())


def _tree_rows(node: dict, depth: int, indent: str = "  ") -> list[str]:
    """Directories first, each with its file count; deeper than `depth` only the count."""
    rows = []
    for name, child in sorted(node.items(), key=lambda item: (item[1] is None, item[0])):
        if child is None:
            rows.append(f"{indent}{name}")
            continue
        count = _count_files(child)
        rows.append(f"{indent}{name}/ ({plural(count, 'file')})")
        if depth > 1:
            rows.extend(_tree_rows(child, depth - 1, indent + "  "))
    return rows


def outline(ws: Workspace, path: str) -> str:
    """The file's definitions (classes, functions, methods, ...) nested as in the source,
    each with its line range, so that a window of it can be viewed."""
    real = _existing(ws, path)
    rel = ws.relative(real)
    if real.is_dir():
        raise ToolError(f"{rel} is a directory; outline takes a file (view lists a directory)")
    info = ws.file_info(real)
    if info.binary:
        raise ToolError(f"{info.summary()}; it has no outline")
    if info.size > MAX_OUTLINE_BYTES:
        raise ToolError(f"{info.summary()}; too big to outline, use search with path={rel!r}")
    lang = language_for(real)
    if lang is None:
        raise ToolError(f"no outline for {rel}: no parser handles {real.suffix or 'extensionless'} "
                        "files; use view, or search for its definitions")
    defs = [tag for tag in extract_tags(lang, read_file(real)[0]) if tag.kind == "def"]
    if not defs:
        return f"{rel}: no definitions found ({lang}, {plural(info.lines, 'line')}); use view"
    rows = _outline_rows(defs[:MAX_OUTLINE_SYMBOLS])
    header = f"{rel}: {plural(len(defs), 'definition')} ({lang}, {plural(info.lines, 'line')})"
    lines = [header, *rows]
    if len(defs) > MAX_OUTLINE_SYMBOLS:
        lines.append(f"[{len(defs) - MAX_OUTLINE_SYMBOLS:,} more definitions not shown; "
                     "view the rest of the file in windows]")
    return "\n".join(lines)


def _outline_rows(defs: list[Tag]) -> list[str]:
    """`lines  <indent>signature  (category)`, indented by how deeply each is nested."""
    ranges = [f"{t.line}" if t.line == t.end_line else f"{t.line}-{t.end_line}" for t in defs]
    width = max(len(r) for r in ranges)
    open_ends: list[int] = []  # end bytes of the definitions enclosing the current one
    rows = []
    for tag, lines in zip(defs, ranges):
        while open_ends and tag.start_byte >= open_ends[-1]:
            open_ends.pop()
        signature = " ".join(tag.signature.split()) or tag.name
        if len(signature) > MAX_SIGNATURE_CHARS:
            signature = signature[:MAX_SIGNATURE_CHARS] + "…"
        rows.append(f"{lines:>{width}}  {'  ' * len(open_ends)}{signature}  ({tag.category})")
        open_ends.append(tag.end_byte)
    return rows
