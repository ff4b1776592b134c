import os
import subprocess
from pathlib import Path

import pytest

from loopcli.tools import view as view_module
from loopcli.tools.errors import ToolError
from loopcli.tools.view import outline, view
from loopcli.tools.workspace import Workspace

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path)


def numbered(count: int) -> str:
    return "".join(f"line {n}\n" for n in range(1, count + 1))


# ---- windows of a file ---------------------------------------------------------------------

def test_first_window_has_header_numbers_and_continue_hint(ws, tmp_path):
    write(tmp_path, "f.txt", numbered(300))
    lines = view(ws, "f.txt").split("\n")
    assert lines[0] == "f.txt (lines 1-200 of 300)"
    assert lines[1] == "  1\tline 1"
    assert lines[200] == "200\tline 200"
    assert lines[201] == "[100 more lines not shown; view with start=201 to continue]"
    assert len(lines) == 202


def test_last_window_has_no_hint(ws, tmp_path):
    write(tmp_path, "f.txt", numbered(300))
    lines = view(ws, "f.txt", start=250, limit=100).split("\n")
    assert lines[0] == "f.txt (lines 250-300 of 300)"
    assert lines[1] == "250\tline 250"
    assert lines[-1] == "300\tline 300"


def test_line_numbers_are_right_aligned_to_the_widest(ws, tmp_path):
    write(tmp_path, "f.txt", numbered(12))
    body = view(ws, "f.txt", start=8, limit=5).split("\n")[1:]
    assert body == [" 8\tline 8", " 9\tline 9", "10\tline 10", "11\tline 11", "12\tline 12"]


def test_unterminated_last_line_and_crlf(ws, tmp_path):
    write(tmp_path, "win.txt", b"one\r\ntwo\r\nthree")
    out = view(ws, "win.txt")
    assert "\r" not in out
    assert out.split("\n") == ["win.txt (lines 1-3 of 3)", "1\tone", "2\ttwo", "3\tthree"]


def test_empty_file(ws, tmp_path):
    write(tmp_path, "empty.py", "")
    assert view(ws, "empty.py") == "empty.py: empty file (0 lines)"


@pytest.mark.parametrize("start, limit, message", [
    (0, 10, "at least 1"), (-3, 10, "at least 1"), (51, 10, "past the end.*50 lines"),
    (1, 0, "limit must be at least 1"),
])
def test_bad_windows_are_refused(ws, tmp_path, start, limit, message):
    write(tmp_path, "f.txt", numbered(50))
    with pytest.raises(ToolError, match=message):
        view(ws, "f.txt", start=start, limit=limit)


def test_long_lines_are_clipped(ws, tmp_path):
    write(tmp_path, "min.js", "x" * 5000 + "END\n")
    out = view(ws, "min.js")
    assert "END" not in out
    assert "4,003 more chars" in out
    assert len(out) < view_module.MAX_LINE_CHARS + 200


def test_window_stops_at_the_output_budget_and_says_where_to_go_on(ws, tmp_path):
    write(tmp_path, "wide.txt", ("w" * 900 + "\n") * 200)
    out = view(ws, "wide.txt")
    assert len(out) <= view_module.MAX_VIEW_CHARS + 300
    shown = out.split("\n")[1:-1]
    header, footer = out.split("\n")[0], out.split("\n")[-1]
    assert header == f"wide.txt (lines 1-{len(shown)} of 200)"
    assert footer.endswith(f"start={len(shown) + 1} to continue]")


def test_missing_file_suggests_close_names(ws, tmp_path):
    write(tmp_path, "src/utils/helpers.py", "x = 1\n")
    with pytest.raises(ToolError, match="does not exist.*src/utils/helpers.py") as err:
        view(ws, "src/util/helpers.py")
    assert "Did you mean" in str(err.value)
    with pytest.raises(ToolError, match="does not exist.*find_files"):
        view(ws, "completely/unrelated/name.rs")


def test_paths_outside_are_refused(ws, tmp_path):
    with pytest.raises(ToolError, match="outside the workspace"):
        view(ws, "../../etc/passwd")


# ---- binary and huge files -------------------------------------------------------------------

def test_binary_file_is_summarised_not_dumped(ws, tmp_path):
    write(tmp_path, "img/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    out = view(ws, "img/logo.png")
    assert out.startswith("img/logo.png: binary file (image/png), 2.1 KB")
    assert "IHDR" not in out and len(out) < 300


def test_huge_file_is_summarised_with_a_bounded_window(ws, tmp_path):
    write(tmp_path, "data.csv", "".join(f"{n},{'v' * 90}\n" for n in range(1, 12_001)))
    out = view(ws, "data.csv")
    header = out.split("\n")[0]
    assert "huge text file" in header and "1.2 MB" in header and "12,000 lines" in header
    assert "showing lines 1-200" in header
    assert "\n200\t200," in out and "\n201\t" not in out
    assert len(out) < 25_000
    later = view(ws, "data.csv", start=11_999, limit=5)
    assert later.split("\n")[1:] == [f"{n}\t{n},{'v' * 90}" for n in (11_999, 12_000)]
    with pytest.raises(ToolError, match="past the end"):
        view(ws, "data.csv", start=12_001)


def test_file_with_too_many_lines_is_huge(ws, tmp_path):
    write(tmp_path, "many.txt", "a\n" * 25_000)
    assert "huge text file" in view(ws, "many.txt", limit=3).split("\n")[0]


# ---- directories -----------------------------------------------------------------------------

def test_directory_listing_respects_gitignore_and_counts_files(ws, tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=GIT_ENV, check=True)
    write(tmp_path, ".gitignore", "*.log\n")
    write(tmp_path, "src/a.py", "")
    write(tmp_path, "src/pkg/b.py", "")
    write(tmp_path, "src/pkg/deep/c.py", "")
    write(tmp_path, "src/debug.log", "")
    out = view(ws, "src")
    assert out.split("\n") == [
        "src/ (directory, 3 files; ignored files are not listed)",
        "  pkg/ (2 files)",
        "    deep/ (1 file)",
        "    b.py",
        "  a.py",
    ]


def test_big_directory_listing_is_bounded(ws, tmp_path):
    for n in range(500):
        write(tmp_path, f"many/f{n:03}.txt", "")
    out = view(ws, "many").split("\n")
    assert len(out) == view_module.MAX_DIR_ENTRIES + 2
    assert out[-1] == "[300 more entries not shown; view a subdirectory]"


def test_ignored_directory_is_listed_directly(ws, tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=GIT_ENV, check=True)
    write(tmp_path, ".gitignore", "build/\n")
    write(tmp_path, "build/out.js", "")
    write(tmp_path, "build/maps/out.js.map", "")
    out = view(ws, "build").split("\n")
    assert out[0].startswith("build/ (directory ignored by git")
    assert out[1:] == ["  maps/", "  out.js"]


# ---- outline ---------------------------------------------------------------------------------

PYTHON = '''\
import os

LIMIT = 10


@decorator
class Shape:
    """A shape."""

    def area(self, scale: float,
             offset=0) -> float:
        def helper():
            return 1
        return helper() * scale

    def name(self):
        return "shape"


def main():
    pass
'''


def test_outline_nests_methods_and_gives_line_ranges(ws, tmp_path):
    write(tmp_path, "shapes.py", PYTHON)
    assert outline(ws, "shapes.py").split("\n") == [
        "shapes.py: 6 definitions (python, 21 lines)",
        "    3  LIMIT = 10  (constant)",
        " 6-17  class Shape:  (class)",
        "10-14    def area(self, scale: float, offset=0) -> float:  (method)",
        "12-13      def helper():  (function)",
        "16-17    def name(self):  (method)",
        "20-21  def main():  (function)",
    ]


def test_outline_of_javascript(ws, tmp_path):
    source = "class App {\n  run() {\n    return 1;\n  }\n}\nfunction start() {}\n"
    write(tmp_path, "app.js", source)
    out = outline(ws, "app.js").split("\n")
    assert out[1:] == [
        "1-5  class App  (class)",
        "2-4    run()  (method)",
        "  6  function start()  (function)",
    ]


def test_outline_refusals(ws, tmp_path):
    write(tmp_path, "notes.txt", "hello\n")
    write(tmp_path, "blob.py", b"\x00\x01\x02" * 100)
    (tmp_path / "pkg").mkdir()
    with pytest.raises(ToolError, match="no parser handles .txt"):
        outline(ws, "notes.txt")
    with pytest.raises(ToolError, match="binary"):
        outline(ws, "blob.py")
    with pytest.raises(ToolError, match="directory"):
        outline(ws, "pkg")
    with pytest.raises(ToolError, match="does not exist"):
        outline(ws, "nope.py")


def test_outline_without_definitions(ws, tmp_path):
    write(tmp_path, "script.py", "print('hi')\n")
    assert outline(ws, "script.py") == "script.py: no definitions found (python, 1 line); use view"
