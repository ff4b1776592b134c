"""The pieces of the chat screen: messages, tool cards, diffs, approvals, prompt, status bar."""

from __future__ import annotations

import re

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Collapsible, Static, TextArea

from loopcli.chat.commands import COMMANDS

_TEST_COMMAND = re.compile(r"\b(pytest|npm test|go test|cargo test|unittest|jest|vitest)\b")
_PLURAL = {"edit": "edits", "shell": "shell commands"}
OUTPUT_CHARS = 4000  # of a tool's output kept in its card (the model saw it all)


def diff_text(diff: str) -> Text:
    """A unified diff coloured line by line (hand-written: rich's Syntax re-lexes the whole
    diff and colours nothing more useful)."""
    text = Text(no_wrap=False)
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        else:
            style = ""
        text.append(line + "\n", style=style)
    text.rstrip()
    return text


class UserMessage(Static):
    def __init__(self, text: str):
        super().__init__(Text(text), classes="user")


class Note(Static):
    """A line from the chat itself (mode switched, undo done...)."""

    def __init__(self, text: str, classes: str = "note"):
        super().__init__(Text(text), classes=classes)


class ErrorCard(Static):
    def __init__(self, message: str, hint: str):
        body = Text()
        body.append("error: ", style="bold red")
        body.append(message)
        if hint:
            body.append("\n" + hint, style="italic")
        super().__init__(body, classes="error")


class DiffView(Static):
    def __init__(self, diff: str, **kwargs):
        super().__init__(diff_text(diff), classes="diff", **kwargs)


class ToolCard(Collapsible):
    """One tool call: a title line (mark, tool, what it is about) and its output, folded."""

    def __init__(self, title: str, name: str, ok: bool, output: str, command: str = ""):
        mark = "✓" if ok else "✗"
        if name == "shell" and _TEST_COMMAND.search(command):
            title += "  — tests passed" if ok else "  — tests FAILED"
        shown = output if len(output) <= OUTPUT_CHARS else output[:OUTPUT_CHARS] + "\n…"
        body = DiffView(shown) if name in ("diff",) or shown.startswith("---") else \
            Static(Text(shown), classes="output")
        super().__init__(body, title=escape(f"{mark} {title}"), collapsed=True,
                         classes="tool ok" if ok else "tool failed")


class ApprovalCard(Vertical, can_focus=True):
    """A call waiting for the user: y approve, a always (this kind, this session), n deny."""

    BINDINGS = [Binding("y", "answer('yes')", "approve"),
                Binding("a", "answer('always')", "always"),
                Binding("n", "answer('no')", "deny")]

    class Answered(Message):
        def __init__(self, card: ApprovalCard, answer: str):
            super().__init__()
            self.card, self.answer = card, answer

    def __init__(self, kind: str, title: str, preview: str):
        super().__init__(classes="approval")
        self.kind, self.title, self.preview = kind, title, preview
        self.border_title = f"approve {kind}?"

    def compose(self):
        if self.kind == "edit":
            yield Static(Text(self.title, style="bold"))
            yield DiffView(self.preview)
        else:
            yield Static(Text("$ " + self.preview), classes="command")
        yield Static(Text.from_markup(
            f"[b]y[/] approve   [b]a[/] always approve {_PLURAL[self.kind]} this session   "
            "[b]n[/] deny"),
            classes="keys")

    def action_answer(self, answer: str) -> None:
        self.post_message(self.Answered(self, answer))


class Conversation(VerticalScroll):
    """The scrolling conversation; follows new output until the user scrolls up."""


class PromptInput(TextArea):
    """Multi-line prompt: Enter sends, Ctrl+J (or Shift/Alt+Enter) adds a line, Up/Down at the
    first/last line walk the history, Tab completes `/commands` and `@paths`."""

    NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class CompleteRequested(Message):
        pass

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.sent: list[str] = []
        self._sent_index = 0  # position in history while walking it; len(history): the draft
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                if not self.sent or self.sent[-1] != text:
                    self.sent.append(text)
                self._sent_index = len(self.sent)
                self.clear()
                self.post_message(self.Submitted(text))
            return
        if key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if key == "tab":
            event.stop()
            event.prevent_default()
            self.post_message(self.CompleteRequested())
            return
        row = self.cursor_location[0]
        if key == "up" and row == 0 and self.sent:
            event.stop()
            event.prevent_default()
            self._walk(-1)
            return
        if key == "down" and row == self.document.line_count - 1 and self._sent_index < len(self.sent):
            event.stop()
            event.prevent_default()
            self._walk(1)
            return
        await super()._on_key(event)

    def _walk(self, step: int) -> None:
        if self._sent_index == len(self.sent):
            self._draft = self.text
        self._sent_index = max(0, min(len(self.sent), self._sent_index + step))
        self.load_text(self.sent[self._sent_index] if self._sent_index < len(self.sent) else self._draft)
        self.move_cursor(self.document.end)


class StatusBar(Static):
    """model · backend · R · context used/limit · tok/s · mode · sandbox · branch."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,f1", "dismiss", "close")]

    def compose(self):
        keys = [("Enter", "send the message"), ("Ctrl+J", "new line (also Shift+Enter, Alt+Enter)"),
                ("Up / Down", "history (at the first / last line)"),
                ("Tab", "complete /commands and @file paths; else back to an approval"),
                ("Ctrl+C", "stop the answer or tool under way (does not quit)"),
                ("Ctrl+T", "next approval mode"), ("Ctrl+P", "command palette"),
                ("F1", "this help"), ("Ctrl+Q", "quit"),
                ("y / a / n", "on an approval: approve, always approve this kind, deny")]
        modes = [("read-only", "edits and commands are refused"),
                 ("ask", "edits and commands wait for you (default)"),
                 ("auto-edit", "edits apply, commands wait for you"),
                 ("yolo", "everything runs, inside the sandbox policy")]
        commands = [(name, f"{what} {arg}".rstrip()) for name, (arg, what) in COMMANDS.items()]
        parts = []
        for title, rows in (("Keys", keys), ("Commands", commands), ("Approval modes", modes)):
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            for row in rows:
                table.add_row(*map(Text, row))  # Text: "[name]" is no markup
            parts += [Text(title, style="bold underline"), table, Text("")]
        parts.append(Text("Esc closes this screen.", style="italic"))
        with VerticalScroll(id="help"):
            yield Static(Group(*parts))
