"""One loopcli run per repository at a time.

Two runs on one work tree would snapshot and undo each other's edits and both report success,
so a run holds an exclusive advisory lock (``fcntl.flock``) on a file in the user's cache, named
by a hash of the repository's real path (so every path that leads to the same directory shares
one lock). The kernel drops the lock when its holder exits, however it exits, so a crashed run
never leaves the repository locked. The file also names its holder, for the refusal message.
Lock files are a few bytes each and are kept (removing a lock file others may be waiting on is
racy); there is one per repository ever locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path

from .errors import ToolError

POLL_SECONDS = 0.1


class RepoBusy(ToolError):
    """Another process holds the repository's lock."""


def default_lock_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "loopcli" / "locks"


class RepoLock:
    """``with RepoLock(root).acquire(wait=5):`` ... the lock is released on exit."""

    def __init__(self, root: str | os.PathLike, lock_dir: str | os.PathLike | None = None):
        self.root = Path(os.path.realpath(root))
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        self.path = Path(lock_dir or default_lock_dir()) / f"{digest}.lock"
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> RepoLock:
        """Take the lock, waiting up to `wait` seconds; raises RepoBusy naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ToolError(f"cannot create the repository lock {self.path}: {exc.strerror}") \
                from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise RepoBusy(
                        f"another loopcli run ({holder}) is working in {self.root}; wait for it "
                        "to finish or stop it, then run again (two runs would undo each other's "
                        "edits)") from None
                time.sleep(POLL_SECONDS)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RepoLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
