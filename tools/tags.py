"""Definition and reference tags of a source file, from our tree-sitter queries.

Each language has a query in ``queries/<lang>.scm`` (tsx uses typescript's) with
aider's capture convention:

- ``@name.definition.<category>`` names a definition and ``@definition.<category>``
  is the whole definition node (class with its body, function with its body);
- ``@name.reference.<category>`` is a referenced name (a call, a type, a base class).

Categories of definitions: class, struct, enum, interface, trait, impl (Rust), module,
type, function, method, constant, macro, property. Of references: call, class, type,
implementation.

When two patterns capture the same name node, the earlier pattern in the file wins,
which is how the queries prefer ``method`` (a function directly in a class body) over
``function``. Definition byte ranges cover the whole definition, so names can be
qualified by containment (``Class.method``). For Python a decorated definition's range
is the ``decorated_definition`` node, decorators included; in JS/TS an enclosing
``export`` stays outside the range.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from tree_sitter import Node, Query, QueryCursor

from .languages import grammar, parser

_QUERY_FILES = {"tsx": "typescript"}

# Nodes that precede a definition's own first line: the signature starts after them.
_DECORATIONS = frozenset({
    "decorator", "attribute_list", "annotation", "marker_annotation",
    "comment", "line_comment", "block_comment",
})
# Nodes between a header and its body that are no part of the header (ERROR: the
# span a parse error swallowed, possibly hundreds of lines).
_NOT_HEADER = frozenset({"comment", "line_comment", "block_comment", "ERROR"})
# How far to look through wrappers (decorated_definition, export, template,
# lexical_declaration -> declarator -> arrow function) for the body.
_BODY_SEARCH_DEPTH = 4
_WRAPPER_FIELDS = ("definition", "declaration", "value")


@dataclass(frozen=True)
class Tag:
    name: str
    kind: str  # 'def' | 'ref'
    category: str
    line: int  # 1-based, of the whole definition node (refs: the name node)
    end_line: int
    start_byte: int
    end_byte: int
    signature: str  # defs: the definition's header up to its body, stripped; refs: ''


# A definition as scanned: (name, category, line, end_line, start_byte, end_byte,
# signature, indent). `indent` is the leading whitespace of the signature's first
# line, which the repo map uses to render signatures as they appear in the file.
RawDef = tuple[str, str, int, int, int, int, str, str]
# A reference as scanned: (name, category, line, end_line, start_byte, end_byte).
RawRef = tuple[str, str, int, int, int, int]


@functools.cache
def query(lang: str) -> Query:
    """The compiled tags query of a language (compiled once per process)."""
    name = _QUERY_FILES.get(lang, lang)
    text = resources.files(__package__).joinpath("queries", f"{name}.scm").read_text()
    return Query(grammar(lang), text)


def extract_tags(lang: str, source: bytes) -> list[Tag]:
    """All definition and reference tags of `source`, definitions first, each in file order."""
    defs, refs = scan(lang, source)
    tags = [Tag(d[0], "def", d[1], *d[2:6], signature=d[6]) for d in defs]
    tags += [Tag(r[0], "ref", r[1], *r[2:6], signature="") for r in refs]
    return tags


def scan(lang: str, source: bytes) -> tuple[list[RawDef], list[RawRef]]:
    """Definitions and references as plain tuples (cheaper than Tags for big trees).

    Definitions are sorted by start, an enclosing definition before those inside it.
    """
    tree = parser(lang).parse(source)
    defs: dict[int, tuple[int, Node, Node, str]] = {}
    refs: dict[int, tuple[int, Node, str]] = {}
    for pattern, captures in QueryCursor(query(lang)).matches(tree.root_node):
        for capture, nodes in captures.items():
            if capture.startswith("name.definition."):
                category = capture[len("name.definition."):]
                whole = captures.get("definition." + category, nodes)[0]
                for node in nodes:
                    _keep_first(defs, node.start_byte, (pattern, node, whole, category))
            elif capture.startswith("name.reference."):
                category = capture[len("name.reference."):]
                for node in nodes:
                    _keep_first(refs, node.start_byte, (pattern, node, category))
    raw_defs = sorted(
        (_def_tuple(source, name, whole, category) for _, name, whole, category in defs.values()),
        key=lambda d: (d[4], -d[5]),
    )
    raw_refs = [
        (_text(name), category, name.start_point.row + 1, name.end_point.row + 1,
         name.start_byte, name.end_byte)
        for start, (_, name, category) in refs.items()
        if start not in defs  # a definition's own name is not a reference to it
    ]
    raw_refs.sort(key=lambda r: r[4])
    return raw_defs, raw_refs


def _keep_first(found: dict, key: int, entry: tuple) -> None:
    """Keep, per name node, the capture of the earliest pattern in the query file."""
    current = found.get(key)
    if current is None or entry[0] < current[0]:
        found[key] = entry


def _text(node: Node) -> str:
    return node.text.decode("utf-8", errors="replace")


def _def_tuple(source: bytes, name: Node, whole: Node, category: str) -> RawDef:
    start = _signature_start(whole)
    line_start = source.rfind(b"\n", 0, start) + 1
    indent = source[line_start:start]
    indent = indent[: len(indent) - len(indent.lstrip())].decode("utf-8", errors="replace")
    return (
        _text(name), category, whole.start_point.row + 1, _end_line(whole),
        whole.start_byte, whole.end_byte, _signature(source, whole, start), indent,
    )


def _end_line(node: Node) -> int:
    """1-based last line; a node ending with its newline (`#define`) ends on the line before."""
    end = node.end_point
    return end.row if end.column == 0 and end.row > node.start_point.row else end.row + 1


def _signature_start(node: Node) -> int:
    """Where the definition's own text starts: after decorators, attributes, annotations."""
    start = _first_undecorated(node)
    return node.start_byte if start is None else start


def _first_undecorated(node: Node) -> int | None:
    for child in node.children:
        if child.type in _DECORATIONS:
            continue
        if child.type == "modifiers":  # Java keeps annotations among the modifiers
            inner = _first_undecorated(child)
            if inner is None:
                continue
            return inner
        return child.start_byte
    return None


def _signature(source: bytes, whole: Node, start: int) -> str:
    """The header up to the body; without a body (constant, prototype), the first line."""
    body = _find_body(whole)
    if body is not None and body.start_byte > start:
        end = _header_end(body)
        return source[start:end].decode("utf-8", errors="replace").strip()
    text = source[start:whole.end_byte]
    return text.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()


def _find_body(node: Node) -> Node | None:
    for _ in range(_BODY_SEARCH_DEPTH):
        body = node.child_by_field_name("body")
        if body is not None:
            return body
        inner = next(
            (c for f in _WRAPPER_FIELDS if (c := node.child_by_field_name(f)) is not None),
            None,
        )
        if inner is None and node.named_child_count:
            inner = node.named_child(node.named_child_count - 1)
        if inner is None:
            return None
        node = inner
    return None


def _header_end(body: Node) -> int:
    """End of the last token before the body, skipping comments and errors between the two."""
    before = body.prev_sibling
    while before is not None and before.type in _NOT_HEADER:
        before = before.prev_sibling
    return body.start_byte if before is None else before.end_byte
