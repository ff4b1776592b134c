"""The workspace: one root directory; every path a tool touches is resolved and confined to it."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ToolError


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
