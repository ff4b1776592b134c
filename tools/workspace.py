"""The workspace: one root directory; every path a tool touches is resolved and confined to it."""

from __future__ import annotations

import codecs
import mimetypes
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolError

# Bytes read to decide whether a file is text; git sniffs a similar prefix.
SNIFF_BYTES = 8192
# Files above either limit are "huge": tools show a summary and windows, never the whole file.
HUGE_BYTES = 1_000_000
HUGE_LINES = 20_000

# Directories of tool state or third-party code, skipped when the root is not a git work tree.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".eggs", ".cache",
    ".idea", ".vscode", ".loopcli-cache",
})

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# Control bytes that do not occur in text; a legacy 8-bit text file has few of them.
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\f\b\x1b")


@dataclass(frozen=True)
class FileInfo:
    """What a tool needs to know before reading a file."""

    path: str  # root-relative POSIX path
    size: int  # bytes
    binary: bool
    lines: int | None  # None for binary files

    @property
    def huge(self) -> bool:
        return self.size > HUGE_BYTES or (self.lines or 0) > HUGE_LINES

    @property
    def kind(self) -> str:
        """A short type description: the MIME type guessed from the name, or a generic one."""
        guessed, _ = mimetypes.guess_type(self.path, strict=False)
        if guessed:
            return guessed
        return "binary data" if self.binary else "text"

    def summary(self) -> str:
        if self.binary:
            return f"{self.path}: binary file ({self.kind}), {format_size(self.size)}"
        adjective = "huge text file" if self.huge else "text file"
        size = format_size(self.size)
        return f"{self.path}: {adjective} ({self.kind}), {size}, {plural(self.lines, 'line')}"


def plural(count: int, noun: str) -> str:
    """'1 file', '2,048 files'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000:
            break
    return f"{scaled:.1f} {unit}"


def is_binary_prefix(prefix: bytes) -> bool:
    """Whether a file starting with `prefix` (its first SNIFF_BYTES) is binary.

    UTF-16 text (with a BOM) is text; NUL bytes otherwise mean binary, and so do control
    bytes in numbers no text has. Anything else is text: UTF-8, or a legacy 8-bit encoding
    (cp1252, latin-1) that the text tools decode byte for byte.
    """
    if prefix.startswith(_UTF16_BOMS):
        return False
    if b"\0" in prefix:
        return True
    controls = len(prefix) - len(prefix.translate(None, _CONTROL))
    return controls > len(prefix) // 20


def count_lines(path: Path) -> int:
    """Lines as editors count them: newlines, plus one for an unterminated last line."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


class Workspace:
    def __init__(self, root: str | os.PathLike):
        root_path = Path(root)
        if not root_path.is_dir():
            raise ToolError(f"workspace root {root} is not a directory")
        self.root = root_path.resolve()

    def resolve(self, path: str | os.PathLike, *, for_write: bool = False) -> Path:
        """Absolute, symlink-free path of `path` (relative to the root or absolute inside it).

        Refuses anything that lands outside the root (``..``, absolute paths elsewhere,
        symlinks that escape) and, for writes, anything inside ``.git``.
        """
        raw = Path(path)
        candidate = raw if raw.is_absolute() else self.root / raw
        real = Path(os.path.realpath(candidate))
        if real != self.root and self.root not in real.parents:
            raise ToolError(
                f"path {path} is outside the workspace {self.root}; use a path inside it"
            )
        if for_write and ".git" in real.relative_to(self.root).parts:
            raise ToolError(f"path {path} is inside .git, which tools never write")
        return real

    def relative(self, path: Path) -> str:
        """The root-relative POSIX form of an already resolved path, as shown to the model."""
        return path.relative_to(self.root).as_posix() or "."

    def file_info(self, path: str | os.PathLike) -> FileInfo:
        """Size, binary or not, and line count of a regular file inside the workspace."""
        real = self.resolve(path)
        try:
            size = real.stat().st_size
            if not real.is_file():
                raise ToolError(f"{self.relative(real)} is not a regular file")
            with open(real, "rb") as handle:
                binary = is_binary_prefix(handle.read(SNIFF_BYTES))
            lines = None if binary else count_lines(real)
        except FileNotFoundError:
            raise ToolError(f"{path} does not exist; check the path") from None
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}") from None
        return FileInfo(self.relative(real), size, binary, lines)

    def files(self) -> list[str]:
        """Every file of the project as sorted root-relative POSIX paths.

        In a git work tree: tracked plus untracked-but-not-ignored files (what .gitignore
        leaves). Elsewhere: a walk that skips SKIP_DIRS. Symlinks that leave the root,
        submodules and files deleted from disk are left out.
        """
        listed = self._git_files()
        if listed is None:
            listed = self._walk_files()
        return sorted(p for p in listed if self._is_inside_file(p))

    def _git_files(self) -> list[str] | None:
        """`git ls-files` output relative to the root, or None when git cannot list it."""
        # GIT_OPTIONAL_LOCKS=0: git must not refresh or lock the index on our behalf.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        try:
            proc = subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None  # not a work tree, or git refuses it (e.g. "dubious ownership")
        names = os.fsdecode(proc.stdout).split("\0")
        # a path in both the index and the tree of a merge conflict is listed more than once
        return list(dict.fromkeys(name for name in names if name))

    def _walk_files(self) -> list[str]:
        found = []
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            base = Path(folder).relative_to(self.root)
            found.extend((base / name).as_posix() for name in names)
        return found

    def _is_inside_file(self, relative: str) -> bool:
        """A regular file, or a symlink to one inside the root (one lstat for plain files)."""
        path = self.root / relative
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        if stat.S_ISREG(mode):
            return True
        if not stat.S_ISLNK(mode):
            return False
        real = Path(os.path.realpath(path))
        return self.root in real.parents and real.is_file()
