"""From `loopcli chat`'s options and the config files to a ChatConfig (no Textual here).

The user's config file may hold a [chat] table of defaults::

    [chat]
    backend = "openai"
    model = "loopcoder-v2"
    base_url = "http://127.0.0.1:8000/v1"
    mode = "ask"            # read-only | ask | auto-edit | yolo
    theme = "textual-dark"

Flags win over it. The repository's .loopcli.toml may only tighten the approval mode: it can
make the chat stricter, never point it at another model or server.
"""

from __future__ import annotations

from pathlib import Path

from loopcli.chat.approvals import MODES, tighter
from loopcli.chat.session import SessionError, SessionStore
from loopcli.config import REPO_FILE, ConfigError, read_toml, user_config_path
from loopcli.fix import FixError, make_backend

_KEYS = {"backend": str, "model": str, "base_url": str, "mode": str, "theme": str}


def chat_table(path: Path) -> dict:
    table = read_toml(path).get("chat", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `chat` must be a table ([chat])")
    for key, value in table.items():
        if key in _KEYS and not isinstance(value, _KEYS[key]):
            raise ConfigError(f"{path}: chat.{key} must be a string, not {value!r}")
    if table.get("mode") is not None and table["mode"] not in MODES:
        raise ConfigError(f"{path}: chat.mode is {table['mode']!r}; use one of {', '.join(MODES)}")
    return table


def prepare(repo: Path, backend: str | None, model: str | None, base_url: str | None,
            ctx: int | None, max_steps: int, mode: str | None, resume: str | None, sandbox,
            state_dir: Path | None = None):
    """The ChatConfig for these options; FixError (exit 2) for bad input."""
    from loopcli.chat.app import ChatConfig

    user = chat_table(user_config_path())
    project = chat_table(repo / REPO_FILE)
    kind = backend or user.get("backend", "local")
    model = model or user.get("model")
    base_url = base_url or user.get("base_url")
    session = None
    if resume:
        store = SessionStore(state_dir)
        try:
            session = store.latest(repo) if resume == "last" else store.load(resume)
        except SessionError as exc:
            raise FixError(str(exc)) from None
        if Path(session.repo) != repo:
            raise FixError(f"session {session.id} belongs to {session.repo}; run the chat there "
                           f"(--repo {session.repo})")
    mode = mode or (session.mode if session else None) or user.get("mode", "ask")
    if project.get("mode"):
        mode = tighter(mode, project["mode"])
    return ChatConfig(repo=repo, backend=make_backend(kind, model, base_url, ctx), model=model,
                      base_url=base_url, mode=mode, sandbox=sandbox.policy,
                      network=sandbox.network, session=session, state_dir=state_dir,
                      max_steps=max_steps, theme=user.get("theme"))
