"""The chat app: the agent loop runs in a worker thread; the screen shows what it does.

The agent thread talks to the screen through three callbacks of loopcli.agent.Agent: `on_text`
(each streamed text piece), `approve` (before each tool call; blocks until the user answers
when the mode asks) and `record` (every event: model turn, tool result, compaction...). The
session file is written after every event. Ctrl+C sets a flag that the next callback turns
into agent.Stopped, so the turn ends without quitting the app.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import Static

from loopcli.chat import approvals, commands
from loopcli.chat.session import Session, SessionStore
from loopcli.chat.widgets import (ApprovalCard, Conversation, DiffView, ErrorCard,
                                  HelpScreen, Note, PromptInput, StatusBar, ToolCard,
                                  UserMessage)


CHAT_NOTE = """

This is an interactive chat with the user, not a headless run. When you have answered the \
user's latest message or done what it asked, reply in plain text WITHOUT a tool call: that \
ends your turn and the user writes next. Calls that edit files or run commands may be denied \
by the user; then do not repeat them, ask instead."""


@dataclass
class ChatConfig:
    repo: Path
    backend: object  # a loopcli.backends.base.Backend
    model: str | None = None
    base_url: str | None = None
    mode: str = "ask"
    sandbox: str = "workspace-write"
    network: bool = False
    session: Session | None = None  # a saved session to resume
    state_dir: Path | None = None  # sessions (default: the user's state dir)
    store_dir: Path | None = None  # checkpoints (default: the user's cache)
    map_cache: Path | None = None  # repo map tags (default: the user's cache)
    max_steps: int = 50  # model calls per turn
    theme: str | None = None
    cursor_blink: bool = True  # off in snapshot tests
    always: set = field(default_factory=set)


CSS = """
Screen { layout: vertical; }
Conversation { height: 1fr; padding: 0 1; }
Conversation > * { margin: 0 0 1 0; }
.user { color: $text; background: $boost; padding: 0 1; border-left: thick $accent; }
Answer { margin: 0 0 1 0; padding: 0; }
.note { color: $text-muted; }
.error { border: round $error; padding: 0 1; }
.diff { padding: 0 1; }
.output { color: $text-muted; }
ToolCard { border: none; padding: 0; margin: 0 0 1 0; background: $surface; }
ToolCard.failed CollapsibleTitle { color: $error; }
ApprovalCard { border: round $warning; height: auto; padding: 0 1; }
ApprovalCard:focus { border: double $warning; }
ApprovalCard.answered { border: round $panel; }
ApprovalCard.answered .keys { display: none; }
ApprovalCard .command { color: $warning; }
#hint { height: auto; max-height: 4; color: $text-muted; padding: 0 1; display: none; }
#hint.shown { display: block; }
PromptInput { height: auto; min-height: 3; max-height: 10; border: round $accent; }
StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
HelpScreen { align: center middle; }
HelpScreen #help { width: 90%; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
"""


class ChatApp(App):
    TITLE = "loopcli chat"
    CSS = CSS
    BINDINGS = [
        Binding("ctrl+c", "stop", "stop", priority=True, show=False),
        Binding("ctrl+t", "next_mode", "mode", priority=True, show=False),
        Binding("f1", "help", "help", show=False),
    ]

    def __init__(self, config: ChatConfig):
        super().__init__()
        self.config = config
        self.mode = config.mode
        self.always: set[str] = set(config.always)  # kinds approved for the whole session
        self.store = SessionStore(config.state_dir)
        self.session = config.session or self.store.new(config.repo, config.mode)
        self.session.mode = config.mode
        self.agent = None
        self.toolbox = None
        self.busy = False
        self.branch = ""
        self.tokens_per_second: float | None = None
        self.context_used = 0
        self.context_window: int | None = None  # asked in the worker: a server may be slow
        self._tools_ready = threading.Event()
        self._stop = threading.Event()
        self._answer = None  # the Answer being streamed
        self._stream = None
        self._streamed = ""
        self._pending: tuple[ApprovalCard, asyncio.Future] | None = None
        self._files: list[str] | None = None
        self._notes: list[str] = []  # told to the model with the next message
        self._query_started = 0.0
        self._app_thread: int | None = None  # set in on_mount
        if config.theme and config.theme in self.available_themes:
            self.theme = config.theme

    # ---- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Conversation(id="conversation")
        yield Static(id="hint")
        yield PromptInput(id="prompt")
        yield StatusBar(id="status")

    def on_mount(self) -> None:
        self._app_thread = threading.get_ident()
        prompt = self.query_one(PromptInput)
        prompt.cursor_blink = self.config.cursor_blink
        prompt.focus()
        self.query_one(Conversation).anchor()
        if self.config.session:
            self._replay(self.config.session.transcript)
            self._mount(Note(f"resumed session {self.session.id}"))
        else:
            self._mount(Note(f"loopcli chat in {self.config.repo.name} — session {self.session.id}. "
                             "F1 or /help for keys and commands."))
        if self.config.theme and self.config.theme not in self.available_themes:
            self._mount(Note(f"unknown theme {self.config.theme!r} (config chat.theme); the "
                             f"themes are: {', '.join(sorted(self.available_themes))}"))
        self.refresh_status()
        self._prepare()

    def on_unmount(self) -> None:
        """Quitting mid-turn: the agent thread stops at its next callback."""
        self._stop.set()
        if self._pending and not self._pending[1].done():
            self._pending[1].set_result("stop")

    def on_resize(self) -> None:
        self.refresh_status()

    @work(thread=True, exit_on_error=False)
    def _prepare(self) -> None:
        """Toolbox, repo map and agent, built after the first screen so it comes up fast."""
        from loopcli.agent import Agent, Limits, build_system_prompt
        from loopcli.fix import make_environment
        from loopcli.tools.toolbox import Toolbox

        import loopcli.chat.answer  # noqa: F401  (loaded here, not before the first screen)

        config = self.config
        try:
            self.branch = _git_branch(config.repo)
            environment = make_environment(config.repo, config.sandbox, config.network)
            self.toolbox = Toolbox(config.repo, store_dir=config.store_dir, environment=environment)
            prompt = build_system_prompt(self.toolbox, config.backend, "", None,
                                         config.map_cache) + CHAT_NOTE
            agent = Agent(config.backend, self.toolbox, prompt, limits=Limits(config.max_steps),
                          record=self._record, on_text=self._on_text, approve=self._approve,
                          conversational=True)
            agent.messages = list(self.session.messages)
            self.agent = agent
            self.context_window = config.backend.context_window
            self.context_used = agent.context_tokens() if agent.messages else 0
        except Exception as exc:  # noqa: BLE001 (shown, never a crash)
            self.call_from_thread(self._mount, ErrorCard(
                f"the chat could not start its tools: {exc}",
                "Fix the problem above and restart `loopcli chat`."))
        finally:
            self._tools_ready.set()
            self.call_from_thread(self.refresh_status)

    # ---- the prompt ----------------------------------------------------------------------

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        self._show_hint([])
        command = commands.parse(message.text)
        if command:
            await self.run_command(*command)
            return
        if self.busy:
            self.notify("The model is still working: wait, or Ctrl+C to stop it.")
            return
        self._mount(UserMessage(message.text))
        self._keep({"kind": "user", "text": message.text})
        self.busy = True
        self._stop.clear()
        if self._shell_interrupt is not None:
            self._shell_interrupt.clear()
        self.refresh_status()
        self._ask(message.text)

    def on_prompt_input_complete_requested(self, message: PromptInput.CompleteRequested) -> None:
        prompt = self.query_one(PromptInput)
        if self._files is None and "@" in prompt.text:
            self._files = commands.repo_files(self.config.repo)
        text, shown = commands.complete(prompt.text, self._files or [])
        if text == prompt.text and not shown and self._pending:
            self._pending[0].focus()  # Tab with nothing to complete: back to the approval
            return
        if text != prompt.text:
            prompt.load_text(text)
            prompt.move_cursor(prompt.document.end)
        self._show_hint(shown)

    def _show_hint(self, shown: list[str]) -> None:
        hint = self.query_one("#hint", Static)
        hint.update(Text("  ".join(shown)))
        hint.set_class(bool(shown), "shown")

    # ---- a turn of the agent (worker thread) -----------------------------------------------

    @work(thread=True, exit_on_error=False, group="turn")
    def _ask(self, text: str) -> None:
        from loopcli.agent import RunResult

        self._tools_ready.wait()
        if self.agent is None:
            self.call_from_thread(self._turn_done, None)
            return
        text = commands.expand_mentions(text, self.config.repo)
        if self._notes:
            text = "\n".join(self._notes) + "\n\n" + text
            self._notes.clear()
        self._query_started = time.monotonic()
        try:
            result = self.agent.ask(text)
        except Exception as exc:  # noqa: BLE001 (a bug below must not take the chat down)
            result = RunResult("chat_error", f"{type(exc).__name__}: {exc}", None,
                               self.agent.steps, self.agent.tokens, 0.0, 0)
        try:
            self.call_from_thread(self._turn_done, result)
        except RuntimeError:
            pass  # the app has quit meanwhile

    def _check_stop(self) -> None:
        if self._stop.is_set():
            from loopcli.agent import Stopped

            raise Stopped("stopped with Ctrl+C")

    def _on_text(self, delta: str) -> None:
        self._check_stop()
        self.call_from_thread(self._append_answer, delta)

    def _ui(self, callback, *args):
        """Run `callback` on the app's thread: from the agent's thread, or directly when a
        command on the app's thread called the agent (/compact records an event)."""
        if threading.get_ident() == self._app_thread:
            return callback(*args)
        return self.call_from_thread(callback, *args)

    def _record(self, event: dict) -> None:
        kind = event["type"]
        if kind == "model":
            self._model_done(event)
        elif kind == "tool":
            entry = {"kind": "tool", "name": event["name"], "arguments": event["arguments"],
                     "ok": event["ok"], "output": event["output"][:widgets_output_chars()]}
            self._ui(self._show_tool, entry)
            self._keep(entry)
            self._query_started = time.monotonic()
            if not self.session.first_checkpoint and self.toolbox.checkpoints.list():
                self.session.first_checkpoint = self.toolbox.checkpoints.list()[0].id
        elif kind in ("format_error", "nudge", "compaction", "limit"):
            detail = event.get("message") or event.get("reason") or event.get("stage") \
                or "; ".join(event.get("errors", []))[:200]
            self._ui(self._mount, Note(f"{kind.replace('_', ' ')}: {detail}"))
        if self.agent is not None:
            self.context_used = self.agent.context_tokens()
            self.session.messages = self.agent.messages
        self.store.save(self.session)
        self._ui(self.refresh_status)
        if kind == "tool":
            self._check_stop()

    def _model_done(self, event: dict) -> None:
        elapsed = time.monotonic() - self._query_started
        completion = event["usage"]["completion_tokens"]
        if completion and elapsed > 0:
            self.tokens_per_second = completion / elapsed
        prose = event["prose"]
        self._ui(self._end_answer, prose)
        if prose.strip():
            self._keep({"kind": "answer", "text": prose})

    def _approve(self, call) -> str | None:
        self._check_stop()
        kind = approvals.kind_of(call.name)
        decision = approvals.decide(self.mode, kind, self.always)
        if decision == "run":
            return None
        title = approvals.describe(call.name, call.arguments)
        if decision == "deny":
            self.call_from_thread(self._mount, Note(f"refused (read-only mode): {title}"))
            return approvals.READ_ONLY
        preview = approvals.preview(self.toolbox, call.name, call.arguments)
        answer = self.call_from_thread(self._ask_user, kind, title, preview)
        self._keep({"kind": "approval", "what": kind, "title": title, "preview": preview,
                    "answer": answer})
        if answer == "stop":
            self._check_stop()
        if answer == "always":
            self.always.add(kind)
        if answer in ("yes", "always"):
            return None
        return approvals.DENIED.format(kind="edit" if kind == "edit" else "shell command")

    # ---- the screen side of a turn (app thread) -------------------------------------------

    def _mount(self, widget) -> None:
        self.query_one(Conversation).mount(widget)

    async def _append_answer(self, delta: str) -> None:
        from loopcli.chat.answer import Answer

        if self._answer is None:
            self._answer = Answer()
            self._streamed = ""
            await self.query_one(Conversation).mount(self._answer)
            self._stream = Answer.get_stream(self._answer)
        self._streamed += delta
        await self._stream.write(delta)

    async def _end_answer(self, prose: str) -> None:
        answer, stream = self._answer, self._stream
        self._answer = self._stream = None
        if stream is not None:
            await stream.stop()
        if answer is not None and prose.strip() != self._streamed.strip():
            # tool calls written as text were streamed too: show the prose without them
            if prose.strip():
                await answer.update(prose)
            else:
                await answer.remove()

    def _show_tool(self, entry: dict) -> None:
        args = entry["arguments"] if isinstance(entry["arguments"], dict) else {}
        self._mount(ToolCard(approvals.describe(entry["name"], entry["arguments"]), entry["name"],
                             entry["ok"], entry["output"], str(args.get("command", ""))))

    async def _ask_user(self, kind: str, title: str, preview: str) -> str:
        card = ApprovalCard(kind, title, preview)
        future = asyncio.get_running_loop().create_future()
        self._pending = (card, future)
        await self.query_one(Conversation).mount(card)
        card.focus()
        card.scroll_visible()
        self.refresh_status()
        try:
            return await future
        finally:
            self._pending = None
            card.add_class("answered")
            card.border_title = _answered(kind, future.result())
            self.query_one(PromptInput).focus()

    def on_approval_card_answered(self, message: ApprovalCard.Answered) -> None:
        if self._pending and self._pending[0] is message.card and not self._pending[1].done():
            self._pending[1].set_result(message.answer)

    def _turn_done(self, result) -> None:
        self.busy = False
        if result is None:
            pass  # the tools could not start: already shown
        elif result.status == "stopped":
            self._mount(Note("stopped."))
        elif result.status == "resolved":
            self._mount(Note(f"the model says it is done: {result.message}"))
        elif result.status != "answered":
            message, hint = _explain(result, self.config)
            self._mount(ErrorCard(message, hint))
            self._keep({"kind": "error", "message": message, "hint": hint})
        self.store.save(self.session)
        self.refresh_status()

    def _keep(self, entry: dict) -> None:
        self.session.transcript.append(entry)

    def _replay(self, transcript: list[dict]) -> None:
        """Show a resumed session's conversation as it was."""
        from loopcli.chat.answer import Answer

        for entry in transcript:
            kind = entry.get("kind")
            if kind == "user":
                self._mount(UserMessage(entry["text"]))
            elif kind == "answer":
                self._mount(Answer(entry["text"]))
            elif kind == "tool":
                self._show_tool(entry)
            elif kind == "approval":
                card = ApprovalCard(entry["what"], entry["title"], entry["preview"])
                card.add_class("answered")
                card.border_title = _answered(entry["what"], entry["answer"])
                self._mount(card)
            elif kind == "error":
                self._mount(ErrorCard(entry["message"], entry.get("hint", "")))
            elif kind == "diff":
                self._mount(DiffView(entry["diff"]))
            elif kind == "note":
                self._mount(Note(entry["text"]))

    # ---- status bar ------------------------------------------------------------------------

    def refresh_status(self) -> None:
        """One line that fits the terminal: the separators narrow first, then the model's
        name, then the state word (its coloured dot stays)."""
        backend = self.config.backend
        rate = f"{self.tokens_per_second:.0f} tok/s" if self.tokens_per_second else "– tok/s"
        word = "● approve? " if self._pending else "● working " if self.busy else ""
        fixed = [f"R={_loops(backend)}",
                 f"ctx {_short(self.context_used)}/{_short(self.context_window)}", rate,
                 self.mode, self.config.sandbox, self.branch or "no branch"]
        name = Path(self.config.model).name if self.config.model else "default model"
        width = self.size.width - 2
        line = state = ""
        for state in dict.fromkeys([word, "● " if word else ""]):
            for sep in (" │ ", "│"):
                rest = sep + sep.join(fixed)
                room = width - len(state) - len(rest)
                keep = room - len(backend.name) - 4
                for model in (f"{name} ({backend.name})",
                              f"{name[:keep]}… ({backend.name})" if keep >= 3 else "",
                              backend.name):
                    if model and len(model) <= room:
                        line = model + rest
                        break
                if line:
                    break
            if line:
                break
        if not line:  # narrower still: cut at the end
            line = backend.name + "│" + "│".join(fixed)
        colour = "bold yellow" if self._pending else "bold green"
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(state, style=colour)
        text.append(line)
        self.query_one(StatusBar).update(text)

    # ---- actions and slash commands --------------------------------------------------------

    @property
    def _shell_interrupt(self) -> threading.Event | None:
        """Set to kill the shell command the agent is running (None before the toolbox)."""
        environment = self.toolbox.environment if self.toolbox is not None else None
        return getattr(environment, "interrupt", None)

    def action_stop(self) -> None:
        if not self.busy:
            self.notify("Nothing to stop. /exit or Ctrl+Q quits.")
            return
        self._stop.set()
        cancel = getattr(self.config.backend, "cancel", None)
        if isinstance(cancel, threading.Event):
            cancel.set()  # the local runtime stops within a step
        if self._shell_interrupt is not None:
            self._shell_interrupt.set()  # a running shell command is killed
        if self._pending and not self._pending[1].done():
            self._pending[1].set_result("stop")
        self.notify("Stopping…")

    def action_next_mode(self) -> None:
        index = approvals.MODES.index(self.mode)
        self.set_mode(approvals.MODES[(index + 1) % len(approvals.MODES)])

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def set_mode(self, mode: str) -> None:
        self.mode = self.session.mode = mode
        self._mount(Note(f"approval mode: {mode}"))
        self._keep({"kind": "note", "text": f"approval mode: {mode}"})
        self.store.save(self.session)
        self.refresh_status()

    async def run_command(self, name: str, arg: str) -> None:
        handler = getattr(self, "cmd_" + name.lstrip("/"), None)
        if name not in commands.COMMANDS or handler is None:
            close = [c for c in commands.COMMANDS if c.startswith(name[:3])]
            self._mount(Note(f"unknown command {name}; try {', '.join(close) or '/help'}"))
            return
        if name in ("/undo", "/diff", "/compact", "/clear") and (self.busy or self.toolbox is None):
            self.notify(f"{name} waits until the model's turn ends (Ctrl+C stops it).")
            return
        result = handler(arg)
        if asyncio.iscoroutine(result):
            await result

    def cmd_help(self, arg: str) -> None:
        self.action_help()

    def cmd_exit(self, arg: str) -> None:
        self.store.save(self.session)
        self.exit()

    def cmd_mode(self, arg: str) -> None:
        if not arg:
            self._mount(Note(f"approval mode: {self.mode} (one of {', '.join(approvals.MODES)})"))
        elif arg in approvals.MODES:
            self.set_mode(arg)
        else:
            self._mount(Note(f"unknown mode {arg!r}; use one of {', '.join(approvals.MODES)}"))

    def cmd_model(self, arg: str) -> None:
        backend = self.config.backend
        if arg and backend.name == "openai" and hasattr(backend, "model"):
            backend.model = self.config.model = arg
            self._mount(Note(f"model: {arg} (served by {self.config.base_url})"))
            self.refresh_status()
        elif arg:
            self._mount(Note(f"the {backend.name} backend loads its model at start: restart with "
                             f"`loopcli chat --model {arg}`"))
        else:
            self._mount(Note(f"model: {self.config.model or 'the default'} ({backend.name} backend)"))

    def cmd_undo(self, arg: str) -> None:
        from loopcli.tools.errors import ToolError

        try:
            message = self.toolbox.checkpoints.undo()
        except ToolError as exc:
            message = str(exc)
        else:
            self._notes.append(f"(The user ran /undo: {message.splitlines()[0]})")
            message = "\n".join(message.splitlines()[:2])  # what was restored, which files
        self._mount(Note(f"undo: {message}"))
        self._keep({"kind": "note", "text": f"undo: {message}"})
        self.store.save(self.session)

    def cmd_diff(self, arg: str) -> None:
        from loopcli.tools.errors import ToolError

        try:
            diff = self.toolbox.checkpoints.diff(self.session.first_checkpoint)
        except ToolError:
            diff = ""
        if diff.strip():
            self._mount(DiffView(diff))
            self._keep({"kind": "diff", "diff": diff})
        else:
            self._mount(Note("no changes in this session."))

    def cmd_compact(self, arg: str) -> None:
        before, after = self.agent.compact()
        self.context_used = after
        self.session.messages = self.agent.messages
        self.store.save(self.session)
        self._mount(Note(f"compacted: {before:,} -> {after:,} tokens of context"))
        self.refresh_status()

    async def cmd_clear(self, arg: str) -> None:
        self.store.save(self.session)
        self.session = self.store.new(self.config.repo, self.mode)
        self.agent.messages = []
        self.context_used = 0
        await self.query_one(Conversation).remove_children()
        self._mount(Note(f"new conversation — session {self.session.id}"))
        self.refresh_status()

    def cmd_tokens(self, arg: str) -> None:
        spent = self.agent.tokens if self.agent else 0
        rate = f"{self.tokens_per_second:.1f}" if self.tokens_per_second else "–"
        window = f"{self.context_window:,}" if self.context_window else "?"
        self._mount(Note(f"context: {self.context_used:,} of {window}"
                         f" tokens; spent since the chat started: {spent:,}; last answer: {rate} tok/s"))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for name, (arg, what) in commands.COMMANDS.items():
            yield SystemCommand(name, what, lambda name=name: self.run_worker(
                self.run_command(name, "")))


# ---- helpers ----------------------------------------------------------------------------------


def _answered(kind: str, answer: str) -> str:
    """The title of an approval card once answered."""
    return {"yes": f"{kind} approved", "always": f"{kind} approved, and all later ones",
            "no": f"{kind} denied", "stop": "stopped"}.get(answer, answer)


def widgets_output_chars() -> int:
    from loopcli.chat.widgets import OUTPUT_CHARS

    return OUTPUT_CHARS


def _loops(backend) -> str:
    """The model's loop count R, where the backend knows it: the local runtime's config, and
    llama.cpp, which runs only R = 1 architectures (it refuses `loopcoder` GGUFs)."""
    cfg = getattr(getattr(backend, "engine", None), "cfg", None)
    if cfg is not None and hasattr(cfg, "num_loops"):
        return str(cfg.num_loops)
    return "1" if getattr(backend, "name", None) == "llama.cpp" else "?"


def _short(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _git_branch(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=repo,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _explain(result, config: ChatConfig) -> tuple[str, str]:
    """The error of a turn that did not end in an answer, and what the user can do."""
    message = result.message
    if result.status == "chat_error":
        return (f"loopcli chat failed: {message}", "This is a bug in loopcli; the session is "
                "saved: restart with `loopcli chat --resume`, and please report it.")
    if result.status == "limit" and result.limit == "context":
        return message, "The conversation no longer fits the context: /compact, or /clear to start over."
    if result.status == "limit":
        return message, "Send 'go on' to let the model continue, or restart with a higher --max-steps."
    if result.status == "backend_error":
        if "context" in message.lower():
            hint = "/compact or /clear, or restart with a larger --ctx."
        elif config.backend.name == "openai":
            hint = (f"Is the server at {config.base_url} running and reachable? Start it (or "
                    "restart with the right --base-url), then send the message again.")
        else:
            hint = "Check the model and backend (--backend, --model), then send the message again."
        return message, hint
    return message, "Rephrase the request, or /clear to start over."
