"""Checkpoints: undo for everything the agent does, kept in a shadow git store.

The agent calls ``snapshot(label)`` before every mutating tool call (edit, write, shell);
``undo()`` puts the working tree back to the state captured by the latest snapshot that differs
from the tree now, and repeated undos walk further back. This covers shell side effects too,
because a snapshot records the whole tree, not the files a tool meant to touch.

How it is stored (the approach of Gemini CLI's checkpointing):

* A bare git repository of our own (default ``$XDG_CACHE_HOME/loopcli/checkpoints/<hash of
  root>``), used as ``git --git-dir=<store> --work-tree=<root>`` with its own index file. The
  user's ``.git`` (HEAD, index, branches, stash, config, hooks) is never written: the only git
  command run against it is a read-only ``ls-files`` (see "ignored files" below).
* Every git call is hermetic: no system or global config, no hooks, fixed identity, no signing,
  no fsmonitor, and highest-precedence attributes that switch off eol conversion, clean/smudge
  filters (LFS) and ``$Id$`` expansion, so restored bytes are exactly the bytes snapshotted.
* The shadow index is kept between calls, so git's stat cache makes a snapshot of an unchanged
  tree a few cheap stat calls; an unchanged tree is written once and reused.
* Every commit (snapshots and the states replaced by undo) is chained on a per-session ref,
  ``refs/loopcli/<session>``, so nothing is lost to garbage collection; ``gc.auto`` is off.

Choices (documented here because callers depend on them):

* Ignored files. The tree is recorded as ``git add --all`` sees it: files ignored by the
  project's ``.gitignore`` files, ``.git/info/exclude`` or ``~/.config/git/ignore`` are not
  snapshotted (build outputs, ``node_modules``, virtualenvs, large data). The last two are read
  once, when the session starts: emptying ``.git/info/exclude`` mid-session changes nothing.
  Files the user tracks in git despite matching an ignore pattern are covered, and so is every
  file passed in ``snapshot(paths=...)`` (the edit tools pass the file they are about to
  change), ignored or not. Other ignored files are not protected: a shell command that edits or
  deletes one cannot be undone. ``covers(path)`` answers whether undo protects a path.
* Undo never deletes a file that could have existed, unrecorded, before the session: a file
  undo would remove is left alone (and named in its message) when the rules of the target
  snapshot or of the session's first snapshot ignore it, so a changed ``.gitignore`` cannot
  turn an ignored user file into one that undo deletes. Every file undo changes or deletes is
  first recorded in the commit of the state it replaces.
* User changes between agent steps. A snapshot records whatever is on disk, user edits
  included, and undo restores the snapshot's exact bytes. So undoing back past a point where the
  user edited files reverts those edits too. Before each undo the current tree is committed; its
  id is in undo's message and ``diff(since=<that id>)`` shows what the undo took away.
* Not covered: contents of nested git repositories (a repository with commits is recorded as a
  gitlink, one without commits is skipped), empty directories, and permission bits other than
  the executable bit. When the root is a subdirectory of a repository, ``.gitignore`` files above
  it are not applied. Large files that are not ignored are stored in full.
* Git rejects some names everywhere (``.GIT``, ``.git.``, ``GIT~1``...). A file under such a
  name is left out of snapshots (so undo neither restores nor deletes it) instead of making
  every later snapshot fail.
* Concurrency: each call holds an exclusive ``flock`` on ``<store>/loopcli.lock``, so sessions
  sharing a store take turns; holding it, a leftover ``index.lock`` (a git process killed
  mid-snapshot) is known to be stale and removed instead of failing every later call.
* Growth: each session's commits hang on its own ref. When a new session finds more than
  MAX_SESSIONS + PRUNE_SLACK session refs, it deletes all but the MAX_SESSIONS newest and runs
  ``git gc --prune=now``, so a store holds the objects of at most that many sessions. There is
  no byte cap: a session that snapshots large files stores them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .errors import ToolError
from .workspace import Workspace, is_git_dir_name

_NAME = "loopcli"
_EMAIL = "loopcli@localhost"

# Passed as -c on every call: overrides anything in the store's config.
_CONFIG = {
    "core.hooksPath": os.devnull,
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.fsmonitor": "false",
    "core.untrackedCache": "false",
    "core.splitIndex": "false",
    "core.fileMode": "true",
    "core.symlinks": "true",
    "core.quotePath": "false",
    "commit.gpgSign": "false",
    "gc.auto": "0",
    "core.excludesFile": os.devnull,  # the user's global ignore file is read once per session
    "advice.addEmbeddedRepo": "false",
}

# $GIT_DIR/info/attributes outranks the work tree's .gitattributes: store bytes verbatim.
_ATTRIBUTES = b"* -text -eol -filter -ident -working-tree-encoding\n"

# `git add --all` aborts on a nested repository that has no commit, and on a name git refuses
# (.GIT, GIT~1...); we exclude it and retry.
_NO_COMMIT_REPO = re.compile(r"^error: '(.+)/' does not have a commit checked out$", re.M)
_INVALID_PATH = re.compile(r"^error: invalid path '(.+)'$", re.M)

MAX_SESSIONS = 20  # sessions whose snapshots a store keeps
PRUNE_SLACK = 5  # prune only when this many more have piled up, so gc runs rarely
LOCK_WAIT = 120  # seconds a call waits for another session's call on the same store
_STALE_LOCKS = ("loopcli-index.lock", "packed-refs.lock", "HEAD.lock", "config.lock")

_ID = re.compile(r"[0-9a-f]{4,40}")
_WHERE_IDS = "ids come from snapshot(), list() or undo()'s message"
_LISTED = 10  # file names shown per category in undo's message


class Snapshot(NamedTuple):
    id: str
    label: str
    time: float  # seconds since the epoch


def default_store(root: Path) -> Path:
    """Where the shadow store of `root` lives when no store_dir is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    return Path(cache) / "loopcli" / "checkpoints" / digest


def _exclude_pattern(rel: str, directory: bool = True) -> bytes:
    """An anchored ignore pattern matching exactly `rel` (a directory, or any entry)."""
    escaped = re.sub(r"([*?\[\\!# ])", r"\\\1", rel)  # spaces too: trailing ones are dropped
    return os.fsencode(f"/{escaped}{'/' if directory else ''}")


def _global_excludes() -> bytes:
    """Git's default global ignore file (the hermetic calls read no user config)."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    try:
        return Path(config, "git", "ignore").read_bytes()
    except OSError:
        return b""


class Checkpoints:
    def __init__(self, workspace: Workspace, store_dir: str | os.PathLike | None = None):
        git = shutil.which("git")
        if git is None:
            raise ToolError(
                "git is not installed (not found on PATH); checkpoints and undo need git"
            )
        self._git = git
        self.workspace = workspace
        self.root = workspace.root
        self.store = Path(store_dir).resolve() if store_dir else default_store(self.root)
        self._store_rel = self._check_store_location()
        self._env = self._hermetic_env()
        now = time.time_ns()  # nanoseconds in the name: sessions of one second still sort by age
        self._session = (time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9))
                         + f".{now % 10**9:09d}-{os.getpid()}-{secrets.token_hex(3)}")
        self._stack: list[Snapshot] = []
        self._trees: dict[str, str] = {}
        self._first: str | None = None
        self._head: str | None = None  # newest commit of this session's journal
        self._nested: set[str] = set()
        self._invalid: set[str] = set()  # paths git refuses to record (.GIT and the like)
        self._excludes: bytes | None = None
        self._user_excludes = self._read_user_excludes()  # frozen for the session
        self._seeded = False
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._init_store()

    # ---- public API -------------------------------------------------------------------------

    def snapshot(self, label: str, paths=()) -> str:
        """Record the whole working tree, plus `paths` even if ignored; returns the snapshot id."""
        with self._locked():
            when = time.time()
            self._force_add(paths)
            tree = self._index_worktree()
            commit = self._commit(tree, label)
        self._stack.append(Snapshot(commit, label, when))
        self._trees[commit] = tree
        self._first = self._first or commit
        return commit

    def undo(self) -> str:
        """Restore the latest snapshot that differs from the tree now; drop it and later ones."""
        with self._locked():
            return self._undo()

    def _undo(self) -> str:
        if not self._stack:
            raise ToolError(
                "nothing to undo: no checkpoint left in this session (none taken, or all undone)"
            )
        current = self._index_worktree()
        keep = len(self._stack)
        while keep and self._trees[self._stack[keep - 1].id] == current:
            keep -= 1
        if not keep:
            raise ToolError(
                "nothing to undo: the working tree already matches every checkpoint of this session"
            )
        target = self._stack[keep - 1]
        saved = self._commit(current, f"before undo to {target.id[:8]}")
        changes, spared = self._restore(current, self._trees[target.id])
        del self._stack[keep - 1 :]
        return self._describe(target, changes, spared, saved)

    def diff(self, since: str | None = None) -> str:
        """Unified diff from a snapshot (default: this session's first) to the working tree."""
        return self._diff(since).decode("utf-8", "replace")

    def patch(self, since: str | None = None) -> bytes:
        """Like diff, as bytes that `git apply` takes: binary files included (``--binary``),
        contents and names exactly as on disk, whatever their encoding."""
        return self._diff(since, "--binary", "--full-index")

    def _diff(self, since: str | None, *options: str) -> bytes:
        if since is None:
            if self._first is None:
                raise ToolError("nothing to diff against: no checkpoint was taken in this session")
            since = self._first
        with self._locked():
            base = self._resolve(since)
            self._index_worktree()
            return self._run("diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv",
                             "-M", *options, base).stdout

    def list(self) -> list[Snapshot]:
        """The undo stack, oldest first, as (id, label, time) tuples."""
        return list(self._stack)

    def covers(self, path: str | os.PathLike) -> bool:
        """Whether undo protects `path` (False for ignored files and anything in .git)."""
        real = self.workspace.resolve(path)
        rel = self.workspace.relative(real)
        if any(map(is_git_dir_name, Path(rel).parts)):
            return False
        with self._locked():
            self._sync_excludes()
            self._seed_user_tracked()
            return self._covered(rel)

    def _covered(self, rel: str) -> bool:
        """Tracked in the shadow index, or not ignored."""
        if self._run("ls-files", "-z", "--", _literal(rel)).stdout:
            return True
        # rc 0: ignored; 1: not ignored; 128: e.g. inside a nested repository.
        return self._run("check-ignore", "-q", "--", rel, ok=(0, 1, 128)).returncode == 1

    def _force_add(self, paths) -> None:
        """Put the existing files among `paths` into the shadow index even if ignored, so the
        snapshot records them and undo can restore them."""
        wanted = []
        for path in paths:
            try:
                real = self.workspace.resolve(path)
                rel = self.workspace.relative(real)
                if real.is_file() and not any(map(is_git_dir_name, Path(rel).parts)):
                    wanted.append(rel)
            except (ToolError, OSError, ValueError):
                continue  # a path the tool itself will refuse
        if not wanted:
            return
        self._sync_excludes()
        self._seed_user_tracked()
        forced = [rel for rel in wanted if not self._covered(rel)]
        if forced:
            self._run("add", "--force", "--pathspec-from-file=-", "--pathspec-file-nul",
                      stdin=b"\0".join(os.fsencode(_literal(rel)) for rel in forced))

    # ---- store setup ------------------------------------------------------------------------

    def _check_store_location(self) -> str | None:
        """Refuse a store in the root or the user's .git; the root-relative path if inside it."""
        if self.store == self.root or self.store in self.root.parents:
            raise ToolError(
                f"checkpoint store {self.store} must not contain the workspace {self.root}"
            )
        if self.root not in self.store.parents:
            return None
        rel = self.store.relative_to(self.root)
        if ".git" in rel.parts:
            raise ToolError(f"checkpoint store {self.store} must not be inside the project's .git")
        return rel.as_posix()

    def _hermetic_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_INDEX_FILE=str(self.store / "loopcli-index"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_AUTHOR_NAME=_NAME,
            GIT_AUTHOR_EMAIL=_EMAIL,
            GIT_COMMITTER_NAME=_NAME,
            GIT_COMMITTER_EMAIL=_EMAIL,
            GIT_TERMINAL_PROMPT="0",
            LC_ALL="C",  # git's messages are parsed (nested repositories)
        )
        return env

    def _init_store(self) -> None:
        try:
            self.store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolError(f"cannot create checkpoint store {self.store}: {exc}") from exc
        with self._locked():
            if not (self.store / "HEAD").is_file():
                env = {k: v for k, v in self._env.items() if k != "GIT_INDEX_FILE"}
                cmd = [self._git, "init", "--bare", "--quiet", "--template=", str(self.store)]
                self._call(cmd, "init", env)
            info = self.store / "info"
            info.mkdir(exist_ok=True)
            attributes = info / "attributes"
            if not attributes.is_file() or attributes.read_bytes() != _ATTRIBUTES:
                attributes.write_bytes(_ATTRIBUTES)
            self._prune_sessions()

    def _prune_sessions(self) -> None:
        """Keep the MAX_SESSIONS newest sessions' refs once PRUNE_SLACK more have piled up;
        gc then drops the objects only the deleted ones reached."""
        refs = self._out("for-each-ref", "--format=%(refname)", "refs/loopcli/").split()
        if len(refs) <= MAX_SESSIONS + PRUNE_SLACK:
            return
        # session names start with their start time, so name order is age order
        old = sorted(refs, key=lambda ref: ref.rsplit("/", 1)[-1])[:-MAX_SESSIONS]
        self._run("update-ref", "--stdin", stdin="".join(f"delete {r}\n" for r in old).encode())
        self._run("gc", "--prune=now", "--quiet")

    @contextlib.contextmanager
    def _locked(self):
        """Hold the store's flock (reentrant); on taking it, clear locks a killed git left."""
        if self._lock_depth == 0:
            self._lock_fd = self._acquire_store_lock()
            self._clear_stale_locks()
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _acquire_store_lock(self) -> int:
        try:
            fd = os.open(self.store / "loopcli.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ToolError(f"cannot open the checkpoint store's lock: {exc.strerror}") from None
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ToolError(f"checkpoint store {self.store} stayed busy for {LOCK_WAIT} s "
                                    "(another loopcli session is using it)") from None
                time.sleep(0.05)

    def _clear_stale_locks(self) -> None:
        """Every loopcli call on the store holds its flock, so a git lock file present now was
        left by a git process that was killed (an interrupted snapshot)."""
        stale = [self.store / name for name in _STALE_LOCKS]
        stale += (self.store / "refs" / "loopcli").glob("*.lock")
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ---- git plumbing -----------------------------------------------------------------------

    def _call(self, cmd: list[str], verb: str, env: dict[str, str], stdin=None, ok=(0,), cwd=None):
        try:
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            proc = subprocess.run(cmd, cwd=cwd or self.root, env=env, capture_output=True, **feed)
        except OSError as exc:
            raise ToolError(f"cannot run git: {exc}") from exc
        if proc.returncode not in ok:
            err = proc.stderr.decode("utf-8", "replace").strip()
            raise ToolError(f"checkpoint store: git {verb} failed: {err}")
        return proc

    def _run(self, *args: str, stdin: bytes | None = None, ok=(0,), work_tree: Path | None = None):
        work_tree = work_tree or self.root
        cmd = [self._git, f"--git-dir={self.store}", f"--work-tree={work_tree}"]
        for key, value in _CONFIG.items():
            cmd += ["-c", f"{key}={value}"]
        return self._call(cmd + list(args), args[0], self._env, stdin, ok, cwd=work_tree)

    def _out(self, *args: str) -> str:
        return self._run(*args).stdout.decode().strip()

    def _commit(self, tree: str, message: str) -> str:
        args = ["commit-tree", tree, "-m", message or "(no label)"]
        if self._head:
            args += ["-p", self._head]
        commit = self._out(*args)
        self._run("update-ref", f"refs/loopcli/{self._session}", commit)
        self._head = commit
        return commit

    def _resolve(self, since: str) -> str:
        if not _ID.fullmatch(since):
            raise ToolError(f"{since!r} is not a checkpoint id; {_WHERE_IDS}")
        proc = self._run("rev-parse", "--verify", "--quiet", f"{since}^{{commit}}", ok=(0, 1, 128))
        if proc.returncode:
            raise ToolError(f"unknown checkpoint id {since}; {_WHERE_IDS}")
        return proc.stdout.decode().strip()

    # ---- recording --------------------------------------------------------------------------

    def _index_worktree(self) -> str:
        """Bring the shadow index up to date with the work tree; returns its tree id."""
        self._sync_excludes()
        self._seed_user_tracked()
        while True:
            proc = self._run("add", "--all", ok=(0, 128))
            if proc.returncode == 0:
                return self._out("write-tree")
            err = proc.stderr.decode("utf-8", "surrogateescape")  # paths round-trip to bytes
            nested = set(_NO_COMMIT_REPO.findall(err))
            invalid = {_refused_prefix(p) for p in _INVALID_PATH.findall(err)}
            if not (nested - self._nested or invalid - self._invalid):
                raise ToolError(f"checkpoint store: git add failed: {err.strip()}")
            self._nested |= nested
            self._invalid |= invalid
            self._sync_excludes()

    def _sync_excludes(self) -> None:
        """The store's exclude file: our own entries plus the user's .git/info/exclude."""
        parts = [b"# maintained by loopcli checkpoints\n"]
        if self._store_rel:
            parts.append(_exclude_pattern(self._store_rel) + b"\n")
        parts += [_exclude_pattern(rel) + b"\n" for rel in sorted(self._nested)]
        parts += [_exclude_pattern(rel, directory=False) + b"\n" for rel in sorted(self._invalid)]
        parts.append(self._user_excludes)
        content = b"".join(parts)
        if content != self._excludes:
            (self.store / "info" / "exclude").write_bytes(content)
            self._excludes = content

    def _read_user_excludes(self) -> bytes:
        """The user's .git/info/exclude and global ignore file, as they are now."""
        try:
            local = (self.root / ".git" / "info" / "exclude").read_bytes()
        except OSError:
            local = b""  # not a git repository, or no exclude file
        return b"\n".join([local, _global_excludes(), b""])

    def _seed_user_tracked(self) -> None:
        """Once per session: add files the user tracks although they match an ignore rule."""
        if self._seeded:
            return
        self._seeded = True
        env = {k: v for k, v in self._env.items() if k != "GIT_INDEX_FILE"}
        env["GIT_OPTIONAL_LOCKS"] = "0"  # never lock or refresh the user's index
        cmd = [self._git, "-c", "core.fsmonitor=false", "ls-files", "-z", "--cached", "--ignored",
               "--exclude-standard"]
        # Read-only query of the user's repository; any failure just means "not a repository".
        proc = self._call(cmd, "ls-files", env, ok=range(256))
        if proc.returncode:
            return
        listed = [p for p in proc.stdout.split(b"\0") if p]
        paths = [p for p in listed if os.path.lexists(self.root / os.fsdecode(p))]
        if paths:
            self._run("add", "--force", "--pathspec-from-file=-", "--pathspec-file-nul",
                      stdin=b"\0".join(b":(literal)" + p for p in paths))

    # ---- restoring --------------------------------------------------------------------------

    def _restore(self, current: str, target: str) -> tuple[list[tuple[str, str]], list[str]]:
        """Make the work tree (and shadow index) equal `target`; returns (changes, spared)."""
        changes = self._changes(current, target)
        spared = self._spared(changes, target)
        if spared:
            # Out of the index, they are untracked ignored files: read-tree leaves them alone.
            self._run("update-index", "--force-remove", "-z", "--stdin",
                      stdin=b"\0".join(os.fsencode(p) for p in spared))
            changes = [(s, p) for s, p in changes if p not in spared]
        self._run("read-tree", "--reset", "-u", target)
        return changes, spared

    def _changes(self, current: str, target: str) -> list[tuple[str, str]]:
        """(status, path) going from `current` to `target`: A recreated, D removed, M/T changed."""
        args = ("diff-tree", "-r", "-z", "--no-renames", "--name-status", current, target)
        fields = self._run(*args).stdout.split(b"\0")[:-1]
        pairs = zip(fields[::2], fields[1::2])
        return [(status.decode(), os.fsdecode(path)) for status, path in pairs]

    def _spared(self, changes: list[tuple[str, str]], target: str) -> list[str]:
        """Paths undo would delete that the target's or the session's first snapshot's ignore
        rules ignore: invisible to snapshots, such a file may have existed before the session,
        so deleting it could destroy work undo cannot bring back."""
        removed = [p for s, p in changes if s == "D"]
        if not removed:
            return []
        trees = dict.fromkeys([target, self._trees.get(self._first or "", target)])
        spared: set[str] = set()
        for tree in trees:
            spared |= set(self._ignored_by(tree, removed))
        return [p for p in removed if p in spared]

    def _ignored_by(self, tree: str, paths: list[str]) -> list[str]:
        """Those of `paths` that the .gitignore files of `tree` (and the session's excludes)
        ignore."""
        listing = self._run("ls-tree", "-r", "-z", "--name-only", tree).stdout.split(b"\0")
        rules = [os.fsdecode(p) for p in listing if p and Path(os.fsdecode(p)).name == ".gitignore"]
        with tempfile.TemporaryDirectory() as tmp:
            for rel in rules:
                dest = Path(tmp, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(self._run("cat-file", "blob", f"{tree}:{rel}").stdout)
            proc = self._run("check-ignore", "--no-index", "-z", "--stdin", ok=(0, 1),
                             work_tree=Path(tmp), stdin=b"\0".join(os.fsencode(p) for p in paths))
        return [os.fsdecode(p) for p in proc.stdout.split(b"\0") if p]

    def _describe(self, target: Snapshot, changes, spared: list[str], saved: str) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(target.time))
        groups = [
            ("changed back", [p for s, p in changes if s in "MT"]),
            ("recreated (deleted since)", [p for s, p in changes if s == "A"]),
            ("deleted (created since)", [p for s, p in changes if s == "D"]),
            ("left alone (ignored, so perhaps older than this session)", spared),
        ]
        lines = [f"Restored checkpoint {target.id[:8]} '{target.label}' taken at {when}."]
        for title, paths in groups:
            if paths:
                shown = ", ".join(paths[:_LISTED])
                more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
                lines.append(f"{title}: {len(paths)} file(s): {shown}{more}")
        short = saved[:12]
        lines.append(
            f"The state before this undo is kept as {short}; diff(since='{short}') shows it."
        )
        return "\n".join(lines)



def _refused_prefix(path: str) -> str:
    """The part of a path git refused up to its first .git look-alike (the whole path if none)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if is_git_dir_name(part):
            return "/".join(parts[:i + 1])
    return path


def _literal(rel: str) -> str:
    """A pathspec naming exactly `rel`: no glob characters, no other magic."""
    return f":(literal){rel}"
