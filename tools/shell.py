"""Running shell commands for the model: non-interactive, bounded in time, size and output.

Each command is a fresh ``bash -c`` in the workspace root (no state carries over between
calls, as in mini-swe-agent), run by an execution environment (tools/environment.py: local,
or confined by the sandbox) that kills everything it started on timeout. Here: what the
model may send (not empty, not huge, no terminal programs).
"""

from __future__ import annotations

import os
import re
import shlex

from .environment import LocalEnvironment, ShellResult  # noqa: F401  (ShellResult: re-exported)
from .errors import ToolError
from .workspace import Workspace

# A command longer than this is refused before it is parsed or run: it is data written as a
# command (write it to a file with the write tool instead), and parsing it costs time.
MAX_COMMAND_BYTES = 64 * 1024


def run(ws: Workspace, command: str, timeout: float = 120, max_output: int = 30_000,
        environment=None) -> ShellResult:
    """Run `command` with bash in the workspace root, stdin closed, stdout+stderr merged, in
    `environment` (a tools.environment one; default: a LocalEnvironment, unconfined)."""
    if not command.strip():
        raise ToolError("the command is empty; give the shell command to run")
    size = len(command.encode("utf-8", "surrogatepass"))
    if size > MAX_COMMAND_BYTES:
        raise ToolError(f"the command is {size:,} bytes, over the limit of {MAX_COMMAND_BYTES:,}: "
                        "write long content to a file with the write tool, then run a short "
                        "command that uses it")
    if "\0" in command:
        raise ToolError("the command contains a NUL byte, which bash cannot take; remove it")
    if timeout <= 0:
        raise ToolError(f"timeout must be a positive number of seconds, got {timeout}")
    refusal = interactive_refusal(command)
    if refusal:
        raise ToolError(refusal)
    environment = environment or LocalEnvironment(ws.root)
    return environment.run(command, timeout=timeout, max_output=max_output)


# ---- refusing interactive programs -------------------------------------------------------

_EDITORS = {"vi", "vim", "nvim", "view", "vimdiff", "gvim", "nano", "pico", "emacs", "micro",
            "joe", "jed", "mcedit", "ne", "kak", "hx", "helix"}
_PAGERS = {"less", "more", "most", "pg"}
_SCREENS = {"top", "htop", "btop", "atop", "iotop", "nmon", "watch", "tmux", "screen", "mc",
            "ranger", "nnn", "vifm", "tig", "lazygit", "nmtui", "alsamixer"}
# interpreter -> arguments that make it run code instead of starting a REPL
_REPLS = {
    "python": ("-c", "-m"), "python3": ("-c", "-m"), "pypy": ("-c", "-m"), "pypy3": ("-c", "-m"),
    "ipython": ("-c", "-m"), "node": ("-e", "-p", "--eval", "--print"), "deno": (),
    "irb": (), "pry": (), "ruby": ("-e",), "php": ("-r",), "lua": ("-e",),
    "ghci": ("-e",), "julia": ("-e", "-E"), "R": ("-e", "-f"), "sqlite3": (),
    "psql": ("-c", "-f"), "mysql": ("-e",), "bash": ("-c",), "sh": ("-c",), "zsh": ("-c",),
    "dash": ("-c",), "fish": ("-c",), "gdb": ("-batch", "--batch", "-ex"), "pdb": (),
}
_SHELLS = {"bash", "sh", "zsh", "dash", "fish"}
_INFO_FLAGS = {"--version", "-V", "--help", "-h", "-v"}
# wrapper -> its options that take a value (the wrapped command follows them)
_WRAPPERS = {"sudo": {"-u", "-g"}, "env": {"-u", "-C"}, "timeout": {"-s", "-k"}, "nice": {"-n"},
             "ionice": {"-c", "-n"}, "time": set(), "nohup": set(), "command": set(),
             "exec": set(), "stdbuf": set(), "builtin": set(), "unbuffer": set()}
_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "{"}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][\w.-]*)\1")
_PUNCT = "();<>|&\n"
# options that give git a message, so that it opens no editor
_GIT_COMMIT_MESSAGE = ("-m", "--message", "-F", "--file", "--no-edit", "-C", "--reuse-message",
                       "--fixup")
_GIT_TAG_MESSAGE = ("-m", "--message", "-F", "--file")
# `GIT_EDITOR=... git commit`: the caller chose an editor that works without a terminal
_EDITOR_VARIABLES = {"GIT_EDITOR", "EDITOR", "VISUAL", "GIT_SEQUENCE_EDITOR"}
# subcommands whose -p/--patch asks hunk by hunk; of those, -i is interactive only for these
_GIT_PATCH_MODE = {"add", "checkout", "reset", "restore", "stash", "commit"}
_GIT_INTERACTIVE_I = {"add", "clean"}


def interactive_refusal(command: str) -> str | None:
    """Why `command` would wait for a terminal user, or None when it looks non-interactive.

    Conservative: a command that cannot be parsed is let through (bash reports its errors).
    """
    try:
        commands = list(_simple_commands(_strip_heredocs(command)))
    except ValueError:
        return None
    for words, fed_stdin, assignments in commands:
        reason = _refusal(words, fed_stdin, assignments)
        if reason:
            return reason
    return None


def _strip_heredocs(command: str) -> str:
    """The command without here-document bodies (their text is data, not commands)."""
    kept, delimiter = [], None
    for line in command.split("\n"):
        if delimiter is not None:
            if line.strip() == delimiter:
                delimiter = None
            continue
        kept.append(line)
        found = _HEREDOC.search(line.replace("<<<", "   "))
        delimiter = found.group(2) if found else None
    return "\n".join(kept)


def _simple_commands(command: str):
    """(words, stdin comes from a pipe or redirect, NAME=value prefixes) per simple command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=_PUNCT)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    words, assignments, fed, after_pipe, skip_next = [], {}, False, False, False
    for token in lexer:
        if token and all(ch in _PUNCT for ch in token):
            if "<" in token or ">" in token:
                fed |= "<" in token
                skip_next = True  # the redirect's target is not a word of the command
                continue
            yield words, fed or after_pipe, assignments
            words, assignments, fed = [], {}, False
            after_pipe = token.rstrip("\n") in ("|", "|&")
            continue
        if skip_next:
            skip_next = False
        elif not words and re.fullmatch(r"[A-Za-z_]\w*=.*", token, re.S):
            name, _, value = token.partition("=")
            assignments[name] = value
        else:
            words.append(token)
    yield words, fed or after_pipe, assignments


def _unwrap(words: list[str]) -> list[str]:
    """The words after keywords and wrappers like `sudo -u x`, `env A=1`, `timeout 10`."""
    while words and (words[0] in _KEYWORDS or os.path.basename(words[0]) in _WRAPPERS):
        name, words = os.path.basename(words[0]), words[1:]
        if name == "command" and words[:1] in (["-v"], ["-V"]):
            return []  # `command -v vim` only looks the program up
        valued = _WRAPPERS.get(name, set())
        while words and (words[0].startswith("-") or "=" in words[0]
                         or (name == "timeout" and words[0][:1].isdigit())):
            words = words[2:] if words[0] in valued else words[1:]
    return words


def _refusal(words: list[str], fed_stdin: bool, assignments: dict[str, str]) -> str | None:
    words = _unwrap(words)
    if not words:
        return None
    name, args = os.path.basename(words[0]), words[1:]
    if name in _EDITORS and not _editor_is_scripted(args):
        return (f"`{name}` is an interactive editor and there is no terminal here. "
                "Use the view and edit tools, or sed/a heredoc in the shell.")
    if name in _PAGERS:
        return (f"`{name}` is a pager and there is no terminal here. Use the view tool, "
                "or cat/head/tail/sed -n in the shell.")
    if name in _SCREENS:
        return (f"`{name}` is a full-screen or never-ending program and there is no terminal here. "
                "Run a command that prints once (e.g. `ps aux`, `git log`) instead.")
    if name == "tail" and any(a in ("-f", "-F", "--follow") or a.startswith("--follow=")
                              for a in args):
        return "`tail -f` never ends. Use `tail -n 100 FILE` to read the end once."
    if name == "git":
        return _git_refusal(args, assignments)
    if _repl_key(name) in _REPLS:
        return _repl_refusal(name, args, fed_stdin)
    return None


def _repl_key(name: str) -> str:
    """python3.11 -> python3, pypy3.9 -> pypy3: versioned names behave like the plain one."""
    return re.sub(r"(\d)\.\d+$", r"\1", name)


def _editor_is_scripted(args: list[str]) -> bool:
    """vim -es / nvim --headless / emacs --batch run without a terminal."""
    scripted = {"-es", "-Es", "-e", "--headless", "--batch", "-batch", "--script"}
    return any(arg in scripted for arg in args)


def _repl_refusal(name: str, args: list[str], fed_stdin: bool) -> str | None:
    runs_code = _REPLS[_repl_key(name)]
    if name in _SHELLS:
        flag = next((i for i, a in enumerate(args) if _has_option([a], "-c")), None)
        if flag is not None:  # `bash -c "..."`: judge the inner command
            return interactive_refusal(args[flag + 1]) if flag + 1 < len(args) else None
    if fed_stdin or any(not a.startswith("-") or a == "-" for a in args):
        return None  # a script, a file, or code on stdin
    if any(a in _INFO_FLAGS for a in args) or any(_has_option(args, f) for f in runs_code):
        return None
    example = f"{name} {runs_code[0] if runs_code else 'script'} ..."
    return (f"`{' '.join([name, *args])}` starts an interactive session and there is no terminal "
            f"here (stdin is closed). Run a script or pass the code inline (`{example}`), "
            "or pipe it in with a heredoc.")


def _git_refusal(args: list[str], assignments: dict[str, str]) -> str | None:
    sub, rest = _git_subcommand(args)
    if sub is None or _EDITOR_VARIABLES & assignments.keys():
        return None
    patch = sub in _GIT_PATCH_MODE and (_has_option(rest, "-p") or _has_option(rest, "--patch"))
    asks = sub in _GIT_INTERACTIVE_I and (_has_option(rest, "-i")
                                          or _has_option(rest, "--interactive"))
    if patch or asks:
        return (f"`git {sub}` in patch/interactive mode asks questions and there is no terminal "
                "here. Name the files or paths instead (or edit the files, then `git add FILE`).")
    if sub == "rebase" and (_has_option(rest, "-i") or _has_option(rest, "--interactive")):
        return ("`git rebase -i` opens an editor and there is no terminal here. Use a plain "
                "`git rebase`, or set GIT_SEQUENCE_EDITOR to a sed command that edits the todo.")
    if sub == "commit" and not any(_has_option(rest, opt) for opt in _GIT_COMMIT_MESSAGE):
        return ("`git commit` without a message opens an editor and there is no terminal here. "
                "Pass the message: `git commit -m \"...\"` (or --no-edit with --amend).")
    if sub == "tag" and any(_has_option(rest, o) for o in ("-a", "-s", "--annotate", "--sign")) \
            and not any(_has_option(rest, opt) for opt in _GIT_TAG_MESSAGE):
        return "`git tag -a` without a message opens an editor. Pass it with -m \"...\"."
    return None


def _git_subcommand(args: list[str]) -> tuple[str | None, list[str]]:
    """Skip git's global options (-C dir, -c k=v, --no-pager, ...) to find the subcommand."""
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") else 1
    if index >= len(args):
        return None, []
    return args[index], args[index + 1:]


def _has_option(args: list[str], option: str) -> bool:
    """`--long`, `--long=value`, `-batch`, or `-x` alone or in a cluster like `-am` / `-cCODE`."""
    for arg in args:
        if arg == "--":
            return False
        if len(option) > 2:
            if arg == option or arg.startswith(option + "="):
                return True
        elif arg.startswith("-") and not arg.startswith("--") and option[1] in arg[1:]:
            return True
    return False
