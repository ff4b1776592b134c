"""Edits keep the file's own indentation (issue 15), and Python edits must still compile.

Each case edits a file twice: once with old/new (or code) in the file's own style, once with
the style a model often sends instead (spaces for tabs, 4 spaces for 2, tabs for spaces); the
two results must be the same bytes.
"""

from __future__ import annotations

import pytest

from loopcli.tools import edit
from loopcli.tools.errors import ToolError
from loopcli.tools.workspace import Workspace

TAB_PY = (
    "class Shop:\n"
    "\tdef total(self, items):\n"
    "\t\tsum = 0\n"
    "\t\tfor item in items:\n"
    "\t\t\tsum += item.price\n"
    "\t\treturn sum\n"
    "\n"
    "\tdef count(self, items):\n"
    "\t\treturn len(items)\n"
)

JS2 = (
    "class Cart {\n"
    "  constructor() {\n"
    "    this.items = [];\n"
    "  }\n"
    "\n"
    "  add(item) {\n"
    "    if (item) {\n"
    "      this.items.push(item);\n"
    "    }\n"
    "  }\n"
    "}\n"
)

PY4 = (
    "def load(path):\n"
    "    with open(path) as f:\n"
    "        for line in f:\n"
    "            yield line.strip()\n"
    "\n"
    "\n"
    "def save(path, lines):\n"
    "    with open(path, 'w') as f:\n"
    "        f.write('\\n'.join(lines))\n"
)

MAKEFILE = (
    "CC = cc\n"
    "OBJS = main.o \\\n"
    "    util.o\n"
    "\n"
    "app: $(OBJS)\n"
    "\t$(CC) -o app $(OBJS)\n"
    "\n"
    "clean:\n"
    "\trm -f app $(OBJS)\n"
)


def spaces(text: str, width: int = 4) -> str:
    """`text` with each leading tab turned into `width` spaces: how a model often quotes it."""
    out = []
    for line in text.split("\n"):
        body = line.lstrip("\t")
        out.append(" " * width * (len(line) - len(body)) + body)
    return "\n".join(out)


def rewidth(text: str, old: int, new: int) -> str:
    """`text` re-indented from `old` to `new` spaces per level."""
    out = []
    for line in text.split("\n"):
        body = line.lstrip(" ")
        out.append(" " * ((len(line) - len(body)) // old * new) + body)
    return "\n".join(out)


def tabs(text: str, width: int = 4) -> str:
    out = []
    for line in text.split("\n"):
        body = line.lstrip(" ")
        out.append("\t" * ((len(line) - len(body)) // width) + body)
    return "\n".join(out)


def edited(tmp_path, name, text, call, *args):
    """The bytes of `name` (holding `text`) after edit.`call`(*args), and the reply."""
    folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / name).write_text(text)
    reply = getattr(edit, call)(Workspace(folder), name, *args)
    return (folder / name).read_bytes(), reply


def same_as_correct(tmp_path, name, text, call, right_args, wrong_args):
    """The wrong-style edit writes exactly what the right-style one does; returns its reply."""
    right, right_reply = edited(tmp_path, name, text, call, *right_args)
    wrong, wrong_reply = edited(tmp_path, name, text, call, *wrong_args)
    assert right != text.encode()
    assert wrong == right
    assert "indentation converted" not in right_reply
    return wrong_reply


# --- replace -------------------------------------------------------------------------------

TAB_OLD = "\t\tfor item in items:\n\t\t\tsum += item.price\n"
TAB_NEW = "\t\tfor item in items:\n\t\t\tif item.price:\n\t\t\t\tsum += item.price\n"


@pytest.mark.parametrize("width", [4, 8, 2])
def test_tab_python_replace_with_spaces(tmp_path, width):
    reply = same_as_correct(tmp_path, "shop.py", TAB_PY, "replace", (TAB_OLD, TAB_NEW),
                            (spaces(TAB_OLD, width), spaces(TAB_NEW, width)))
    assert f"indentation converted from {width} spaces per level to tabs" in reply


def test_tab_python_one_line_eight_spaces_for_two_tabs(tmp_path):
    # the case: the fuzzy tier said "similarity 1.00" and wrote the spaces
    reply = same_as_correct(tmp_path, "shop.py", TAB_PY, "replace",
                            ("\t\treturn sum\n", "\t\treturn round(sum, 2)\n"),
                            ("        return sum\n", "        return round(sum, 2)\n"))
    assert "fuzzy" not in reply and "to tabs" in reply


def test_tab_python_dedented_quote_with_spaces(tmp_path):
    # quoted without the block's indentation and with spaces inside: offset and style both
    same_as_correct(tmp_path, "shop.py", TAB_PY, "replace", (TAB_OLD, TAB_NEW),
                    (spaces(TAB_OLD).replace("        ", "", 1).replace("\n        ", "\n"),
                     spaces(TAB_NEW).replace("        ", "", 1).replace("\n        ", "\n")))


def test_tab_python_fuzzy_match_with_spaces(tmp_path):
    right_old = "\t\tsum = 0\n\t\tfor item in items:\n\t\t\tsum += item.price\n"
    new = "\t\tsum = 0\n\t\tfor item in items:\n\t\t\tsum += item.cost\n"
    wrong_old = spaces(right_old).replace("sum = 0", "sum = 0  # start")  # a misquote
    reply = same_as_correct(tmp_path, "shop.py", TAB_PY, "replace", (right_old, new),
                            (wrong_old, spaces(new)))
    assert "fuzzy match" in reply and "to tabs" in reply


def test_trailing_whitespace_and_wrong_style_together(tmp_path):
    text = TAB_PY.replace("\t\tsum = 0\n", "\t\tsum = 0   \n")
    old = "\t\tsum = 0\n\t\tfor item in items:\n"
    new = "\t\tsum = 0\n\t\tfor item in sorted(items):\n"
    same_as_correct(tmp_path, "shop.py", text, "replace", (old, new), (spaces(old), spaces(new)))


def test_js_two_spaces_replace_with_four(tmp_path):
    old = "    if (item) {\n      this.items.push(item);\n    }\n"
    new = "    if (item && item.id) {\n      this.items.push(item);\n      this.count += 1;\n    }\n"
    reply = same_as_correct(tmp_path, "cart.js", JS2, "replace", (old, new),
                            (rewidth(old, 2, 4), rewidth(new, 2, 4)))
    assert "from 4 spaces per level to 2 spaces per level" in reply


def test_python_four_spaces_replace_with_tabs_or_two_spaces(tmp_path):
    old = "        for line in f:\n            yield line.strip()\n"
    new = "        for line in f:\n            if line.strip():\n                yield line.strip()\n"
    same_as_correct(tmp_path, "io.py", PY4, "replace", (old, new), (tabs(old), tabs(new)))
    same_as_correct(tmp_path, "io.py", PY4, "replace", (old, new),
                    (rewidth(old, 4, 2), rewidth(new, 4, 2)))


def test_makefile_recipe_gets_its_tab_back(tmp_path):
    old = "app: $(OBJS)\n\t$(CC) -o app $(OBJS)\n"
    new = "app: $(OBJS)\n\t$(CC) -O2 -o app $(OBJS)\n\tstrip app\n"
    reply = same_as_correct(tmp_path, "Makefile", MAKEFILE, "replace", (old, new),
                            (spaces(old), spaces(new)))
    assert "to tabs" in reply


def test_makefile_recipe_added_with_spaces_after_an_exact_match(tmp_path):
    # old copied exactly (no indentation in it), new indented with spaces: make needs the tab
    same_as_correct(tmp_path, "Makefile", MAKEFILE, "replace",
                    ("clean:\n\trm -f app $(OBJS)\n", "clean:\n\trm -f app $(OBJS)\n\trm -rf build\n"),
                    ("clean:\n\trm -f app $(OBJS)\n", "clean:\n    rm -f app $(OBJS)\n    rm -rf build\n"))


def test_makefile_tab_recipe_is_never_turned_into_spaces(tmp_path):
    # the replaced lines indent with spaces, but a recipe line written with a tab stays a tab
    old = "OBJS = main.o \\\n    util.o\n"
    new = "OBJS = main.o \\\n    util.o\n\nall:\n\t$(MAKE) app\n"
    data, _ = edited(tmp_path, "Makefile", MAKEFILE, "replace", old, new)
    assert b"\nall:\n\t$(MAKE) app\n" in data


def test_mixed_file_keeps_the_style_of_the_replaced_lines(tmp_path):
    text = ("def a():\n"
            "    if True:\n"
            "        return 1\n"
            "\n"
            "\n"
            "def b():\n"
            "\tif True:\n"
            "\t\treturn 2\n")
    old_b = "\tif True:\n\t\treturn 2\n"
    new_b = "\tif False:\n\t\treturn 3\n"
    # b() indents with tabs although most of the file uses spaces
    same_as_correct(tmp_path, "m.py", text, "replace", (old_b, new_b),
                    (spaces(old_b), spaces(new_b)))
    old_a = "    if True:\n        return 1\n"
    new_a = "    if False:\n        return 0\n"
    same_as_correct(tmp_path, "m.py", text, "replace", (old_a, new_a), (tabs(old_a), tabs(new_a)))


def test_right_style_edits_are_not_converted(tmp_path):
    _, reply = edited(tmp_path, "shop.py", TAB_PY, "replace", TAB_OLD, TAB_NEW)
    assert "exact match" in reply and "converted" not in reply


# --- symbol edits --------------------------------------------------------------------------


def test_tab_python_symbol_edits_with_spaces(tmp_path):
    code = "def count(self, items):\n\tif not items:\n\t\treturn 0\n\treturn len(items)\n"
    reply = same_as_correct(tmp_path, "shop.py", TAB_PY, "replace_symbol",
                            ("Shop.count", code), ("Shop.count", spaces(code)))
    assert "to tabs" in reply
    code = "def mean(self, items):\n\tif not items:\n\t\treturn 0\n\treturn self.total(items) / len(items)"
    same_as_correct(tmp_path, "shop.py", TAB_PY, "insert_after_symbol",
                    ("Shop.total", code), ("Shop.total", spaces(code)))
    # the code quoted at the method's depth (4 spaces in), as copied from a spaces rendering
    same_as_correct(tmp_path, "shop.py", TAB_PY, "insert_after_symbol",
                    ("Shop.total", code), ("Shop.total", "    " + spaces(code).replace("\n", "\n    ")))


def test_js_two_spaces_symbol_edits_with_four(tmp_path):
    code = "add(item) {\n  if (!item) {\n    return;\n  }\n  this.items.push(item);\n}"
    reply = same_as_correct(tmp_path, "cart.js", JS2, "replace_symbol",
                            ("Cart.add", code), ("Cart.add", rewidth(code, 2, 4)))
    assert "to 2 spaces per level" in reply
    code = "clear() {\n  for (const item of this.items) {\n    item.drop();\n  }\n  this.items = [];\n}"
    same_as_correct(tmp_path, "cart.js", JS2, "insert_after_symbol",
                    ("Cart.add", code), ("Cart.add", rewidth(code, 2, 4)))


def test_python_four_spaces_symbol_edits_with_tabs(tmp_path):
    code = "def save(path, lines):\n    with open(path, 'w') as f:\n        for line in lines:\n            f.write(line)\n"
    same_as_correct(tmp_path, "io.py", PY4, "replace_symbol", ("save", code), ("save", tabs(code)))
    code = "def count(path):\n    return sum(1 for _ in load(path))\n"
    same_as_correct(tmp_path, "io.py", PY4, "insert_after_symbol",
                    ("load", code), ("load", tabs(code)))


# --- Python must still compile -------------------------------------------------------------


def test_edit_that_leaves_a_tab_error_is_refused_with_line_and_reason(tmp_path):
    text = "def f(x):\n\tif x:\n\t\treturn 1\n\treturn 2\n"
    path = tmp_path / "f.py"
    path.write_text(text)
    with pytest.raises(ToolError) as err:
        # inside a line, so no tier converts: 8 spaces after a tab line is Python's TabError
        edit.replace(Workspace(tmp_path), "f.py", "return 2", "return 2\n        pass")
    message = str(err.value)
    assert "nothing written" in message and "TabError at line 5" in message
    assert "inconsistent use of tabs and spaces" in message
    assert path.read_text() == text


def test_edit_that_tree_sitter_accepts_but_python_rejects_is_refused(tmp_path):
    path = tmp_path / "g.py"
    path.write_text("def g():\n    return 1\n")
    with pytest.raises(ToolError, match=r"SyntaxError at line 3: 'return' outside function"):
        edit.replace(Workspace(tmp_path), "g.py", "    return 1\n", "    return 1\nreturn 2\n")
    assert path.read_text() == "def g():\n    return 1\n"


def test_file_that_did_not_compile_before_is_not_blocked(tmp_path):
    path = tmp_path / "old.py"
    path.write_text("def g():\n    return 1\nreturn 0\n")  # tree-sitter accepts it; Python not
    edit.replace(Workspace(tmp_path), "old.py", "return 1", "return 2")
    assert path.read_text() == "def g():\n    return 2\nreturn 0\n"


def test_symbol_edit_that_breaks_compilation_is_refused(tmp_path):
    path = tmp_path / "shop.py"
    path.write_text(TAB_PY)
    with pytest.raises(ToolError, match="Python cannot compile"):
        edit.replace_symbol(Workspace(tmp_path), "shop.py", "Shop.count",
                            "def count(self, items):\n\treturn len(items)\nreturn 0")
    assert path.read_text() == TAB_PY


def test_new_python_files_are_checked_by_tree_sitter_only(tmp_path):
    # no original to compare with: compile() is skipped (tree-sitter still gates the syntax)
    edit.write(Workspace(tmp_path), "new.py", "def g():\n    return 1\nreturn 2\n")
    assert (tmp_path / "new.py").read_text() == "def g():\n    return 1\nreturn 2\n"
