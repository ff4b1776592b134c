"""File edits for a model that quotes code imperfectly: text replace, create, symbol edits.

Every edit goes through the same steps: read the file faithfully (``textfile``: encoding,
line endings, final newline and mode are kept), compute the new text, run the syntax gate,
write atomically, and return a short report naming what matched and a small diff.

Text matching (``replace``) tries, in order, and stops at the first tier that matches:

1. exact substring;
2. whole lines equal once trailing whitespace is ignored;
3. whole lines equal after removing a common leading-whitespace offset (the model quoted the
   block indented more or less than the file); the replacement is shifted by the same offset;
4. fuzzy: the one window of as many lines as ``old`` whose ``difflib`` similarity is at least
   0.9 and beats every other non-overlapping window by 0.05. Text under 20 non-blank
   characters never matches fuzzily: a ratio over so few characters means little.

Tiers 2-4 replace whole lines. Several matches with ``all=False`` are refused, naming where.
When tiers 2-3 find nothing and ``old`` / ``new`` are indented in another style than the file
(spaces where it has tabs, 4 spaces per level where it has 2), they are converted to the
file's style level by level and tiers 1-3 run again; the fuzzy tier compares the converted
text too. Whatever tier matched, the new lines are written in the indentation style of the
lines they replace (tabs or spaces, and the file's indent width), and the reply says when
indentation was converted. The fuzzy tier stops after FUZZY_BUDGET characters of comparison
and then refuses rather than guess.

Symbol edits (``replace_symbol``, ``insert_after_symbol``) find a definition through the
tree-sitter tags (``tags.extract_tags``). Names are qualified by containment: a method in a
class is ``Class.method``, a nested function ``outer.inner``, a Rust method ``Type.method``
(its ``impl`` block), a Go method ``Type.Method`` (its receiver, without ``*`` or type
parameters). ``Type::method``, ``Class#method`` and ``(*Type).Method`` are accepted too, and
a name that is unique as a suffix (``method`` for ``Class.method``) is enough. A definition's
range includes Python decorators; text before it on its first line (a JS ``export``) is kept.
Code given at any indentation is re-indented to the symbol's, in the file's indentation style.

Syntax gate: when the file's language has a tree-sitter grammar, an edit that leaves ERROR or
MISSING nodes in a file that parsed cleanly before is refused and nothing is written. A file
that already had parse errors is not gated (its errors would be blamed on the edit). Python
files also go through Python's own compiler (``compile(text, path, "exec")``), which catches
what tree-sitter accepts (TabError, IndentationError, some SyntaxErrors): an edit that makes a
compiling file stop compiling is refused with the line and the reason (new files are
not compiled: with nothing to compare, syntax newer than this interpreter would be refused).
Other languages get the tree-sitter check only; files without a grammar (Makefile, YAML,
Markdown...) none.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from dataclasses import replace as replace_dc
from pathlib import Path

from . import textfile
from .errors import ToolError
from .languages import language_for, parser
from .tags import extract_tags
from .workspace import Workspace

FUZZY_MIN = 0.9
FUZZY_MARGIN = 0.05
FUZZY_MIN_CHARS = 20
HINT_MIN = 0.5  # below this the closest window is not worth showing
HINT_BUDGET = 200  # windows scored to find the closest one when none is close enough to apply
FUZZY_BUDGET = 20_000_000  # characters the fuzzy tier may compare before it gives up
RATIO_COST = 8  # a SequenceMatcher.ratio() counted as this many passes over its two texts
LINE_COST = 20  # the per-line work of building a window, counted in characters
DIFF_MAX_LINES = 40


@dataclass(frozen=True)
class _Match:
    start: int  # span in the LF text
    end: int
    new: str
    line: int  # 1-based first line of the span


# ---------------------------------------------------------------------------------------------
# public tools


def replace(ws: Workspace, path: str | os.PathLike, old: str, new: str, all: bool = False) -> str:
    """Replace `old` with `new` in the file at `path`; see the module docstring for matching."""
    old, new = _lf(old), _lf(new)
    if old == "":
        raise ToolError(
            "old is empty; quote the exact text to replace (use write to create a file)"
        )
    if old == new:
        raise ToolError("old and new are identical, so there is nothing to change")
    target, before = _read_existing(ws, path)
    label, matches = _find(before.text, old, new, all, ws.relative(target))
    ordered = sorted(matches, key=lambda m: m.start)
    after = before.splice_many([(m.start, m.end, m.new) for m in ordered])
    return _commit(ws, target, before, after, _where(label, matches))


def write(ws: Workspace, path: str | os.PathLike, content: str, overwrite: bool = False) -> str:
    """Create the file at `path` (and its parent directories) holding `content`.

    An existing file is replaced only with ``overwrite=True``; it keeps its encoding, line
    endings, final-newline state and mode. A new file is UTF-8 with LF endings, as given.
    """
    target = ws.resolve(path, for_write=True)
    rel = ws.relative(target)
    if target.is_dir():
        raise ToolError(f"{rel} is a directory; give a file path")
    if not target.exists():
        after = textfile.new_file(content)
        _check_syntax(target, rel, None, after.text)
        textfile.write(target, after)
        return f"Created {rel} ({_count_lines(after.text)} lines)."
    before = textfile.read(target)
    if not overwrite:
        raise ToolError(
            f"{rel} already exists ({_count_lines(before.text)} lines); change part of it with "
            "replace or replace_symbol, or pass overwrite=True to replace all of its content"
        )
    after = before.splice(0, len(before.text), _lf(content))
    return _commit(ws, target, before, after, "overwrote the whole file")


def replace_symbol(ws: Workspace, path: str | os.PathLike, symbol: str, new_code: str) -> str:
    """Replace the whole definition of `symbol` (``"Class.method"``, ``"func"``) with `new_code`."""
    if not new_code.strip():
        raise ToolError("new_code is empty; to delete a definition, use replace on its text")
    target, before, sym, indent = _symbol_site(ws, path, symbol)
    text = before.text
    kept = text[text.rfind("\n", 0, sym.start) + 1 + len(indent):sym.start]  # e.g. JS `export `
    new_code, converted = _code_in_file_style(new_code, text, sym)
    block = "\n".join(_fit_block(new_code, indent))[len(indent):]
    if kept and block.startswith(kept):
        block = block[len(kept):]
    after = before.splice(sym.start, sym.end, block)
    now = _span_text(sym.first, sym.first + block.count("\n"))
    what = f"replaced {sym.qualname} (was {sym.lines}, now {now}){converted}"
    return _commit(ws, target, before, after, what)


def insert_after_symbol(ws: Workspace, path: str | os.PathLike, symbol: str, code: str) -> str:
    """Insert `code` after the definition of `symbol`, as its sibling (same indentation)."""
    if not code.strip():
        raise ToolError("code is empty; give the code to insert")
    target, before, sym, indent = _symbol_site(ws, path, symbol)
    text = before.text
    end_of_line = text.find("\n", sym.end)
    at = len(text) if end_of_line == -1 else end_of_line
    # PEP 8 puts two blank lines between top-level Python definitions, one elsewhere
    blank = 2 if language_for(target) == "python" and not indent else 1
    code, converted = _code_in_file_style(code, text, sym)
    lines = _fit_block(code, indent)
    after = before.splice(at, at, "\n" * (blank + 1) + "\n".join(lines))
    first = _line_of(text, at) + blank + 1
    where = _span_text(first, first + len(lines) - 1)
    what = f"inserted {len(lines)} lines after {sym.qualname}, at {where}{converted}"
    return _commit(ws, target, before, after, what)


# ---------------------------------------------------------------------------------------------
# shared steps


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _read_existing(ws: Workspace, path: str | os.PathLike) -> tuple[Path, textfile.TextFile]:
    target = ws.resolve(path, for_write=True)
    if not target.exists():
        raise ToolError(
            f"{ws.relative(target)} does not exist; check the path, or create it with write"
        )
    return target, textfile.read(target)


def _commit(ws: Workspace, target: Path, before: textfile.TextFile,
            after: textfile.TextFile, what: str) -> str:
    rel = ws.relative(target)
    if after.raw == before.raw:
        raise ToolError(f"the edit leaves {rel} unchanged; nothing written")
    _check_syntax(target, rel, before.text, after.text)
    textfile.write(target, after)
    return f"Edited {rel}: {what}.\n{_diff(before.text, after.text)}"


def _count_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _span_text(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def _split_lines(text: str) -> list[str]:
    """Lines without their newline; no phantom empty line after a final newline.

    Not str.splitlines, which also splits at form feeds, U+2028 and the like.
    """
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def _diff(before: str, after: str) -> str:
    diff = difflib.unified_diff(_split_lines(before), _split_lines(after), lineterm="", n=2)
    lines = list(diff)[2:]
    if len(lines) > DIFF_MAX_LINES:
        hidden = len(lines) - DIFF_MAX_LINES
        lines = lines[:DIFF_MAX_LINES] + [f"... ({hidden} more diff lines)"]
    return "\n".join(lines)


def _numbers(numbers, shown: int = 10) -> str:
    numbers = list(numbers)
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return ", ".join(map(str, numbers[:shown])) + more


def _where(label: str, matches: list[_Match]) -> str:
    if len(matches) == 1:
        return f"replaced the text at line {matches[0].line} ({label})"
    lines = _numbers(m.line for m in matches)
    return f"replaced {len(matches)} occurrences at lines {lines} ({label})"


# ---------------------------------------------------------------------------------------------
# syntax gate


def _check_syntax(target: Path, rel: str, before: str | None, after: str) -> None:
    """Refuse `after` when it has parse errors that `before` (None: a new file) did not."""
    lang = language_for(target)
    if lang is None:
        return
    _check_tree_sitter(lang, rel, before, after)
    if lang == "python" and before is not None:
        _check_python_compiles(rel, before, after)


def _check_python_compiles(rel: str, before: str, after: str) -> None:
    """Python's own compiler: it rejects what tree-sitter accepts (mixed tabs and spaces).

    Only for files that compiled before the edit, on the interpreter loopcli runs on (syntax
    newer than it would be refused; a file already using such syntax is not gated).
    """
    if _compile_error(before, rel) is not None:
        return  # it did not compile before: its errors are not the edit's
    error = _compile_error(after, rel)
    if error is None:
        return
    kind, line, reason = error
    lines = after.split("\n")
    shown = f"\n  {line:>4} | {lines[line - 1]}" if 0 < line <= len(lines) else ""
    raise ToolError(
        f"edit refused, nothing written: Python cannot compile {rel} after it: {kind} at line "
        f"{line}: {reason}{shown}\n"
        "Fix the new text (indent with the file's own characters, close brackets) and retry."
    )


def _compile_error(source: str, rel: str) -> tuple[str, int, str] | None:
    """(exception name, line, message) when `source` does not compile, else None."""
    try:
        with warnings.catch_warnings():  # SyntaxWarnings (invalid escapes) are not errors
            warnings.simplefilter("ignore")
            compile(source, rel, "exec", dont_inherit=True)
    except SyntaxError as exc:  # IndentationError and TabError included
        return type(exc).__name__, exc.lineno or 0, exc.msg
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, nesting too deep
        return type(exc).__name__, 0, str(exc)
    return None


def _check_tree_sitter(lang: str, rel: str, before: str | None, after: str) -> None:
    ts = parser(lang)
    if before is not None and ts.parse(before.encode()).root_node.has_error:
        return
    root = ts.parse(after.encode()).root_node
    if not root.has_error:
        return
    lines = after.split("\n")
    shown = [f"  {row + 1:>4} | {lines[row]}   <- {what}" for row, what in _syntax_problems(root)]
    raise ToolError(
        f"edit refused, nothing written: it would leave {rel} with {lang} syntax errors:\n"
        + "\n".join(shown)
        + "\nFix the new text (brackets, indentation, quotes) and retry."
    )


def _syntax_problems(root, limit: int = 5) -> list[tuple[int, str]]:
    """(0-based row, description) of the first ERROR / MISSING nodes, in source order."""
    found: list[tuple[int, str]] = []
    stack = [root]
    while stack and len(found) < limit:
        node = stack.pop()
        if node.is_missing:
            found.append((node.start_point.row, f"missing {node.type!r}"))
        elif node.is_error:
            found.append((node.start_point.row, "syntax error"))
        else:
            stack.extend(reversed([c for c in node.children if c.has_error or c.is_missing]))
    return found


# ---------------------------------------------------------------------------------------------
# text matching


class _Lines:
    """The file split in lines, with the offset where each starts."""

    def __init__(self, text: str):
        self.text = text
        self.lines = _split_lines(text)
        self.starts = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line) + 1

    @functools.cached_property
    def width(self) -> int | None:
        """The file's spaces per indent level (None: no space-indented lines to tell)."""
        return _space_width(self.lines)

    @functools.cached_property
    def styles(self) -> list[_Style]:
        """The file's indentation styles, the most used first (two in a mixed file)."""
        tabs = spaces = 0
        for line in self.lines:
            if line[:1] == "\t" and line.strip():
                tabs += 1
            elif line[:1] == " " and line.strip():
                spaces += 1
        ranked = sorted([(tabs, True), (spaces, False)], reverse=True)
        return [_Style(is_tabs, self.width) for used, is_tabs in ranked if used]

    def span(self, first: int, count: int, new: str) -> _Match:
        """A match replacing `count` whole lines from `first`; deleting them takes their newline."""
        start = self.starts[first]
        end = start + sum(len(line) + 1 for line in self.lines[first:first + count]) - 1
        if new == "":
            if end < len(self.text):
                end += 1
            elif start > 0:
                start -= 1
        return _Match(start, end, new, first + 1)


def _find(text: str, old: str, new: str, all: bool, rel: str) -> tuple[str, list[_Match]]:
    exact = _exact(text, old, new)
    if exact:
        exact = _one_or_all(exact, all, rel, "")
        whole = [m for m in exact if _whole_lines(text, m.start, m.end)]
        if len(whole) < len(exact) or _Style.of(new.split("\n")) is None:
            return "exact match", exact
        found, note = _new_in_window_style(_Lines(text), exact, new, old.count("\n") + 1, rel)
        return "exact match" + note, found
    lines = _Lines(text)
    old_lines = old.removesuffix("\n").split("\n")
    new_block = new.removesuffix("\n")
    for label, tier in (("matched ignoring trailing whitespace", _rstrip_tier),
                        ("matched after re-indenting", _indent_tier)):
        found = _windows(lines, old_lines, new_block, tier)
        if found:
            found, note = _new_in_window_style(lines, found, new_block, len(old_lines), rel)
            return label + note, _one_or_all(found, all, rel, f" ({label})")
    # old quoted in another indentation style (spaces for tabs, 4 for 2): read it as the file's
    converted = None
    model = _Style.of(old_lines + new_block.split("\n"))
    for style in lines.styles if model else []:
        if not _should_convert(model, style, rel):
            continue
        old_conv = [_convert(line, model, style) for line in old_lines]
        new_conv = "\n".join(_convert(line, model, style) for line in new_block.split("\n"))
        converted = converted or (old_conv, new_conv, "; " + _converted_note(model, style))
        for label, tier in (("matched ignoring trailing whitespace", _rstrip_tier),
                            ("matched after re-indenting", _indent_tier)):
            found = _windows(lines, old_conv, new_conv, tier)
            if found:
                label = f"matched after converting: {_converted_note(model, style)}"
                return label, _one_or_all(found, all, rel, " (after converting indentation)")
    if converted:
        old_lines, new_block, note = converted
        label, found = _fuzzy(lines, old_lines, new_block, new, rel)
        return label + note, found
    return _fuzzy(lines, old_lines, new_block, new, rel)


def _exact(text: str, old: str, new: str) -> list[_Match]:
    found = []
    line, counted_to = 1, 0  # line numbers counted incrementally: linear in many matches
    index = text.find(old)
    while index != -1:
        line += text.count("\n", counted_to, index)
        counted_to = index
        found.append(_Match(index, index + len(old), new, line))
        index = text.find(old, index + len(old))
    return found


def _one_or_all(found: list[_Match], all: bool, rel: str, how: str) -> list[_Match]:
    if len(found) == 1 or all:
        return found
    raise ToolError(
        f"old text matches {len(found)} places in {rel}{how}, at lines "
        f"{_numbers(m.line for m in found)}; include more "
        "surrounding lines to pick one, or pass all=True to replace every one"
    )


def _windows(lines: _Lines, old_lines: list[str], new_block: str, tier) -> list[_Match]:
    """Non-overlapping windows that `tier(window, old_lines, new_block)` accepts."""
    found: list[_Match] = []
    n = len(old_lines)
    first = 0
    while first + n <= len(lines.lines):
        replacement = tier(lines.lines[first:first + n], old_lines, new_block)
        if replacement is None:
            first += 1
            continue
        found.append(lines.span(first, n, replacement))
        first += n
    return found


def _rstrip_tier(window: list[str], old_lines: list[str], new_block: str) -> str | None:
    same = all(a.rstrip() == b.rstrip() for a, b in zip(window, old_lines))
    return new_block if same else None


def _indent_tier(window: list[str], old_lines: list[str], new_block: str) -> str | None:
    if not all(a.strip() == b.strip() for a, b in zip(window, old_lines)):
        return None  # the cheap test first: most windows differ in their first line
    shift = _indent_shift(window, old_lines)
    if shift is None or _dedent(window) != _dedent(old_lines):
        return None
    return _shift_block(new_block, *shift)


# -- indentation helpers


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _common_indent(lines: list[str]) -> str:
    return os.path.commonprefix([_leading(line) for line in lines if line.strip()])


def _dedent(lines: list[str]) -> list[str]:
    """Lines without their common indent and trailing whitespace; blank lines become ''."""
    cut = len(_common_indent(lines))
    return [line[cut:].rstrip() if line.strip() else "" for line in lines]


def _indent_shift(window: list[str], old_lines: list[str]) -> tuple[str, str] | None:
    """(old indent, file indent) when one extends the other; None when equal or unrelated."""
    old_indent, file_indent = _common_indent(old_lines), _common_indent(window)
    if old_indent == file_indent:
        return None
    if file_indent.startswith(old_indent) or old_indent.startswith(file_indent):
        return old_indent, file_indent
    return None


def _shift_block(block: str, old_indent: str, file_indent: str) -> str:
    """Move every non-blank line of `block` by the offset from `old_indent` to `file_indent`."""
    out = []
    for line in block.split("\n"):
        if not line.strip():
            out.append(line)
        elif file_indent.startswith(old_indent):
            out.append(file_indent[len(old_indent):] + line)
        else:
            cut = min(len(old_indent) - len(file_indent), len(_leading(line)))
            out.append(line[cut:])
    return "\n".join(out)


# -- indentation style


@dataclass(frozen=True)
class _Style:
    """How text indents: tabs, or `width` spaces per level (None: the width is not known)."""

    tabs: bool
    width: int | None

    @classmethod
    def of(cls, lines: list[str]) -> _Style | None:
        """The style most indented lines use; None when no line is indented."""
        leads = [_leading(line) for line in lines if line.strip() and line[0] in " \t"]
        if not leads:
            return None
        return cls(sum(lead[0] == "\t" for lead in leads) * 2 > len(leads), _space_width(lines))

    def parse(self, indent: str) -> tuple[int, int]:
        """(levels, alignment spaces) of an indent written in this style."""
        tabs, spaces = indent.count("\t"), len(indent) - indent.count("\t")
        if self.tabs and tabs:
            return tabs, spaces  # spaces after tabs align, they are no level
        return tabs + spaces // (self.width or 4), spaces % (self.width or 4)

    def render(self, levels: int, rest: int) -> str:
        if self.tabs:
            return "\t" * levels + " " * rest
        return " " * (levels * (self.width or 4) + rest)

    def describe(self) -> str:
        return "tabs" if self.tabs else f"{self.width or 4} spaces per level"


def _space_width(lines: list[str]) -> int | None:
    """Spaces per level: the most common indent step that most indents are a multiple of
    (else their greatest common divisor); None outside 2-8 or with nothing indented."""
    steps: Counter = Counter()
    indents = []
    previous = None
    for line in lines:
        if not line.strip():
            continue
        lead = _leading(line)
        if "\t" in lead:
            previous = None
            continue
        if previous is not None and len(lead) > previous:
            steps[len(lead) - previous] += 1
        previous = len(lead)
        if lead:
            indents.append(len(lead))
    if not indents:
        return None
    for width, _ in sorted(steps.items(), key=lambda item: (-item[1], item[0])):
        if 2 <= width <= 8 and sum(n % width == 0 for n in indents) >= 0.8 * len(indents):
            return width
    width = math.gcd(*indents)
    return width if 2 <= width <= 8 else None


def _tabs_are_syntax(rel: str) -> bool:
    """make needs its recipe lines to start with a tab: never turn those into spaces."""
    name = rel.rsplit("/", 1)[-1].lower()
    return name in ("makefile", "gnumakefile") or name.endswith(".mk")


def _should_convert(model: _Style, file: _Style, rel: str) -> bool:
    if model.tabs and not file.tabs and _tabs_are_syntax(rel):
        return False
    if model.tabs != file.tabs:
        return True
    # two space widths: only when both are known (an unknown one is no evidence of a mismatch)
    return not model.tabs and None not in (model.width, file.width) and model.width != file.width


def _convert(line: str, model: _Style, file: _Style) -> str:
    """`line` with its indent re-written from the model's style into the file's, level by level."""
    lead = _leading(line)
    if not lead:
        return line
    return file.render(*model.parse(lead)) + line[len(lead):]


def _converted_note(model: _Style, file: _Style) -> str:
    return (f"indentation converted from {model.describe()} to {file.describe()}, "
            f"this file's style: indent with {file.describe()} here")


def _whole_lines(text: str, start: int, end: int) -> bool:
    return (start == 0 or text[start - 1] == "\n") and (
        end == len(text) or text[end - 1] == "\n" or text[end] == "\n")


def _new_in_window_style(lines: _Lines, found: list[_Match], new: str, count: int,
                         rel: str) -> tuple[list[_Match], str]:
    """Matches whose new text is re-indented to the tabs-or-spaces of the lines it replaces.

    Old matched in the file's own characters here; only a new text indented with the other
    character (spaces where the lines have tabs, or the reverse) is converted.
    """
    model = _Style.of(new.split("\n"))
    if model is None:
        return found, ""
    out, note = [], ""
    for match in found:
        window = lines.lines[match.line - 1:match.line - 1 + count]
        style = _Style.of(window) or (lines.styles or [None])[0]
        if style is None or style.tabs == model.tabs or not _should_convert(model, style, rel):
            out.append(match)
            continue
        style = _Style(style.tabs, lines.width)
        converted = "\n".join(_convert(line, model, style) for line in match.new.split("\n"))
        out.append(replace_dc(match, new=converted))
        note = "; " + _converted_note(model, style)
    return out, note


def _code_in_file_style(code: str, text: str, sym: _Symbol) -> tuple[str, str]:
    """`code` re-indented into the style of the symbol's lines (else the file's), and a note."""
    model = _Style.of(_lf(code).split("\n"))
    if model is None:
        return code, ""
    lines = _Lines(text)
    body = text[sym.start:sym.end].split("\n")[1:]
    style = _Style.of(body) or (lines.styles or [None])[0]
    if style is None:
        return code, ""
    style = _Style(style.tabs, lines.width)
    if not _should_convert(model, style, ""):
        return code, ""
    converted = "\n".join(_convert(line, model, style) for line in _lf(code).split("\n"))
    return converted, "; " + _converted_note(model, style)


# -- fuzzy tier and the no-match report


class _OutOfBudget(Exception):
    pass


def _fuzzy(lines: _Lines, old_lines: list[str], new_block: str, new: str,
           rel: str) -> tuple[str, list[_Match]]:
    try:
        scores = _similarities(lines.lines, old_lines)
    except _OutOfBudget:
        raise ToolError(
            f"old text is not in {rel} exactly (tried exact, trailing-whitespace and re-indented "
            f"matching), and comparing it with every place of a file this large for a close "
            "match would take too long. View the lines you mean and copy them exactly, or "
            "quote fewer lines."
        ) from None
    best = max(scores, key=scores.get, default=None)
    n = len(old_lines)
    if best is not None and scores[best] >= FUZZY_MIN and _fuzzy_allowed(old_lines):
        floor = scores[best] - FUZZY_MARGIN
        rivals = [i for i, s in scores.items() if abs(i - best) >= n and s > floor]
        if not rivals:
            window = lines.lines[best:best + n]
            shift = _indent_shift(window, old_lines)
            replacement = _shift_block(new_block, *shift) if shift else new_block
            label = f"fuzzy match, similarity {scores[best]:.2f}: check the diff"
            return label, [lines.span(best, n, replacement)]
        places = _numbers(i + 1 for i in sorted([best, *rivals]))
        raise ToolError(
            f"old text is not in {rel} exactly; several places are about as similar (lines "
            f"{places}). Copy the exact lines of the one you mean (view the file) and retry."
        )
    raise ToolError(_no_match_report(lines, old_lines, new, rel, best, scores.get(best)))


def _fuzzy_allowed(old_lines: list[str]) -> bool:
    return sum(len("".join(line.split())) for line in old_lines) >= FUZZY_MIN_CHARS


def _similarities(file_lines: list[str], old_lines: list[str]) -> dict[int, float]:
    """Ratio per window start, for the windows that can matter.

    Every window that might reach FUZZY_MIN - FUZZY_MARGIN is scored: those decide a fuzzy
    match. Below that only the closest window is wanted, for the hint, so windows are scored
    from the highest upper bound (``quick_ratio``) down, and only HINT_BUDGET of them.
    The work is counted in characters compared; past FUZZY_BUDGET, _OutOfBudget is raised
    while deciding windows are left (a match could not be told unique), else the hint stops.
    """
    n = len(old_lines)
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    old_text = "\n".join(_dedent(old_lines))
    matcher.set_seq2(old_text)  # seq2 is the one SequenceMatcher indexes
    spent = 0
    bounds = {}
    for first in range(len(file_lines) - n + 1):
        window = "\n".join(_dedent(file_lines[first:first + n]))
        spent += len(window) + LINE_COST * n
        if spent > FUZZY_BUDGET:
            raise _OutOfBudget
        matcher.set_seq1(window)
        if matcher.real_quick_ratio() >= HINT_MIN and (bound := matcher.quick_ratio()) >= HINT_MIN:
            bounds[first] = (bound, window)
    scores: dict[int, float] = {}
    best = 0.0
    for scored, first in enumerate(sorted(bounds, key=lambda i: -bounds[i][0])):
        bound, window = bounds[first]
        deciding = bound >= FUZZY_MIN - FUZZY_MARGIN
        if not deciding and (bound <= best or scored >= HINT_BUDGET):
            break
        # ratio() compares the two texts in blocks: charge it as several passes over both
        spent += RATIO_COST * (len(window) + len(old_text))
        if spent > FUZZY_BUDGET:
            if deciding:
                raise _OutOfBudget
            break
        matcher.set_seq1(window)
        score = matcher.ratio()
        if score >= HINT_MIN:
            scores[first] = score
            best = max(best, score)
    return scores


def _no_match_report(lines: _Lines, old_lines: list[str], new: str, rel: str,
                     best: int | None, score: float | None) -> str:
    parts = [f"old text not found in {rel} (tried exact, trailing-whitespace, re-indented and "
             "fuzzy matching)."]
    if new.strip() and new in lines.text:
        at = _line_of(lines.text, lines.text.find(new))
        parts.append(f"The new text is already there, at line {at}: was this edit already made?")
    if best is None:
        parts.append("No lines of the file resemble it.")
    else:
        first = max(best - 2, 0)
        last = min(best + len(old_lines) + 2, len(lines.lines))
        shown = "\n".join(f"{i + 1:>5} | {lines.lines[i]}" for i in range(first, last))
        parts.append(f"The closest lines (similarity {score:.2f}, lines {best + 1}-"
                     f"{best + len(old_lines)}):\n{shown}")
        if score >= FUZZY_MIN:
            parts.append("They were not replaced: old is too short to trust a fuzzy match.")
    parts.append("View the file and copy the lines to replace exactly, then retry.")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# symbols


def _symbol_site(ws: Workspace, path: str | os.PathLike,
                 symbol: str) -> tuple[Path, textfile.TextFile, _Symbol, str]:
    """The file, the definition `symbol` names, and the indentation of its first line."""
    target, file = _read_existing(ws, path)
    sym = _resolve(file.text, target, ws.relative(target), symbol)
    line_start = file.text.rfind("\n", 0, sym.start) + 1
    return target, file, sym, _leading(file.text[line_start:sym.start])


@dataclass(frozen=True)
class _Symbol:
    qualname: str
    category: str
    first: int  # 1-based line
    lines: str  # "line 3" or "lines 3-9"
    start: int  # span in the LF text: UTF-8 bytes from _symbols, characters from _resolve
    end: int


def _resolve(text: str, target: Path, rel: str, symbol: str) -> _Symbol:
    """The one definition `symbol` names, or an error listing near names or the candidates."""
    lang = language_for(target)
    if lang is None:
        raise ToolError(f"{rel} has no grammar for symbol lookup; edit it with replace instead")
    wanted = _normalize_symbol(symbol)
    symbols = _symbols(lang, text)
    found = [s for s in symbols if s.qualname == wanted]
    found = found or [s for s in symbols if s.qualname.endswith("." + wanted)]
    if len(found) == 1:
        source = text.encode()
        return replace_dc(found[0], start=len(source[:found[0].start].decode()),
                          end=len(source[:found[0].end].decode()))
    if found:
        places = "; ".join(f"{s.qualname} ({s.category}) at {s.lines}" for s in found)
        raise ToolError(
            f"{symbol} names {len(found)} definitions in {rel}: {places}. Use a qualified name, "
            "or replace with the exact text of the one you mean"
        )
    raise ToolError(f"no definition named {symbol} in {rel}. {_near_names(wanted, symbols)}")


def _normalize_symbol(symbol: str) -> str:
    """Accept other languages' spellings: ``A::b``, ``A#b``, ``(*T).M``, ``*T.M``."""
    name = symbol.strip().replace("::", ".").replace("#", ".")
    return re.sub(r"^\(?\*?(\w+)\)?\.", r"\1.", name)


def _near_names(wanted: str, symbols: list[_Symbol]) -> str:
    names = list(dict.fromkeys(s.qualname for s in symbols))
    if not names:
        return "The file defines no symbols."
    last = wanted.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(wanted, names, n=5, cutoff=0.6)
    near += [n for n in names if n.rsplit(".", 1)[-1] == last and n not in near]
    if near:
        return "Closest names: " + ", ".join(near[:5]) + "."
    shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
    return f"Defined here: {shown}."


def _symbols(lang: str, text: str) -> list[_Symbol]:
    """Definitions with qualified names, in file order; ``impl`` blocks only qualify others."""
    source = text.encode()
    receivers = _go_receivers(source) if lang == "go" else {}
    found: list[_Symbol] = []
    stack: list = []  # the definitions enclosing the current one
    for tag in (t for t in extract_tags(lang, source) if t.kind == "def"):
        while stack and stack[-1].end_byte < tag.end_byte:
            stack.pop()
        outer = [t.name for t in stack] or receivers.get(tag.start_byte, [])
        stack.append(tag)
        if tag.category == "impl":
            continue
        found.append(_Symbol(
            qualname=".".join([*outer, tag.name]),
            category=tag.category,
            first=tag.line,
            lines=_span_text(tag.line, tag.end_line),
            start=tag.start_byte,
            end=tag.end_byte,
        ))
    return found


def _go_receivers(source: bytes) -> dict[int, list[str]]:
    """Start byte of each Go method declaration -> [its receiver's type name]."""
    found = {}
    for node in parser("go").parse(source).root_node.children:
        if node.type != "method_declaration":
            continue
        name = _first_of_type(node.child_by_field_name("receiver"), "type_identifier")
        if name is not None:
            found[node.start_byte] = [name.text.decode()]
    return found


def _first_of_type(node, kind: str):
    """The first node of type `kind` in `node`'s subtree, depth first (None for no node)."""
    if node is None or node.type == kind:
        return node
    for child in node.children:
        hit = _first_of_type(child, kind)
        if hit is not None:
            return hit
    return None


def _fit_block(code: str, indent: str) -> list[str]:
    """`code`'s lines moved so that its least-indented line starts at `indent`.

    Models often copy a definition from just after its indentation: the first line at
    column 0, the rest at their original depth. That first line gets `indent` back first.
    """
    lines = [line if line.strip() else "" for line in _lf(code).split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    rest = [len(_leading(line)) for line in lines[1:] if line]
    if indent and not _leading(lines[0]) and rest and min(rest) > len(indent):
        lines[0] = indent + lines[0]
    cut = len(_common_indent(lines))
    return [indent + line[cut:] if line else "" for line in lines]
