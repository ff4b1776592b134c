"""Checkpoints: snapshot/undo/diff through a shadow git store that never touches the user's git."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loopcli.tools.checkpoints import Checkpoints, default_store
from loopcli.tools.errors import ToolError
from loopcli.tools.workspace import Workspace

# The developer's own git config must not leak into the repositories the tests build.
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
IGNORE_RULES = b"*.log\nbuild/\n"


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, env=GIT_ENV, capture_output=True, check=True,
    )
    return proc.stdout.decode()


def write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


def is_ignored(rel: str) -> bool:
    """The test's own reading of IGNORE_RULES."""
    return rel.endswith(".log") or "build" in rel.split("/")[:-1]


def tree_state(root: Path, *, ignored: bool = False) -> dict[str, tuple[bytes, int]]:
    """Bytes and permission bits of every file outside .git (the ignored ones, or the others)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if is_ignored(rel) == ignored:
                state[rel] = (path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return state


def dir_bytes(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def user_git_view(repo: Path) -> dict[str, str]:
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branches": git(repo, "branch", "--list"),
        "stash": git(repo, "stash", "list"),
        "index": git(repo, "ls-files", "-s"),
        "staged": git(repo, "diff", "--cached"),
    }


def make_user_repo(root: Path) -> None:
    """A repository with history, a branch, a stash entry, staged, modified and untracked files."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root / ".gitignore", IGNORE_RULES)
    write(root / ".gitattributes", b"*.txt text eol=crlf\n")  # must not alter snapshot bytes
    write(root / "a.txt", b"line one\nline two\n")
    write(root / "src" / "m.py", b"def f():\n    return 1\n")
    write(root / "data.bin", b"\x00\xff\xfe\x80 not utf-8 \xc3\x28")
    write(root / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    write(root / "a.txt", b"line one\nline 2\r\n")
    git(root, "commit", "-q", "-am", "two")
    git(root, "branch", "feature")
    write(root / "src" / "m.py", b"def f():\n    return 2\n")
    git(root, "stash", "-q")
    write(root / "a.txt", b"staged\n")
    git(root, "add", "a.txt")
    write(root / "data.bin", b"\x80\x81 modified, unstaged")
    write(root / "notes.md", b"untracked\n")
    write(root / "debug.log", b"ignored log\n")
    write(root / "build" / "out.o", b"\x7fELF ignored build output")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """Default stores go under tmp; files are created 0644/0755 so modes compare exactly."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---- property test --------------------------------------------------------------------------

CONTENTS = st.one_of(
    st.binary(max_size=48),
    st.text(max_size=30).map(lambda s: s.encode()),
    st.sampled_from([b"", b"a\r\nb\r\n", b"no newline", b"\xff\xfe\x00\x01"]),
)
NEW_PATHS = st.sampled_from(
    ["n1.txt", "n2.bin", "src/n3.py", "newdir/n4.txt", "newdir/deep/n5.bin", "other/x/n6"]
)


_TEMPLATE: list[Path] = []


def template_repo() -> Path:
    """The user repository, built once (under the machine's umask); examples work on copies."""
    if not _TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="cp-template-")) / "repo"
        make_user_repo(root)
        _TEMPLATE.append(root)
    return _TEMPLATE[0]


@pytest.fixture(scope="module", autouse=True)
def remove_template():
    yield
    if _TEMPLATE:
        shutil.rmtree(_TEMPLATE.pop().parent)


class UndoMachine(RuleBasedStateMachine):
    """Random agent steps (snapshot first, as the agent does), user edits and undos."""

    def __init__(self):
        super().__init__()
        self.old_umask = os.umask(0o022)
        self.tmp = Path(tempfile.mkdtemp(prefix="cp-prop-"))
        self.root = self.tmp / "repo"
        shutil.copytree(template_repo(), self.root, symlinks=True)
        self.git_files = dir_bytes(self.root / ".git")
        self.git_view = user_git_view(self.root)
        self.ignored = tree_state(self.root, ignored=True)
        self.cp = Checkpoints(Workspace(self.root), self.tmp / "store")
        self.expected: list[dict] = []  # the tree at each snapshot still on the undo stack

    def files(self) -> list[str]:
        return sorted(p for p in tree_state(self.root) if p != ".gitignore")

    def agent_step(self, label: str) -> None:
        self.cp.snapshot(label)
        self.expected.append(tree_state(self.root))

    @precondition(lambda self: self.files())
    @rule(data=st.data(), content=CONTENTS)
    def edit(self, data, content):
        rel = data.draw(st.sampled_from(self.files()))
        self.agent_step(f"edit {rel}")
        write(self.root / rel, content)

    @rule(rel=NEW_PATHS, content=CONTENTS)
    def write_file(self, rel, content):
        self.agent_step(f"write {rel}")
        write(self.root / rel, content)

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def delete(self, data):
        rel = data.draw(st.sampled_from(self.files()))
        self.agent_step(f"delete {rel}")
        (self.root / rel).unlink()

    @precondition(lambda self: self.files())
    @rule(data=st.data())
    def chmod(self, data):
        path = self.root / data.draw(st.sampled_from(self.files()))
        self.agent_step("chmod")
        path.chmod(0o644 if path.stat().st_mode & 0o100 else 0o755)

    @precondition(lambda self: self.files())
    @rule(data=st.data(), dest=NEW_PATHS)
    def shell(self, data, dest):
        src = shlex.quote(data.draw(st.sampled_from(self.files())))
        command = data.draw(st.sampled_from([
            f"echo appended >> {src}",
            f"mkdir -p $(dirname {dest}) && mv {src} {dest}",
            f"rm {src}",
            "rm -rf src",
            "mkdir -p gen/sub && printf 'x\\377\\000y' > gen/sub/blob && echo t > gen/t.txt",
            f"cat {src} > copy.tmp && mv copy.tmp copy_of_file && chmod +x copy_of_file",
        ]))
        self.agent_step(f"bash: {command}")
        subprocess.run(command, shell=True, cwd=self.root, capture_output=True)  # may fail

    @rule()
    def failed_tool_call(self):
        self.agent_step("edit that failed")  # snapshot, but nothing changes

    @precondition(lambda self: self.files())
    @rule(data=st.data(), content=CONTENTS)
    def user_edit(self, data, content):
        """The user edits between agent steps: no snapshot."""
        rel = data.draw(st.sampled_from(self.files() + ["user_new.txt"]))
        write(self.root / rel, content)

    def undo_once(self) -> bool:
        """Undo, checking the tree against the model; False when there is nothing to undo."""
        current = tree_state(self.root)
        keep = len(self.expected)
        while keep and self.expected[keep - 1] == current:
            keep -= 1
        if not keep:
            with pytest.raises(ToolError, match="nothing to undo"):
                self.cp.undo()
            return False
        message = self.cp.undo()
        assert "Restored checkpoint" in message
        assert tree_state(self.root) == self.expected[keep - 1]
        del self.expected[keep - 1 :]
        return True

    @rule()
    def undo(self):
        self.undo_once()

    @rule()
    def undo_twice(self):
        if self.undo_once():
            self.undo_once()

    @invariant()
    def stack_matches(self):
        assert len(self.cp.list()) == len(self.expected)

    @invariant()
    def user_git_and_ignored_files_untouched(self):
        assert dir_bytes(self.root / ".git") == self.git_files
        assert tree_state(self.root, ignored=True) == self.ignored

    def teardown(self):
        try:
            while self.undo_once():  # walk back through every remaining snapshot
                pass
            assert user_git_view(self.root) == self.git_view
        finally:
            os.umask(self.old_umask)
            shutil.rmtree(self.tmp)


TestUndoProperty = UndoMachine.TestCase
TestUndoProperty.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)


# ---- plain tests ----------------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    write(root / "keep.txt", b"keep\n")
    write(root / "gone.bin", b"\xff\x00 binary")
    return root


def test_works_outside_git_and_undo_restores_created_and_deleted_files(plain):
    cp = Checkpoints(Workspace(plain))
    store = default_store(plain.resolve())
    assert cp.store == store and plain.resolve() not in store.parents
    cp.snapshot("bash: rm and create")
    (plain / "gone.bin").unlink()
    write(plain / "new" / "deep" / "made.txt", b"new\n")
    write(plain / "keep.txt", b"edited\n", 0o755)

    message = cp.undo()

    assert (plain / "gone.bin").read_bytes() == b"\xff\x00 binary"
    assert (plain / "keep.txt").read_bytes() == b"keep\n"
    assert stat.S_IMODE((plain / "keep.txt").stat().st_mode) == 0o644
    assert not (plain / "new").exists()  # emptied directories go too
    assert "recreated (deleted since): 1 file(s): gone.bin" in message
    assert "deleted (created since): 1 file(s): new/deep/made.txt" in message
    assert "changed back: 1 file(s): keep.txt" in message
    assert cp.list() == []


def test_successive_undos_walk_back_and_skip_unchanged_snapshots(plain):
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    first = cp.snapshot("step 1")
    write(plain / "keep.txt", b"v2\n")
    cp.snapshot("step 2")
    write(plain / "keep.txt", b"v3\n")
    cp.snapshot("step 3, a failed edit")
    cp.snapshot("step 4")
    write(plain / "keep.txt", b"v4\n")
    assert [s.label for s in cp.list()] == ["step 1", "step 2", "step 3, a failed edit", "step 4"]

    assert "'step 4'" in cp.undo()
    assert (plain / "keep.txt").read_bytes() == b"v3\n"
    assert "'step 2'" in cp.undo()  # step 3 holds the same tree as now: skipped
    assert (plain / "keep.txt").read_bytes() == b"v2\n"
    cp.undo()
    assert (plain / "keep.txt").read_bytes() == b"keep\n"
    assert cp.list() == []
    with pytest.raises(ToolError, match="nothing to undo"):
        cp.undo()
    assert first not in [s.id for s in cp.list()]


def test_undo_keeps_the_replaced_state(plain):
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    cp.snapshot("edit")
    write(plain / "keep.txt", b"user work\n")
    message = cp.undo()
    saved = message.split("kept as ")[1].split(";")[0]
    assert "-user work\n+keep" in cp.diff(since=saved)  # what the undo took away


def test_nothing_to_undo(plain):
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    with pytest.raises(ToolError, match="nothing to undo: no checkpoint"):
        cp.undo()
    cp.snapshot("no change follows")
    with pytest.raises(ToolError, match="already matches every checkpoint"):
        cp.undo()
    assert len(cp.list()) == 1  # a refused undo pops nothing


def test_diff_shows_modified_new_and_deleted_files(plain):
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    with pytest.raises(ToolError, match="no checkpoint"):
        cp.diff()
    first = cp.snapshot("first")
    write(plain / "keep.txt", b"keep\nmore\n")
    second = cp.snapshot("second")
    (plain / "gone.bin").unlink()
    write(plain / "sub" / "fresh.py", b"print('hi')\n")

    out = cp.diff()
    assert "+more" in out
    assert "new file mode 100644" in out and "+++ b/sub/fresh.py" in out and "+print('hi')" in out
    assert "deleted file mode 100644" in out
    assert "Binary files a/gone.bin and /dev/null differ" in out
    assert "+more" not in cp.diff(since=second[:10])
    assert cp.diff(since=first) == out
    with pytest.raises(ToolError, match="unknown checkpoint id"):
        cp.diff(since="deadbeef")
    with pytest.raises(ToolError, match="not a checkpoint id"):
        cp.diff(since="--output=/tmp/x")


def test_gitignored_files_are_not_snapshotted_and_left_alone(tmp_path):
    root = tmp_path / "repo"
    make_user_repo(root)
    write(root / "forced.log", b"tracked although ignored\n")
    git(root, "add", "-f", "forced.log")
    cp = Checkpoints(Workspace(root), tmp_path / "store")
    cp.snapshot("before")
    write(root / "debug.log", b"rewritten by a tool\n")
    write(root / "build" / "new.o", b"new build output")
    write(root / "forced.log", b"edited\n")
    write(root / "a.txt", b"edited\n")

    out = cp.diff()
    assert "a.txt" in out and "forced.log" in out
    assert "debug.log" not in out and "build/" not in out
    assert not cp.covers("debug.log") and not cp.covers("build/new.o")
    assert cp.covers("a.txt") and cp.covers("forced.log") and cp.covers("not/yet/there.py")
    assert not cp.covers(".git/config")

    cp.undo()
    assert (root / "forced.log").read_bytes() == b"tracked although ignored\n"
    assert (root / "a.txt").read_bytes() == b"staged\n"
    assert (root / "debug.log").read_bytes() == b"rewritten by a tool\n"  # not protected
    assert (root / "build" / "new.o").read_bytes() == b"new build output"  # not deleted


def test_undo_does_not_delete_files_ignored_at_the_snapshot(plain):
    write(plain / ".gitignore", b"secret.env\n")
    write(plain / "secret.env", b"TOKEN=1\n")
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    cp.snapshot("edit .gitignore")
    write(plain / ".gitignore", b"")  # secret.env is now visible and gets recorded
    write(plain / "created.txt", b"x")
    message = cp.undo()
    assert (plain / "secret.env").read_bytes() == b"TOKEN=1\n"
    assert (plain / ".gitignore").read_bytes() == b"secret.env\n"
    assert not (plain / "created.txt").exists()
    assert "left alone (ignored, so perhaps older than this session): 1 file(s): secret.env" in message


def test_symlinks_and_nested_repositories(plain):
    os.symlink("keep.txt", plain / "link")
    nested = plain / "vendor"
    nested.mkdir()
    git(nested, "init", "-q")  # no commit: git add would refuse it
    write(nested / "inner.txt", b"inner\n")
    cp = Checkpoints(Workspace(plain), plain.parent / "store")
    cp.snapshot("relink")
    (plain / "link").unlink()
    os.symlink("gone.bin", plain / "link")
    cp.undo()
    assert os.readlink(plain / "link") == "keep.txt"
    assert (nested / "inner.txt").read_bytes() == b"inner\n"
    assert not cp.covers("vendor/inner.txt")


def test_store_location_rules(plain):
    with pytest.raises(ToolError, match="inside the project's .git"):
        Checkpoints(Workspace(plain), plain / ".git" / "shadow")
    with pytest.raises(ToolError, match="must not contain the workspace"):
        Checkpoints(Workspace(plain), plain.parent)
    cp = Checkpoints(Workspace(plain), plain / ".cache" / "store")  # inside the root: excluded
    cp.snapshot("one")
    write(plain / "keep.txt", b"changed\n")
    assert ".cache" not in cp.diff()
    cp.undo()
    assert (plain / ".cache" / "store" / "HEAD").is_file()


def test_git_missing(plain, monkeypatch):
    monkeypatch.setenv("PATH", str(plain / "no-such-bin"))
    with pytest.raises(ToolError, match="git is not installed"):
        Checkpoints(Workspace(plain))


def test_snapshot_of_thousands_of_files_is_fast_when_little_changed(tmp_path):
    root = tmp_path / "big"
    for i in range(3000):
        write(root / f"pkg{i % 30}" / f"mod{i}.py", f"x = {i}\n".encode())
    cp = Checkpoints(Workspace(root), tmp_path / "store")
    cp.snapshot("first: hashes everything")
    write(root / "pkg3" / "mod3.py", b"x = 'changed'\n")
    start = time.perf_counter()
    cp.snapshot("second: stat cache")
    assert time.perf_counter() - start < 1.0  # ~30 ms unloaded
    cp.undo()
    assert (root / "pkg3" / "mod3.py").read_bytes() == b"x = 3\n"


def test_inherited_git_environment_is_ignored(tmp_path, monkeypatch):
    """Run from inside a git hook, GIT_DIR/GIT_INDEX_FILE point at the user's repository."""
    root = tmp_path / "repo"
    make_user_repo(root)
    before = dir_bytes(root / ".git")
    monkeypatch.setenv("GIT_DIR", str(root / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(root / ".git" / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    cp = Checkpoints(Workspace(root), tmp_path / "store")
    cp.snapshot("edit")
    write(root / "notes.md", b"changed\n")
    assert "+changed" in cp.diff()
    cp.undo()
    assert (root / "notes.md").read_bytes() == b"untracked\n"
    assert dir_bytes(root / ".git") == before
