"""Toolbox: schemas, argument checking and coercion, checkpoint-before-mutation, undo stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopcli.tools.toolbox import TOOLS, ArgumentError, Toolbox, check_arguments

# The developer's own git config must not leak into the repositories the tests build.
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
TOOL_NAMES = ["view", "outline", "search", "find_files", "replace", "write", "replace_symbol",
              "insert_after_symbol", "shell", "undo", "diff"]
CALC = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, env=GIT_ENV, capture_output=True, check=True,
    )
    return proc.stdout.decode()


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file outside .git, by root-relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def dir_bytes(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    put(root / "pkg" / "calc.py", CALC)
    put(root / "README.md", "# calc\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    return root


@pytest.fixture
def box(project: Path, tmp_path: Path) -> Toolbox:
    return Toolbox(project, store_dir=tmp_path / "store", shell_timeout=30)


# ---- schemas --------------------------------------------------------------------------------


def test_schemas_are_openai_function_definitions(box):
    schemas = box.schemas()
    assert [s["function"]["name"] for s in schemas] == TOOL_NAMES
    for schema in schemas:
        assert json.loads(json.dumps(schema)) == schema  # plain JSON, sendable as is
        assert set(schema) == {"type", "function"} and schema["type"] == "function"
        function = schema["function"]
        assert set(function) == {"name", "description", "parameters"}
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", function["name"])
        assert 40 < len(function["description"]) < 700, function["name"]
        params = function["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert set(params["required"]) <= set(params["properties"])
        for key, spec in params["properties"].items():
            assert spec["type"] in {"string", "integer", "boolean"}, key
            assert spec["description"], key


def test_table_marks_the_tools_that_change_files():
    mutating = {tool.name for tool in TOOLS if tool.mutates}
    assert mutating == {"replace", "write", "replace_symbol", "insert_after_symbol", "shell",
                        "undo"}


# ---- every tool with typical arguments -----------------------------------------------------

TYPICAL = [
    ("view", {"path": "pkg/calc.py", "start": 2, "limit": 1}, "2\t    return a + b", None),
    ("view", {"path": "."}, "pkg/", None),
    ("outline", {"path": "pkg/calc.py"}, "def mul(a, b):", None),
    ("search", {"pattern": "a * b", "literal": True, "glob": "*.py"}, "pkg/calc.py:6:", None),
    ("search", {"pattern": r"^def \w+", "path": "pkg"}, "2 matching lines", None),
    ("find_files", {"pattern": "calc"}, "pkg/calc.py", None),
    ("replace", {"path": "pkg/calc.py", "old": "return a + b", "new": "return b + a"},
     "Edited pkg/calc.py", ("pkg/calc.py", "    return b + a\n")),
    ("write", {"path": "docs/new.md", "content": "hello\n"}, "Created docs/new.md",
     ("docs/new.md", "hello\n")),
    ("replace_symbol", {"path": "pkg/calc.py", "symbol": "mul", "code": "def mul(a, b):\n"
                        "    return b * a\n"}, "replaced mul", ("pkg/calc.py", "return b * a")),
    ("insert_after_symbol", {"path": "pkg/calc.py", "symbol": "add", "code": "def sub(a, b):\n"
                             "    return a - b\n"}, "after add", ("pkg/calc.py", "def sub(a, b)")),
    ("shell", {"command": "echo hi > out.txt && cat out.txt", "timeout": 20}, "hi\n[exit code 0]",
     ("out.txt", "hi\n")),
]


@pytest.mark.parametrize("name, args, shown, effect", TYPICAL, ids=[t[0] for t in TYPICAL])
def test_each_tool_runs_with_typical_arguments(box, project, name, args, shown, effect):
    result = box.call(name, args)
    assert result.ok, result.output
    assert shown in result.output
    assert result.mutated == (effect is not None)
    if effect:
        path, text = effect
        assert text in (project / path).read_text()
        assert box.checkpoints.list()[-1].label.startswith(f"{name}: ")
    else:
        assert box.checkpoints.list() == []  # reading takes no checkpoint


def test_undo_and_diff(box, project):
    original = tree_bytes(project)
    assert not box.call("diff").ok  # nothing recorded yet
    assert box.call("replace", {"path": "pkg/calc.py", "old": "a + b", "new": "a - b"}).ok
    assert box.call("shell", {"command": "rm README.md"}).ok
    diff = box.call("diff", {})
    assert diff.ok and not diff.mutated
    assert "-    return a + b\n+    return a - b" in diff.output
    assert "deleted file mode" in diff.output and "README.md" in diff.output

    first = box.call("undo", "")
    assert first.ok and first.mutated and "README.md" in first.output
    assert (project / "README.md").exists() and "a - b" in (project / "pkg/calc.py").read_text()
    assert box.call("undo").ok
    assert tree_bytes(project) == original
    again = box.call("undo")
    assert not again.ok and "nothing to undo" in again.output
    assert box.call("diff").output.startswith("No changes")


def test_checkpoint_labels_name_the_call(box):
    box.call("write", {"path": "x.txt", "content": "x\n"})
    box.call("shell", {"command": "echo   a\n  >> x.txt"})
    labels = [snap.label for snap in box.checkpoints.list()]
    assert labels == ["write: x.txt", "shell: echo a >> x.txt"]


def test_failing_command_is_not_ok_but_may_have_changed_files(box, project):
    result = box.call("shell", {"command": "touch made.txt; exit 3"})
    assert not result.ok and result.mutated
    assert "[exit code 3]" in result.output and (project / "made.txt").exists()


def test_tool_errors_come_back_as_messages(box, project):
    before = tree_bytes(project)
    result = box.call("replace", {"path": "pkg/calc.py", "old": "return a / b", "new": "x"})
    assert not result.ok and not result.mutated
    assert result.output.startswith("replace failed: ")
    assert not box.call("view", {"path": "pkg/nope.py"}).ok
    assert not box.call("view", {"path": "bad\0name"}).ok
    refused = box.call("shell", {"command": "vim pkg/calc.py"})
    assert not refused.ok and "editor" in refused.output
    assert tree_bytes(project) == before


def test_unknown_tool_lists_the_tools(box):
    result = box.call("veiw", {"path": "x"})
    assert not result.ok and not result.mutated
    assert "Unknown tool 'veiw'" in result.output and "Did you mean view?" in result.output
    assert all(name in result.output for name in TOOL_NAMES)


# ---- argument checking ----------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("replace", {"path": "pkg/calc.py", "new": "y"}, "missing required argument 'old'"),
    ("replace", {"path": "pkg/calc.py", "old": None, "new": "y"}, "'old' is required"),
    ("view", {"path": "pkg/calc.py", "start": "abc"}, "argument 'start' must be an integer"),
    ("view", {"path": "pkg/calc.py", "limit": True}, "argument 'limit' must be an integer"),
    ("view", {"path": "pkg/calc.py", "start": 2.5}, "argument 'start' must be an integer"),
    ("view", {"path": "pkg/calc.py", "start": 0}, "argument 'start' must be at least 1"),
    ("search", {"pattern": ["a", "b"]}, "argument 'pattern' must be a string"),
    ("write", {"path": "n.txt", "content": "x", "overwrite": "maybe"},
     "argument 'overwrite' must be true or false"),
    ("view", {"path": "pkg/calc.py", "line": 3}, "unknown argument 'line'"),
    ("view", {"file_path": "pkg/calc.py"}, "unknown argument 'file_path' (did you mean 'path'?)"),
    ("undo", {"steps": 2}, "unknown argument 'steps'"),
    ("view", '{"path": "pkg/calc.py", ', "not valid JSON"),
    ("view", "[1, 2]", "must be a JSON object"),
]


@pytest.mark.parametrize("name, args, problem", BAD_ARGUMENTS)
def test_argument_errors_name_the_argument_and_the_form(box, project, name, args, problem):
    before = tree_bytes(project)
    result = box.call(name, args)
    assert not result.ok and not result.mutated
    assert result.output.startswith(f"{name}: invalid arguments: ")
    assert problem in result.output
    assert f"Expected: {name}(" in result.output
    assert box.checkpoints.list() == []  # nothing ran, so nothing to undo
    assert tree_bytes(project) == before


def test_every_problem_is_reported_at_once(box):
    output = box.call("replace", {"path": 3, "all": "x", "extra": 1}).output
    for part in ("'path' must be a string", "'all' must be true or false",
                 "unknown argument 'extra'", "missing required argument 'old'",
                 "missing required argument 'new'",
                 "Expected: replace(path: string, old: string, new: string, all?: boolean)"):
        assert part in output


def tool(name: str):
    return next(t for t in TOOLS if t.name == name)


@pytest.mark.parametrize("raw, coerced", [
    ({"pattern": "x", "literal": "true", "ignore_case": "0"}, {"literal": True,
                                                                "ignore_case": False}),
    ({"pattern": "x", "literal": "Yes", "ignore_case": 1}, {"literal": True, "ignore_case": True}),
    ({"pattern": "x", "literal": " FALSE "}, {"literal": False}),
    ({"pattern": "x", "path": None, "glob": None}, {}),  # null optional arguments are absent
])
def test_boolean_strings_are_coerced(raw, coerced):
    assert check_arguments(tool("search"), raw) == {"pattern": "x", **coerced}


@pytest.mark.parametrize("raw, start, limit", [
    ({"start": "3", "limit": " 10 "}, 3, 10),
    ({"start": 4.0, "limit": "+2"}, 4, 2),
])
def test_integer_strings_are_coerced(raw, start, limit):
    assert check_arguments(tool("view"), {"path": "p", **raw}) == {
        "path": "p", "start": start, "limit": limit}


def test_json_string_arguments_are_parsed(box, project):
    shown = box.call("view", '{"path": "pkg/calc.py", "start": "5", "limit": "1"}')
    assert shown.ok and "\n5\tdef mul(a, b):\n[1 more lines" in shown.output
    doubled = json.dumps(json.dumps({"path": "pkg/calc.py", "old": "a", "new": "x", "all": "1"}))
    assert box.call("replace", doubled).ok  # double-encoded, and "1" for all=true
    assert (project / "pkg/calc.py").read_text() == CALC.replace("a", "x")


def test_check_arguments_raises_argument_error():
    with pytest.raises(ArgumentError, match="missing required argument 'command'"):
        check_arguments(tool("shell"), {})


# ---- .git is off limits ---------------------------------------------------------------------


def test_tools_never_write_inside_git(box, project):
    git_dir = dir_bytes(project / ".git")
    for name, args in [
        ("write", {"path": ".git/config", "content": "[core]\n", "overwrite": True}),
        ("write", {"path": ".git/hooks/pre-commit", "content": "exit 1\n"}),
        ("replace", {"path": ".git/HEAD", "old": "main", "new": "evil"}),
        ("write", {"path": "pkg/../.git/config", "content": "x", "overwrite": True}),
        ("write", {"path": "../outside.txt", "content": "x"}),
    ]:
        result = box.call(name, args)
        assert not result.ok and not result.mutated, (name, args)
    assert "inside .git" in box.call("write", {"path": ".git/config", "content": ""}).output
    assert dir_bytes(project / ".git") == git_dir
    assert not (project.parent / "outside.txt").exists()


# ---- property: undo walks back through any mix of calls -----------------------------------

CANDIDATES = ["a.txt", "src/m.py", "notes.md", "c.txt", "d/e.txt"]
CONTENTS = ["value = 1\n", "print('hi')\n", "# note\n"]


def make_user_repo(root: Path) -> None:
    """History, a branch, a stash entry, staged, modified, untracked and ignored files."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    put(root / ".gitignore", "*.log\n")
    put(root / "a.txt", "line one\n")
    put(root / "src" / "m.py", "def f():\n    return 1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    put(root / "a.txt", "line one\nline two\n")
    git(root, "commit", "-q", "-am", "two")
    git(root, "branch", "feature")
    put(root / "src" / "m.py", "def f():\n    return 2\n")
    git(root, "stash", "-q")
    put(root / "a.txt", "staged\n")
    git(root, "add", "a.txt")
    put(root / "src" / "m.py", "def f():\n    return 3\n")
    put(root / "notes.md", "untracked\n")
    put(root / "debug.log", "ignored\n")


def user_git_view(repo: Path) -> dict[str, str]:
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branches": git(repo, "branch", "--list"),
        "stash": git(repo, "stash", "list"),
        "index": git(repo, "ls-files", "-s"),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The user repository, built once; each example works on a copy."""
    root = tmp_path_factory.mktemp("toolbox-template") / "repo"
    make_user_repo(root)
    return root


STEPS = st.lists(st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 50)),
    st.tuples(st.just("write"), st.sampled_from(CANDIDATES), st.sampled_from(CONTENTS),
              st.booleans()),
    st.tuples(st.just("append"), st.sampled_from(CANDIDATES)),
    st.tuples(st.just("rm"), st.sampled_from(CANDIDATES)),
    st.tuples(st.just("mv"), st.sampled_from(CANDIDATES), st.sampled_from(CANDIDATES)),
    st.tuples(st.just("undo")),
), min_size=1, max_size=10)


def run_step(box: Toolbox, root: Path, step: tuple, number: int):
    """One mutating toolbox call for `step`; checks what must succeed."""
    kind = step[0]
    if kind == "replace":  # a file that exists, whole content quoted, a comment appended
        existing = [c for c in CANDIDATES if (root / c).is_file()]
        if not existing:
            return
        path = existing[step[1] % len(existing)]
        old = (root / path).read_text()
        result = box.call("replace", {"path": path, "old": old, "new": f"{old}# edit {number}\n"})
        assert result.ok, result.output
    elif kind == "write":
        _, path, content, overwrite = step
        old = (root / path).read_text() if (root / path).exists() else None
        result = box.call("write", {"path": path, "content": content, "overwrite": overwrite})
        # an existing file is replaced only with overwrite, and only by different content
        assert result.ok == (old is None or (overwrite and old != content)), result.output
    else:
        command = {"append": "echo x >> {0}", "rm": "rm {0}", "mv": "mv {0} {1}"}[kind]
        box.call("shell", {"command": command.format(*step[1:])})


def undo_and_check(box: Toolbox, root: Path, before_calls: list[dict[str, bytes]]) -> bool:
    """Undo once; the tree must be the one before the latest call that changed it."""
    now = tree_bytes(root)
    # calls that changed nothing are skipped: undo restores the latest different state
    while before_calls and before_calls[-1] == now:
        before_calls.pop()
    result = box.call("undo")
    assert result.ok == bool(before_calls), result.output
    assert tree_bytes(root) == (before_calls.pop() if before_calls else now)
    return result.ok


@settings(max_examples=20, deadline=None)
@given(steps=STEPS)
def test_undo_restores_the_tree_before_each_undone_call(template, steps):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        shutil.copytree(template, root, symlinks=True)
        start, git_dir, git_view = tree_bytes(root), dir_bytes(root / ".git"), user_git_view(root)
        box = Toolbox(root, store_dir=Path(tmp) / "store")
        before_calls: list[dict[str, bytes]] = []  # tree before each mutating call, oldest first
        for number, step in enumerate(steps):
            if step[0] == "undo":
                undo_and_check(box, root, before_calls)
            else:
                before_calls.append(tree_bytes(root))
                run_step(box, root, step, number)
        while undo_and_check(box, root, before_calls):
            pass  # walk all the way back
        assert tree_bytes(root) == start
        assert dir_bytes(root / ".git") == git_dir
        assert user_git_view(root) == git_view
