"""Chat sessions saved as they go, so `loopcli chat --resume` picks one up after a restart.

One JSON file per session under ``$XDG_STATE_HOME/loopcli/sessions`` (default
``~/.local/state/loopcli/sessions``): the agent's message list (what the model sees), the
transcript (what the screen shows) and a few settings. Every save writes a temporary file and
renames it over the old one, so a crash never leaves half a session.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{4}")


class SessionError(Exception):
    """A session that cannot be found or read: bad input (exit code 2)."""


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "loopcli"


@dataclass
class Session:
    id: str
    repo: str
    created: float
    updated: float = 0.0
    mode: str = "ask"
    messages: list[dict] = field(default_factory=list)  # the agent's, system prompt first
    transcript: list[dict] = field(default_factory=list)  # what the conversation shows
    first_checkpoint: str | None = None  # /diff after a resume shows changes since this one


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class SessionStore:
    def __init__(self, root: Path | None = None):
        self.root = (root or state_dir()) / "sessions"
        self._lock = threading.Lock()  # the agent's thread and the app's both save

    def new(self, repo: Path, mode: str) -> Session:
        now = time.time()
        return Session(new_id(), str(repo), now, now, mode)

    def save(self, session: Session) -> None:
        session.updated = time.time()
        data = json.dumps(asdict(session), ensure_ascii=False, default=str)
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{session.id}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    file.write(data)
                os.replace(tmp, self.root / f"{session.id}.json")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def load(self, session_id: str) -> Session:
        if not _ID.fullmatch(session_id):
            raise SessionError(f"{session_id!r} is not a session id (they look like "
                               "20260101-120000-ab12); `loopcli chat --resume` takes the last one")
        path = self.root / f"{session_id}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Session(**{k: data[k] for k in Session.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            raise SessionError(f"no session {session_id} in {self.root}; "
                               "`loopcli chat --resume` takes the last one") from None
        except (OSError, ValueError, TypeError) as exc:
            raise SessionError(f"cannot read session file {path}: {exc}; start a new chat "
                               "or remove the file") from None

    def latest(self, repo: Path) -> Session:
        """The most recently saved session of `repo`."""
        best: tuple[float, Session] | None = None
        for path in self.root.glob("*.json") if self.root.is_dir() else ():
            try:
                session = self.load(path.stem)
            except SessionError:
                continue  # a broken file does not hide the others
            if session.repo == str(repo) and (best is None or session.updated > best[0]):
                best = (session.updated, session)
        if best is None:
            raise SessionError(f"no saved chat session for {repo}; start one with `loopcli chat`")
        return best[1]
