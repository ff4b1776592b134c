"""No lost work: undo never deletes what it cannot bring back, ignored files the agent edits are
recorded, a killed snapshot does not break later ones, the store stays bounded, one run per repo.

The random-steps property test runs 60 steps by default and 550 (five seeded runs of 110) with
LOOPCLI_SLOW=1.
"""

from __future__ import annotations

import os
import random
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopcli.tools.checkpoints import MAX_SESSIONS, PRUNE_SLACK, Checkpoints
from loopcli.tools.repolock import RepoBusy, RepoLock
from loopcli.tools.toolbox import Toolbox
from loopcli.tools.workspace import Workspace

FULL = os.environ.get("LOOPCLI_SLOW") == "1"
RUNS = [(seed, 110) for seed in range(5)] if FULL else [(0, 60)]

GIT_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          env=GIT_ENV, capture_output=True, check=True).stdout.decode()


def put(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    old = os.umask(0o022)
    yield
    os.umask(old)


def dirty_repo(root: Path) -> Path:
    """Committed, staged, modified, untracked, ignored (by .gitignore and by
    .git/info/exclude), binary, non-UTF-8 (content and name) and executable files."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    put(root / ".gitignore", b"*.log\nbuild/\n")
    put(root / "app.py", b"def f():\n    return 1\n")
    put(root / "latin.txt", "café = 1\r\nnaïve = 2\r\n".encode("cp1252"))
    put(root / "blob.bin", b"\x00\xff\xfe\x80 not text \xc3\x28")
    put(root / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    put(root / "app.py", b"def f():\n    return 2\n")
    git(root, "add", "app.py")
    put(root / "blob.bin", b"\x80\x81 unstaged")
    put(root / "notes.md", b"untracked\n")
    put(root / os.fsdecode(b"caf\xe9-name.txt"), b"a non-UTF-8 file name\n")
    put(root / "debug.log", b"ignored log\n")
    put(root / "build" / "out.o", b"\x7fELF\x00 ignored build output")
    put(root / ".git" / "info" / "exclude", b"secret.env\n")
    put(root / "secret.env", b"TOKEN=abc\n")
    return root


def is_ignored(rel: str) -> bool:
    """The repository's ignore rules as they were when the session started."""
    return rel.endswith(".log") or rel.split("/")[0] == "build" or rel == "secret.env"


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    state = {}
    for folder, dirs, names in os.walk(root):
        if folder == str(root):
            dirs.remove(".git")
        for name in names:
            path = Path(folder, name)
            state[path.relative_to(root).as_posix()] = (
                path.read_bytes(), stat.S_IMODE(path.lstat().st_mode) & 0o100)
    return state


def git_dir(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in (root / ".git").rglob("*") if p.is_file()}


# ---- the reproductions -------------------------------------------------------------


def test_emptying_info_exclude_then_undoing_twice_keeps_the_ignored_secret(tmp_path):
    root = dirty_repo(tmp_path / "repo")
    box = Toolbox(root, store_dir=tmp_path / "store")
    emptied = box.call("shell", {"command": ": > .git/info/exclude"})
    if not emptied.ok:  # a sandbox keeps .git read-only: do what a full-access shell would
        (root / ".git" / "info" / "exclude").write_bytes(b"")
    assert box.call("write", {"path": "new.txt", "content": "x\n"}).ok
    assert box.call("shell", {"command": "echo more >> notes.md"}).ok
    for _ in range(3):
        box.call("undo")
    assert (root / "secret.env").read_bytes() == b"TOKEN=abc\n"
    assert (root / "notes.md").read_bytes() == b"untracked\n"
    assert not (root / "new.txt").exists()


def test_a_changed_gitignore_does_not_make_undo_delete_ignored_files(tmp_path):
    root = dirty_repo(tmp_path / "repo")
    box = Toolbox(root, store_dir=tmp_path / "store")
    assert box.call("write", {"path": ".gitignore", "content": "", "overwrite": True}).ok
    assert box.call("write", {"path": "x.txt", "content": "x\n"}).ok  # debug.log now recorded
    box.call("undo")
    box.call("undo")
    assert (root / "debug.log").read_bytes() == b"ignored log\n"
    assert (root / "build" / "out.o").exists()
    assert (root / ".gitignore").read_bytes() == b"*.log\nbuild/\n"


@pytest.mark.parametrize("tool,args", [
    ("replace", {"old": "TOKEN=abc", "new": "TOKEN=changed"}),
    ("write", {"content": "overwritten\n", "overwrite": True}),
])
def test_an_ignored_file_the_agent_edits_is_restored_by_undo(tmp_path, tool, args):
    root = dirty_repo(tmp_path / "repo")
    box = Toolbox(root, store_dir=tmp_path / "store")
    assert not box.checkpoints.covers("secret.env")
    result = box.call(tool, {"path": "secret.env", **args})
    assert result.ok, result.output
    assert (root / "secret.env").read_bytes() != b"TOKEN=abc\n"
    assert box.call("undo").ok
    assert (root / "secret.env").read_bytes() == b"TOKEN=abc\n"
    assert box.call("undo").ok is False  # nothing more; and the file is not deleted by trying
    assert (root / "secret.env").read_bytes() == b"TOKEN=abc\n"


def test_a_stale_index_lock_from_a_killed_snapshot_is_recovered(tmp_path):
    root = dirty_repo(tmp_path / "repo")
    store = tmp_path / "store"
    Checkpoints(Workspace(root), store).snapshot("first run")
    # A run killed in the middle of `git add` leaves the lock file behind.
    (store / "loopcli-index.lock").write_bytes(b"")
    (store / "refs" / "loopcli").mkdir(parents=True, exist_ok=True)
    (store / "refs" / "loopcli" / "old-session.lock").write_bytes(b"")
    later = Checkpoints(Workspace(root), store)
    later.snapshot("later run")
    put(root / "notes.md", b"changed\n")
    later.undo()
    assert (root / "notes.md").read_bytes() == b"untracked\n"
    assert not (store / "loopcli-index.lock").exists()


def test_the_store_keeps_a_bounded_number_of_sessions(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    store = tmp_path / "store"
    put(root / "f.txt", b"session 0 only\n")
    first = Checkpoints(Workspace(root), store)
    first.snapshot("0")
    only_first = git(store, "rev-parse", "HEAD:f.txt".replace("HEAD", first.list()[0].id))
    for i in range(1, MAX_SESSIONS + PRUNE_SLACK + 1):
        put(root / "f.txt", f"session {i}\n".encode())
        Checkpoints(Workspace(root), store).snapshot(str(i))
        time.sleep(0.01)
    refs = git(store, "for-each-ref", "refs/loopcli/").splitlines()
    assert len(refs) == MAX_SESSIONS + PRUNE_SLACK + 1
    Checkpoints(Workspace(root), store)  # a new session prunes
    refs = git(store, "for-each-ref", "refs/loopcli/").splitlines()
    assert len(refs) == MAX_SESSIONS
    missing = subprocess.run(["git", "--git-dir", str(store), "cat-file", "-e", only_first.strip()],
                             env=GIT_ENV, capture_output=True)
    assert missing.returncode != 0, "the oldest session's objects were not pruned"


def test_binary_and_non_utf8_changes_are_in_the_patch(tmp_path):
    root = dirty_repo(tmp_path / "repo")
    cp = Checkpoints(Workspace(root), tmp_path / "store")
    cp.snapshot("start")
    put(root / "blob.bin", b"\x00\x01\x02 new binary \xff")
    put(root / "latin.txt", "café = 3\r\n".encode("cp1252"))
    patch = cp.patch()
    assert b"GIT binary patch" in patch
    assert "café".encode("cp1252") in patch
    assert "Binary files" in cp.diff()  # the text form for people is unchanged


# ---- the repository lock --------------------------------------------------------------------


def test_a_second_lock_on_the_same_repository_is_refused_and_names_the_holder(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    first = RepoLock(tmp_path / "repo").acquire()
    started = time.monotonic()
    with pytest.raises(RepoBusy, match=rf"pid {os.getpid()}.*working in"):
        RepoLock(tmp_path / "link").acquire(wait=0.3)  # the same directory by another path
    assert time.monotonic() - started >= 0.3
    other = RepoLock(tmp_path).acquire()  # another directory is independent
    first.release()
    with RepoLock(tmp_path / "repo").acquire():
        pass
    other.release()


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    (tmp_path / "repo").mkdir()
    code = ("import sys, time; from loopcli.tools.repolock import RepoLock;"
            "RepoLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "repo")],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    with pytest.raises(RepoBusy):
        RepoLock(tmp_path / "repo").acquire()
    proc.kill()
    proc.wait()
    RepoLock(tmp_path / "repo").acquire(wait=5).release()


# ---- random edit / shell / undo steps -------------------------------------------------------

TEXT_PATHS = ["app.py", "notes.md", "latin.txt", "secret.env", "debug.log", "new/one.txt",
              "build/gen.txt", "deep/a/b.md"]
SHELL_STEPS = [
    "printf 'x\\000\\377y' >> blob.bin",
    "printf '\\351t\\351\\n' > latin2.txt",
    "rm -f {p}",
    "mkdir -p moved && mv {p} moved/ 2>/dev/null; true",
    "chmod +x {p}",
    "echo appended >> {p}",
    "echo shell-made > build/made.o",
    "echo changed-by-shell >> debug.log",
    ": > .git/info/exclude",
    "rm -rf new deep",
    "cp blob.bin copy.bin",
    "printf 'n\\n' > \"$(printf 'odd\\376name')\"",
]


class Model:
    """What undo must give back: the files snapshots record (not ignored at the start, plus
    ignored files an edit tool touched while they existed), as of each snapshot."""

    def __init__(self, root: Path):
        self.root = root
        self.tracked: set[str] = set()  # ignored files in the shadow index
        self.stack: list[dict] = []

    def recorded(self) -> dict:
        now = files(self.root)
        self.tracked &= set(now)
        return {rel: v for rel, v in now.items() if not is_ignored(rel) or rel in self.tracked}

    def snapshot(self, touched: str | None) -> None:
        if touched and is_ignored(touched) and (self.root / touched).is_file():
            self.tracked.add(touched)
        self.stack.append(self.recorded())


def _step_args(rng: random.Random, root: Path) -> tuple[str, dict]:
    existing = sorted(rel for rel in files(root) if rel != ".gitignore")  # rules stay fixed
    kind = rng.choice(["write", "write", "replace", "overwrite", "shell", "shell", "shell"])
    if kind == "write":
        return "write", {"path": rng.choice(TEXT_PATHS),
                         "content": rng.choice(["hello\n", "é ü\n", "a\r\nb\n", ""])}
    if kind == "overwrite":
        return "write", {"path": rng.choice(TEXT_PATHS), "content": f"v{rng.random()}\n",
                         "overwrite": True}
    if kind == "replace":
        path = rng.choice(TEXT_PATHS)
        old = (root / path).read_bytes()[:8] if (root / path).is_file() else b"x"
        return "replace", {"path": path, "old": old.decode("cp1252", "replace") or "x",
                           "new": f"r{rng.randrange(100)}"}
    target = shlex.quote(rng.choice(existing)) if existing else "nothing"
    return "shell", {"command": rng.choice(SHELL_STEPS).format(p=target)}


@pytest.mark.parametrize("seed,steps", RUNS)
def test_random_edit_shell_undo_steps_lose_nothing(tmp_path, seed, steps):
    root = dirty_repo(tmp_path / "repo")
    box = Toolbox(root, store_dir=tmp_path / "store")
    model = Model(root)
    rng = random.Random(seed)
    undos = 0
    for step in range(steps):
        if rng.random() < 0.3:
            undos += _undo_and_check(box, model, root, f"seed {seed} step {step}")
            continue
        name, args = _step_args(rng, root)
        model.snapshot(args.get("path"))
        box.call(name, args)  # may fail (a refused edit, a failing command): all the same
    while _undo_and_check(box, model, root, f"seed {seed} final"):
        undos += 1
    assert undos >= steps // 10


def _undo_and_check(box: Toolbox, model: Model, root: Path, where: str) -> bool:
    """One undo, checked against the model: recorded files exactly as at the target snapshot,
    other ignored files and .git untouched. False when there was nothing to undo."""
    before_git, before = git_dir(root), files(root)
    current = model.recorded()
    keep = len(model.stack)
    while keep and model.stack[keep - 1] == current:
        keep -= 1
    result = box.call("undo")
    after = files(root)
    assert git_dir(root) == before_git, f"{where}: undo touched .git"
    if not keep:
        assert not result.ok and "nothing to undo" in result.output, where
        assert after == before, where
        return False
    assert result.ok, f"{where}: {result.output}"
    target = model.stack[keep - 1]
    for rel, value in before.items():
        if rel in target:
            continue
        if is_ignored(rel):  # never deleted nor changed by undo, recorded or not
            assert after.get(rel) == value, f"{where}: undo changed ignored {rel}"
        else:
            assert rel not in after, f"{where}: undo left {rel} that the snapshot lacks"
    for rel, value in target.items():
        assert after.get(rel) == value, f"{where}: {rel} not restored"
    del model.stack[keep - 1:]
    model.tracked = {rel for rel in target if is_ignored(rel)}
    return True
