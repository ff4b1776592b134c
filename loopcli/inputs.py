"""The text files a user gives a command (`perplexity --file`, `diagnose --file`), read with
one clear error for each way they can be wrong."""

from __future__ import annotations

from pathlib import Path

from loopcli.runtime.errors import ModelError


def read_text_file(path: Path, option: str = "--file") -> str:
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise ModelError(f"text file {path} {what}; give an existing text file to {option}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text; give a text file to {option}") from None
    if not text:
        raise ModelError(f"{path} is empty; give a file with some text to {option}")
    return text
