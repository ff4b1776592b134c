import os
import subprocess
import time
from pathlib import Path

import pytest

from loopcli.tools import search as search_module
from loopcli.tools.errors import ToolError
from loopcli.tools.search import find_files, glob_match, search
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
def project(tmp_path):
    write(tmp_path, "src/app.py", "import os\n\ndef main():\n    return compute(1)\n")
    write(tmp_path, "src/util.py", "def compute(x):\n    return x + 1  # compute it\n")
    write(tmp_path, "tests/test_app.py",
          "from src.app import main\n\ndef test_main():\n    main()\n")
    write(tmp_path, "README.md", "Call Compute() from main.\n")
    return Workspace(tmp_path)


def rows(output: str) -> list[str]:
    return [line for line in output.split("\n")[1:] if not line.startswith("[")]


def test_regex_results_are_path_line_text(project):
    out = search(project, r"def \w+\(")
    assert out.split("\n")[0] == "3 matching lines in 3 files:"
    assert rows(out) == [
        "src/app.py:3: def main():",
        "src/util.py:1: def compute(x):",
        "tests/test_app.py:3: def test_main():",
    ]


def test_a_line_is_reported_once_however_many_matches_it_has(project):
    assert rows(search(project, "compute", path="src/util.py")) == [
        "src/util.py:1: def compute(x):",
        "src/util.py:2:     return x + 1  # compute it",
    ]


def test_ignore_case_and_literal(project):
    assert rows(search(project, "compute()", literal=True, ignore_case=True)) == [
        "README.md:1: Call Compute() from main.",
    ]
    assert "README.md" not in search(project, "compute", ignore_case=False)


def test_anchors_match_at_line_boundaries_without_a_phantom_last_line(project):
    assert rows(search(project, r"^\s+return", path="src")) == [
        "src/app.py:4:     return compute(1)",
        "src/util.py:2:     return x + 1  # compute it",
    ]
    assert search(project, "^", path="src/util.py").split("\n")[0] == "2 matching lines in 1 file:"


def test_invalid_regex_names_the_error_and_suggests_literal(project):
    with pytest.raises(ToolError, match=r"invalid regex 'compute\(': missing \).*literal=True"):
        search(project, "compute(")


def test_empty_pattern_is_refused(project):
    with pytest.raises(ToolError, match="empty"):
        search(project, "")


def test_path_and_glob_narrow_the_search(project):
    assert [r.split(":")[0] for r in rows(search(project, "main", path="tests"))] == [
        "tests/test_app.py", "tests/test_app.py", "tests/test_app.py",
    ]
    assert {r.split(":")[0] for r in rows(search(project, "main", glob="*.md"))} == {"README.md"}
    in_src = rows(search(project, "main", glob="src/**/*.py"))
    assert {r.split(":")[0] for r in in_src} == {"src/app.py"}
    with pytest.raises(ToolError, match="does not exist"):
        search(project, "main", path="nope")
    with pytest.raises(ToolError, match="outside the workspace"):
        search(project, "main", path="..")


@pytest.mark.parametrize("path, pattern, expected", [
    ("src/a/b.py", "*.py", True),
    ("src/a/b.py", "b.py", True),
    ("src/a/b.py", "src/*.py", True),  # fnmatch's * crosses folders
    ("src/a/b.py", "lib/*.py", False),
    ("b.py", "**/b.py", True),
    ("src/a/b.py", "**/b.py", True),
    ("web/x.tsx", "*.{ts,tsx}", True),
    ("web/x.js", "*.{ts,tsx}", False),
    ("Makefile", "make*", False),  # case-sensitive
])
def test_glob_match(path, pattern, expected):
    assert glob_match(path, pattern) is expected


def test_gitignored_files_are_not_searched_unless_named(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=GIT_ENV, check=True)
    write(tmp_path, ".gitignore", "*.log\n")
    write(tmp_path, "kept.py", "needle = 1\n")
    write(tmp_path, "debug.log", "needle in the log\n")
    ws = Workspace(tmp_path)
    assert rows(search(ws, "needle")) == ["kept.py:1: needle = 1"]
    assert rows(search(ws, "needle", path="debug.log")) == ["debug.log:1: needle in the log"]
    assert "only files .gitignore hides" in search(ws, "needle", glob="*.log")


def test_binary_files_are_skipped_and_counted(tmp_path):
    write(tmp_path, "blob.bin", b"needle\x00\x01\x02")
    write(tmp_path, "text.txt", "needle\n")
    out = search(Workspace(tmp_path), "needle")
    assert rows(out) == ["text.txt:1: needle"]
    assert "[1 binary file not searched]" in out


def test_files_over_the_size_limit_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(search_module, "MAX_SEARCH_BYTES", 100)
    write(tmp_path, "dump.sql", "needle\n" * 50)
    out = search(Workspace(tmp_path), "needle")
    assert out.split("\n") == [
        "No matches for 'needle' in 1 file.",
        "[1 file over 100 bytes not searched: dump.sql; use the shell (grep) for them]",
    ]


def test_results_are_capped_with_counts_of_what_was_left_out(tmp_path):
    for name in ("a", "b", "c", "d"):
        write(tmp_path, f"{name}.txt", "hit\n" * 50)
    out = search(Workspace(tmp_path), "hit", max_results=60)
    assert out.split("\n")[0] == "200 matching lines in 4 files:"
    assert len(rows(out)) == 60
    assert rows(out)[-1] == "b.txt:10: hit"
    assert "[140 more matching lines not shown, 2 of the files not listed at all;" in out


def test_long_lines_are_clipped_around_the_match(tmp_path):
    write(tmp_path, "bundle.min.js", "a" * 5000 + "NEEDLE" + "b" * 5000 + "\n")
    (row,) = rows(search(Workspace(tmp_path), "NEEDLE"))
    assert "NEEDLE" in row
    assert row.startswith("bundle.min.js:1: …") and row.endswith("…")
    assert len(row) < search_module.LINE_WIDTH + 40


def test_no_matches(project):
    assert search(project, "zebra") == "No matches for 'zebra' in 4 files."


def test_a_few_thousand_files_are_searched_quickly(tmp_path):
    body = "".join(f"def function_{n}(arg):\n    return arg * {n}\n" for n in range(100))
    for n in range(2000):
        write(tmp_path, f"pkg{n % 20}/mod{n}.py", body)
    write(tmp_path, "pkg0/target.py", "special_marker = 1\n")
    ws = Workspace(tmp_path)
    started = time.perf_counter()
    assert rows(search(ws, r"special_\w+")) == ["pkg0/target.py:1: special_marker = 1"]
    assert time.perf_counter() - started < 5


# ---- find_files ------------------------------------------------------------------------------

def test_find_files_by_glob(project):
    assert find_files(project, "test_*.py").split("\n") == [
        "1 file matching 'test_*.py':", "tests/test_app.py",
    ]


def test_find_files_by_substring_puts_name_matches_first(tmp_path):
    for rel in ("app/models/user.py", "user/__init__.py", "docs/Users.md", "other.py"):
        write(tmp_path, rel, "")
    assert find_files(Workspace(tmp_path), "user").split("\n") == [
        "3 files matching 'user':", "app/models/user.py", "docs/Users.md", "user/__init__.py",
    ]


def test_find_files_cap_and_nothing_found(tmp_path):
    for n in range(30):
        write(tmp_path, f"f{n:02}.txt", "")
    ws = Workspace(tmp_path)
    out = find_files(ws, "*.txt", max_results=10).split("\n")
    assert out[0] == "30 files matching '*.txt':" and len(out) == 12
    assert out[-1] == "[20 more not shown; use a more specific pattern]"
    assert find_files(ws, "*.rs") == "No files match '*.rs' (30 files in the project)."
    with pytest.raises(ToolError):
        find_files(ws, "")


# --- bounded work (issue 8, item 6) --------------------------------------------------------


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$"])
def test_a_pattern_that_backtracks_forever_is_stopped_with_a_clear_message(
        tmp_path, monkeypatch, pattern):
    # 2**5000 ways to split the a's before giving up on the final "b": no budget is enough
    monkeypatch.setattr(search_module, "SEARCH_SECONDS", 0.5)
    write(tmp_path, "a.txt", "x = 1\n" + "a" * 5000 + "b\n")
    with pytest.raises(ToolError) as err:
        search(Workspace(tmp_path), pattern)
    message = str(err.value)
    assert f"the regex {pattern!r} took more than 0.5 s of matching and was stopped" in message
    assert "backtracks" in message and "literal=True" in message


def test_the_time_budget_is_for_the_whole_search(tmp_path, monkeypatch):
    monkeypatch.setattr(search_module, "SEARCH_SECONDS", 0.5)
    for i in range(4):
        write(tmp_path, f"a{i}.txt", "a" * 5000 + "b\n")
    with pytest.raises(ToolError, match="stopped"):
        search(Workspace(tmp_path), r"(a|aa)+$")
