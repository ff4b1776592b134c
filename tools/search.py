"""Finding things: text by regex or literal across the project's files, and files by name.

Patterns run on the `regex` module (re's syntax and behaviour, plus a timeout): a pattern
that backtracks without end stops after SEARCH_SECONDS of matching (CPU time, which is what
regex's timeout counts) for the whole search, and the search is refused with a message
instead of hanging the agent. re itself cannot be interrupted, a thread running it cannot be
killed, and a subprocess per search would cost more than most searches.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import regex

from .errors import ToolError
from .view import suggest
from .workspace import SNIFF_BYTES, Workspace, format_size, is_binary_prefix, plural

MAX_SEARCH_BYTES = 20_000_000  # bigger files are skipped (and counted), like generated dumps
SEARCH_SECONDS = 10.0  # CPU seconds of regex matching for one search, all files together
LINE_WIDTH = 240  # a result line is clipped to about this many characters around the match
_BRACES = re.compile(r"\{([^{}]*)\}")


@dataclass
class _Tally:
    """Results kept up to the cap, and counts of everything past it."""

    cap: int
    rows: list[str] = field(default_factory=list)
    matches: int = 0
    files: int = 0
    files_left_out: int = 0
    skipped_binary: int = 0
    skipped_big: list[str] = field(default_factory=list)


def search(ws: Workspace, pattern: str, *, literal: bool = False, path: str | None = None,
           glob: str | None = None, ignore_case: bool = False, max_results: int = 100) -> str:
    """Lines matching `pattern` as `path:line: text`, over the files .gitignore leaves.

    The pattern is a Python regex (``^``/``$`` match at line ends) unless `literal`; a match
    that spans lines is reported at the line it starts on.
    """
    compiled = _compile(pattern, literal, ignore_case)
    candidates = _candidates(ws, path, glob)
    tally = _Tally(cap=max(1, max_results))
    deadline = time.process_time() + SEARCH_SECONDS
    try:
        for rel in candidates:
            _search_file(ws.root / rel, rel, compiled, tally, deadline)
    except TimeoutError:
        raise ToolError(
            f"the regex {pattern!r} took more than {SEARCH_SECONDS:g} s of matching and was stopped "
            f"({tally.matches:,} matching lines found before that): it probably backtracks "
            "without end (nested repeats such as (a+)+ or (.*)*). Simplify it, anchor it on "
            "literal text, narrow the search with path= or glob=, or pass literal=True"
        ) from None
    return _report(pattern, len(candidates), tally)


def _compile(pattern: str, literal: bool, ignore_case: bool) -> regex.Pattern:
    if not pattern:
        raise ToolError("the search pattern is empty; give the text or regex to look for")
    flags = regex.MULTILINE | (regex.IGNORECASE if ignore_case else 0)
    try:
        return regex.compile(re.escape(pattern) if literal else pattern, flags)
    except regex.error as exc:
        raise ToolError(
            f"invalid regex {pattern!r}: {exc}; escape special characters, "
            "or pass literal=True to search for the text as is"
        ) from None


def _candidates(ws: Workspace, path: str | None, glob: str | None) -> list[str]:
    if path is None:
        files = ws.files()
    else:
        real = ws.resolve(path)
        rel = ws.relative(real)
        if real.is_file():
            files = [rel]  # named explicitly: searched even when .gitignore hides it
        elif real.is_dir():
            prefix = "" if rel == "." else rel + "/"
            files = [f for f in ws.files() if f.startswith(prefix)]
        else:
            raise ToolError(f"{path} does not exist.{suggest(ws, rel)}")
    if glob:
        files = [f for f in files if glob_match(f, glob)]
    return files


def glob_match(rel: str, pattern: str) -> bool:
    """Shell-style match: a pattern without '/' matches the file name, else the whole path.

    ``*`` crosses folders (fnmatch), ``**/`` also stands for no folder at all, and one level
    of braces, ``*.{ts,tsx}``, gives alternatives, as in ripgrep and editors.
    """
    name = PurePosixPath(rel).name
    return any(
        fnmatch.fnmatchcase(rel if "/" in alternative else name, alternative)
        for alternative in _alternatives(pattern)
    )


def _alternatives(pattern: str) -> list[str]:
    found = _BRACES.search(pattern)
    if found:
        head, tail = pattern[:found.start()], pattern[found.end():]
        expanded = [head + option + tail for option in found.group(1).split(",")]
    else:
        expanded = [pattern]
    # "**/" may match zero folders: "src/**/x.py" must match "src/x.py"
    collapsed = [p.replace("/**/", "/").removeprefix("**/") for p in expanded if "**/" in p]
    return expanded + collapsed


def _search_file(path: Path, rel: str, pattern: regex.Pattern, tally: _Tally,
                 deadline: float) -> None:
    try:
        if path.stat().st_size > MAX_SEARCH_BYTES:
            tally.skipped_big.append(rel)
            return
        data = path.read_bytes()
    except OSError:
        return  # vanished or unreadable since listing: nothing to report
    if is_binary_prefix(data[:SNIFF_BYTES]):
        tally.skipped_binary += 1
        return
    text = data.decode("utf-8", "replace")
    before_rows, before_matches = len(tally.rows), tally.matches
    for number, line, column in _matching_lines(text, pattern, deadline):
        tally.matches += 1
        if len(tally.rows) < tally.cap:
            tally.rows.append(f"{rel}:{number}: {_clip(line, column)}")
    if tally.matches > before_matches:
        tally.files += 1
        tally.files_left_out += len(tally.rows) == before_rows


def _matching_lines(text: str, pattern: regex.Pattern, deadline: float):
    """(line number, line text, match column) once per line that has a match.

    Raises TimeoutError once `deadline` (time.process_time) has passed.
    """
    number, counted_to, pos = 1, 0, 0
    while pos < len(text) and (
            match := pattern.search(text, pos, timeout=max(deadline - time.process_time(), 1e-3))):
        if match.start() == len(text) and text.endswith("\n"):
            return  # the empty "line" after the final newline is not a line
        number += text.count("\n", counted_to, match.start())
        line_start = text.rfind("\n", 0, match.start()) + 1
        line_end = text.find("\n", match.start())
        line_end = len(text) if line_end == -1 else line_end
        yield number, text[line_start:line_end].rstrip("\r"), match.start() - line_start
        counted_to, pos = match.start(), line_end + 1


def _clip(line: str, column: int) -> str:
    """The line, or a LINE_WIDTH slice of it that shows where the match is."""
    if len(line) <= LINE_WIDTH:
        return line
    begin = max(0, min(column - LINE_WIDTH // 4, len(line) - LINE_WIDTH))
    piece = line[begin:begin + LINE_WIDTH]
    return ("…" if begin else "") + piece + ("…" if begin + LINE_WIDTH < len(line) else "")


def _report(pattern: str, searched: int, tally: _Tally) -> str:
    notes = _skip_notes(searched, tally)
    if not tally.matches:
        return "\n".join([f"No matches for {pattern!r} in {plural(searched, 'file')}.", *notes])
    head = f"{plural(tally.matches, 'matching line')} in {plural(tally.files, 'file')}:"
    lines = [head, *tally.rows]
    left = tally.matches - len(tally.rows)
    if left:
        lines.append(
            f"[{left:,} more matching lines not shown, {tally.files_left_out:,} of the files "
            "not listed at all; narrow the search with path= or glob=, or a more specific pattern]"
        )
    return "\n".join(lines + notes)


def _skip_notes(searched: int, tally: _Tally) -> list[str]:
    notes = []
    if not searched:
        notes.append("[no files to search there: the path/glob matches none, or only files "
                     ".gitignore hides (grep -r in the shell reaches those)]")
    if tally.skipped_binary:
        notes.append(f"[{plural(tally.skipped_binary, 'binary file')} not searched]")
    if tally.skipped_big:
        names = ", ".join(tally.skipped_big[:5]) + (", …" if len(tally.skipped_big) > 5 else "")
        notes.append(f"[{plural(len(tally.skipped_big), 'file')} over "
                     f"{format_size(MAX_SEARCH_BYTES)} not searched: {names}; "
                     "use the shell (grep) for them]")
    return notes


def find_files(ws: Workspace, name_pattern: str, max_results: int = 100) -> str:
    """Project files whose path matches a glob (``*.py``, ``src/**/test_*``) or contains a
    substring (case-insensitive); names that match come before paths that only contain it."""
    if not name_pattern:
        raise ToolError("the file name pattern is empty; give a name, part of one, or a glob")
    files = ws.files()
    if any(ch in name_pattern for ch in "*?["):
        found = [f for f in files if glob_match(f, name_pattern)]
    else:
        needle = name_pattern.lower()
        found = [f for f in files if needle in f.lower()]
        found.sort(key=lambda f: needle not in PurePosixPath(f).name.lower())
    if not found:
        return f"No files match {name_pattern!r} ({len(files):,} files in the project)."
    shown = found[:max(1, max_results)]
    lines = [f"{plural(len(found), 'file')} matching {name_pattern!r}:", *shown]
    if len(found) > len(shown):
        lines.append(f"[{len(found) - len(shown):,} more not shown; use a more specific pattern]")
    return "\n".join(lines)
