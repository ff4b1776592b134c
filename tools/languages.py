"""Which tree-sitter grammar parses which file; grammars come from the per-language wheels.

The wheels bundle their parsers, so nothing is downloaded at run time (unlike
tree-sitter-language-pack 1.x).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from tree_sitter import Language, Parser

# language name -> (module, function returning the grammar)
_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "ruby": ("tree_sitter_ruby", "language"),
    "c_sharp": ("tree_sitter_c_sharp", "language"),
}

_EXTENSIONS = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".rb": "ruby",
    ".cs": "c_sharp",
}


def language_for(path: str | Path) -> str | None:
    """The language name for a file path, or None when no grammar handles it."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


@functools.cache
def grammar(name: str) -> Language:
    module, func = _GRAMMARS[name]
    return Language(getattr(importlib.import_module(module), func)())


def parser(name: str) -> Parser:
    """A fresh parser (parsers are not thread-safe, grammars are cached)."""
    return Parser(grammar(name))
