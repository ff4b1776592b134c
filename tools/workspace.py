"""The workspace: one root directory; every path a tool touches is resolved and confined to it."""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import mimetypes
import os
import re
import secrets
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
# Characters HFS+ ignores in names, so ".g\u200cit" is .git there (git refuses such names too).
_HFS_IGNORED = dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                      "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"))
_SHORT_GIT = re.compile(r"git~\d+", re.I)  # the 8.3 short name NTFS gives .git
# Directories are walked one component at a time with these: a symlink fails the open.
_DIR_FLAGS = (getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
    with open(path, "rb") as handle:
        return _count_lines(handle)


def _count_lines(handle) -> int:
    count, last = 0, b"\n"
    while chunk := handle.read(1 << 20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")


def is_git_dir_name(name: str) -> bool:
    """Whether a path component is .git to some file system: any case (``.GIT``), trailing dots
    or spaces (``.git.``, ``.git ``), an NTFS stream (``.git::$INDEX_ALLOCATION``), the short
    name ``GIT~1`` or HFS+ ignorable characters. Git refuses every one of them in a tree."""
    base = name.translate(_HFS_IGNORED).split(":", 1)[0].rstrip(". ")
    return base.casefold() == ".git" or bool(_SHORT_GIT.fullmatch(base))


# ---- race-free file access ------------------------------------------------------------------
# Workspace.resolve checks a path, but a parent directory swapped for a symlink between that
# check and the open would redirect the open. So files are opened through directory
# descriptors, one component at a time from "/", refusing symlinks (O_NOFOLLOW): the path
# opened is exactly the symlink-free path that was checked. (A directory *moved* elsewhere
# after it was opened is not detected.) Only regular files are read or written: FIFOs and
# devices are refused (opened O_NONBLOCK, so checking never blocks).


def _race_error(real: Path, exc: OSError) -> ToolError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return ToolError(f"{real} changed while in use (a directory on its way became a symlink "
                         "or a file); refused")
    return ToolError(f"cannot open {real}: {exc.strerror}")


def open_dir(real: Path, create: bool = False) -> int:
    """A descriptor of the directory `real` (absolute and symlink-free, as resolve returns it);
    with `create`, missing directories are made. The caller closes it."""
    if not real.is_absolute():
        raise ToolError(f"internal: {real} is not an absolute path")
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in real.parts[1:]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: the open checks it
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_file(real: Path) -> int:
    """A read-only descriptor of the regular file `real` (absolute and symlink-free), opened
    through its parent's descriptor; a symlink, FIFO, device or directory there is refused."""
    try:
        parent = open_dir(real.parent)
        try:
            fd = os.open(real.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=parent)
        finally:
            os.close(parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _race_error(real, exc) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ToolError(f"{real.name} is {_kind(mode)}, not a regular file; tools only read "
                        "regular files")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def read_file(real: Path) -> tuple[bytes, int]:
    """(content, st_mode) of the regular file `real`, read without following symlinks."""
    with os.fdopen(open_file(real), "rb") as handle:
        return handle.read(), os.fstat(handle.fileno()).st_mode


def write_file(real: Path, data: bytes, mode: int) -> None:
    """Atomically replace (or create) the regular file `real` with `data` and permission bits
    `mode`: a temporary file in the same directory, then a rename, both through the
    directory's descriptor; missing directories are made. Refuses to replace anything that is
    not a regular file (a FIFO, a device, a directory, a symlink that appeared meanwhile)."""
    try:
        parent = open_dir(real.parent, create=True)
    except OSError as exc:
        raise _race_error(real.parent, exc) from None
    tmp = f".{real.name[:100]}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            existing = os.stat(real.name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing):
            raise ToolError(f"{real.name} is {_kind(existing)}, not a regular file; tools only "
                            "write regular files")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), stat.S_IMODE(mode))  # 0600 at creation; keep the bits
            os.replace(tmp, real.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    finally:
        os.close(parent)


class Workspace:
    def __init__(self, root: str | os.PathLike):
        root_path = Path(root)
        if not root_path.is_dir():
            raise ToolError(f"workspace root {root} is not a directory")
        self.root = root_path.resolve()

    def resolve(self, path: str | os.PathLike, *, for_write: bool = False) -> Path:
        """Absolute, symlink-free path of `path` (relative to the root or absolute inside it).

        Refuses anything that lands outside the root (``..``, absolute paths elsewhere,
        symlinks that escape) and, for writes, anything inside ``.git`` or a name that is
        ``.git`` to some file system (``.GIT``, ``.git.``, ``GIT~1``: see is_git_dir_name).
        """
        raw = Path(path)
        candidate = raw if raw.is_absolute() else self.root / raw
        try:
            real = Path(os.path.realpath(candidate))
        except OSError as exc:  # a link vanished mid-resolution, a loop, a name too long
            raise ToolError(f"cannot resolve {path}: {exc.strerror}") from None
        if real != self.root and self.root not in real.parents:
            raise ToolError(
                f"path {path} is outside the workspace {self.root}; use a path inside it"
            )
        if for_write and any(map(is_git_dir_name, real.relative_to(self.root).parts)):
            raise ToolError(f"path {path} is inside .git (or a name git treats as .git), "
                            "which tools never write")
        return real

    def relative(self, path: Path) -> str:
        """The root-relative POSIX form of an already resolved path, as shown to the model."""
        return path.relative_to(self.root).as_posix() or "."

    def file_info(self, path: str | os.PathLike) -> FileInfo:
        """Size, binary or not, and line count of a regular file inside the workspace."""
        real = self.resolve(path)
        try:
            with os.fdopen(open_file(real), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                binary = is_binary_prefix(handle.read(SNIFF_BYTES))
                handle.seek(0)
                lines = None if binary else _count_lines(handle)
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
