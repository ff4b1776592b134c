"""Read and write text files faithfully: what the model does not edit stays byte for byte.

Reading detects:

* the encoding: a UTF-8 BOM, a UTF-16 BOM (LE or BE), plain UTF-8, and otherwise a single-byte
  fallback: cp1252 when every byte is defined there (Windows text shows its curly quotes and
  euro signs as such), else latin-1. Both fallbacks map each byte to one character and back, so
  decode + encode is the identity and unedited bytes survive. A file with NUL bytes and no
  UTF-16 BOM is binary and refused.
* the line endings: the model sees LF only. Edits are spliced into the original text, so the
  lines they do not touch keep their own ending (even in a file mixing CRLF and LF); the new
  lines get the file's majority ending.
* the final newline: an edited file ends with a newline exactly when it did before (an empty
  file has no convention, so its first content is written as given).

Writes are atomic (a temp file in the same directory, then ``os.replace``) and keep the
file's mode bits. Reads and writes go through directory descriptors without following symlinks
(``workspace.read_file`` / ``write_file``), so a parent swapped for a symlink after the path was
checked cannot redirect them. Replacing the file breaks hard links and gives it the writer's
owner; a symlink is followed by the caller's path resolution, so the link itself stays.
"""

from __future__ import annotations

import bisect
import codecs
import functools
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from . import workspace
from .errors import ToolError

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


@dataclass(frozen=True)
class TextFile:
    """A decoded file: `raw` keeps its original line endings, `text` is the LF view."""

    raw: str
    encoding: str
    bom: bytes = b""
    newline: str = "\n"  # ending given to lines an edit adds
    final_newline: bool | None = None  # None: the file was empty, no convention to keep
    mode: int | None = None  # permission bits to restore; None for a new file

    @functools.cached_property
    def text(self) -> str:
        return self.raw.replace("\r\n", "\n")

    @functools.cached_property
    def _crlf_at(self) -> list[int]:
        """Indices in `text` of the newlines that are CRLF in `raw`, ascending."""
        return [m.start() - i for i, m in enumerate(re.finditer("\r\n", self.raw))]

    def _raw_index(self, index: int) -> int:
        # each CRLF before `index` adds one character to the raw position
        return index + bisect.bisect_left(self._crlf_at, index)

    def splice(self, start: int, end: int, new: str) -> TextFile:
        """The file with `text[start:end]` replaced by `new` (LF line endings)."""
        return self.splice_many([(start, end, new)])

    def splice_many(self, edits: list[tuple[int, int, str]]) -> TextFile:
        """The file with each `text[start:end]` replaced by its `new`, in one pass.

        `edits` are (start, end, new) in ascending order, not overlapping; the cost is linear
        in the file however many there are.
        """
        parts, done = [], 0
        for start, end, new in edits:
            parts.append(self.raw[done:self._raw_index(start)])
            parts.append(new.replace("\r\n", "\n").replace("\n", self.newline))
            done = self._raw_index(end)
        parts.append(self.raw[done:])
        raw = "".join(parts)
        return replace(self, raw=_keep_final_newline(raw, self.final_newline, self.newline))

    def encode(self) -> bytes:
        try:
            return self.bom + self.raw.encode(self.encoding)
        except UnicodeEncodeError as exc:
            char = exc.object[exc.start]
            raise ToolError(
                f"the file is {self.encoding}-encoded and cannot hold the character {char!r} "
                f"(U+{ord(char):04X}); write it with characters that encoding has, or as an escape"
            ) from None


def _keep_final_newline(raw: str, final_newline: bool | None, newline: str) -> str:
    if final_newline is None or not raw:
        return raw
    if final_newline and not raw.endswith("\n"):
        return raw + newline
    if not final_newline and raw.endswith("\n"):
        return raw[:-2] if raw.endswith("\r\n") else raw[:-1]
    return raw


def decode(data: bytes) -> TextFile:
    """Decode file bytes, detecting encoding, BOM, line endings and final newline."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                raw = data[len(bom):].decode(encoding)
            except UnicodeDecodeError:
                raise ToolError(f"the file has a {encoding} BOM but is not valid {encoding}")
            return _text_file(raw, encoding, bom)
    if b"\0" in data:
        raise ToolError("the file looks binary (it has NUL bytes); it cannot be edited as text")
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            return _text_file(data.decode(encoding), encoding, b"")
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


def _text_file(raw: str, encoding: str, bom: bytes) -> TextFile:
    crlf = raw.count("\r\n")
    newline = "\r\n" if crlf > raw.count("\n") - crlf else "\n"
    final = raw.endswith("\n") if raw else None
    return TextFile(raw=raw, encoding=encoding, bom=bom, newline=newline, final_newline=final)


def read(path: Path) -> TextFile:
    """Read and decode `path`; it must exist and be a regular file."""
    try:
        data, mode = workspace.read_file(path)  # no symlink, FIFO or device on the way
        mode = stat.S_IMODE(mode)
    except FileNotFoundError:
        raise ToolError(f"{path.name} does not exist; check the path")
    except IsADirectoryError:
        raise ToolError(f"{path.name} is a directory, not a file")
    except OSError as exc:
        raise ToolError(f"cannot read {path.name}: {exc.strerror}")
    try:
        return replace(decode(data), mode=mode)
    except ToolError as exc:
        raise ToolError(f"{path.name}: {exc}") from None


def new_file(text: str) -> TextFile:
    """A file that does not exist yet: UTF-8, LF, its content exactly as given."""
    return TextFile(raw=text.replace("\r\n", "\n"), encoding="utf-8")


def write(path: Path, file: TextFile) -> None:
    """Atomically write `file` to `path` (absolute, symlink-free), creating parent directories."""
    data = file.encode()  # before touching the disk, so an unencodable edit writes nothing
    mode = file.mode if file.mode is not None else 0o666 & ~_umask()
    try:
        workspace.write_file(path, data, mode)  # through directory descriptors, then a rename
    except OSError as exc:
        raise ToolError(f"cannot write {path.name}: {exc.strerror}") from None


@functools.cache
def _umask() -> int:
    # the only portable way to read the umask is to set it; do it once per process
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
