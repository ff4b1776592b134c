import os
import subprocess
from pathlib import Path

import pytest

from loopcli.tools import workspace as workspace_module
from loopcli.tools.errors import ToolError
from loopcli.tools.workspace import (
    SNIFF_BYTES, Workspace, count_lines, format_size, is_binary_prefix,
)

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=root, env=GIT_ENV, check=True, capture_output=True,
    )


def write(root: Path, rel: str, content: str | bytes = "x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.fixture
def layout(tmp_path):
    """A workspace root next to a directory outside it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write(root, "src/app.py")
    write(outside, "secret.txt", "secret\n")
    return Workspace(root), root, outside


# ---- confinement ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["..", "../outside/secret.txt", "src/../../outside/secret.txt"])
def test_dotdot_escapes_are_refused(layout, path):
    ws, _, _ = layout
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.resolve(path)


def test_absolute_path_outside_is_refused_inside_is_allowed(layout):
    ws, root, outside = layout
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.resolve(outside / "secret.txt")
    assert ws.resolve(root / "src" / "app.py") == (root / "src" / "app.py").resolve()


def test_symlink_to_outside_is_refused(layout):
    ws, root, outside = layout
    (root / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.resolve("link.txt")


def test_symlinked_parent_directory_is_refused(layout):
    ws, root, outside = layout
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.resolve("linkdir/secret.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.resolve("linkdir/new_file.txt", for_write=True)


def test_symlink_inside_root_resolves_to_its_target(layout):
    ws, root, _ = layout
    (root / "alias.py").symlink_to(root / "src" / "app.py")
    assert ws.resolve("alias.py") == (root / "src" / "app.py").resolve()


@pytest.mark.parametrize("path", [".git/config", ".git", "sub/.git/hooks/pre-commit"])
def test_git_directories_are_never_writable(layout, path):
    ws, root, _ = layout
    (root / ".git").mkdir()
    with pytest.raises(ToolError, match=r"\.git"):
        ws.resolve(path, for_write=True)
    assert ws.resolve(path) == (root / path).resolve()  # reading is fine


def test_symlink_into_git_is_not_writable(layout):
    ws, root, _ = layout
    write(root, ".git/config", "[core]\n")
    (root / "innocent.cfg").symlink_to(root / ".git" / "config")
    with pytest.raises(ToolError, match=r"\.git"):
        ws.resolve("innocent.cfg", for_write=True)


def test_relative_shows_posix_paths_and_dot_for_root(layout):
    ws, root, _ = layout
    assert ws.relative(ws.resolve("src/app.py")) == "src/app.py"
    assert ws.relative(ws.root) == "."


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(ToolError, match="not a directory"):
        Workspace(write(tmp_path, "file.txt"))


# ---- binary and huge files -----------------------------------------------------------------

@pytest.mark.parametrize("prefix", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"text then a NUL\x00 byte",
    bytes(range(1, 32)) * 20,  # control bytes without NULs: not text in any encoding
])
def test_binary_prefixes(prefix):
    assert is_binary_prefix(prefix)


@pytest.mark.parametrize("prefix", [
    b"plain ascii\n",
    "unicode: \u00e9\u4e2d\U0001f600\n".encode(),
    "caf\u00e9 in latin-1\n".encode("latin-1"),
    "\ufeffutf-16 text\n".encode("utf-16-le"),
    b"",
])
def test_text_prefixes(prefix):
    assert not is_binary_prefix(prefix)


def test_multibyte_character_cut_by_the_sniff_is_still_text():
    data = ("a" * (SNIFF_BYTES - 1) + "\u4e2d").encode()
    assert not is_binary_prefix(data[:SNIFF_BYTES])


@pytest.mark.parametrize("content, lines", [
    (b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n", 2), (b"x\n" * 300_000, 300_000),
])
def test_count_lines(tmp_path, content, lines):
    assert count_lines(write(tmp_path, "f", content)) == lines


def test_file_info_of_text_binary_and_huge_files(tmp_path):
    ws = Workspace(tmp_path)
    write(tmp_path, "small.py", "a = 1\nb = 2\n")
    write(tmp_path, "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 10)
    write(tmp_path, "big.txt", "y" * 99 + "\n" * 1 + ("z" * 99 + "\n") * 11_000)
    write(tmp_path, "long.txt", "short line\n" * (workspace_module.HUGE_LINES + 1))

    small = ws.file_info("small.py")
    assert (small.binary, small.huge, small.lines, small.size) == (False, False, 2, 12)
    assert small.summary() == "small.py: text file (text/x-python), 12 bytes, 2 lines"

    logo = ws.file_info("logo.png")
    assert logo.binary and logo.lines is None
    assert logo.summary() == "logo.png: binary file (image/png), 2.6 KB"

    big = ws.file_info("big.txt")
    assert big.huge and not big.binary
    assert "huge text file" in big.summary() and "1.1 MB" in big.summary()
    assert "11,001 lines" in big.summary()

    assert ws.file_info("long.txt").huge  # few bytes, too many lines


def test_file_info_refuses_directories_missing_files_and_escapes(layout):
    ws, _, _ = layout
    with pytest.raises(ToolError, match="not a regular file"):
        ws.file_info("src")
    with pytest.raises(ToolError, match="does not exist"):
        ws.file_info("src/nope.py")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.file_info("../outside/secret.txt")


@pytest.mark.parametrize("size, text", [
    (0, "0 bytes"), (999, "999 bytes"), (1_500, "1.5 KB"), (2_000_000, "2.0 MB"),
    (3_200_000_000, "3.2 GB"),
])
def test_format_size(size, text):
    assert format_size(size) == text


# ---- listing files -------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root, ".gitignore", "*.log\nbuild/\n")
    write(root, "src/app.py")
    write(root, "src/gone.py")
    write(root, "src/sub/.gitignore", "local.txt\n")
    write(root, "src/sub/local.txt")
    write(root, "src/sub/kept.txt")
    write(root, "debug.log")
    write(root, "build/out.js")
    write(root, "docs/notes with space.md")
    git(root, "add", ".gitignore", "src/app.py", "src/gone.py", "src/sub/.gitignore")
    git(root, "commit", "-q", "-m", "init")
    (root / "src" / "gone.py").unlink()  # tracked but deleted from the work tree
    write(root, "new_untracked.py")
    return root


def test_files_in_git_repo_respects_gitignore(repo):
    assert Workspace(repo).files() == [
        ".gitignore", "docs/notes with space.md", "new_untracked.py", "src/app.py",
        "src/sub/.gitignore", "src/sub/kept.txt",
    ]


def test_files_in_a_subdirectory_of_a_repo_are_relative_to_the_root(repo):
    assert Workspace(repo / "src").files() == ["app.py", "sub/.gitignore", "sub/kept.txt"]


def test_files_never_writes_to_git(repo):
    def snapshot():
        return {
            p: (p.stat().st_mtime_ns, p.stat().st_size)
            for p in (repo / ".git").rglob("*") if p.is_file()
        }
    before = snapshot()
    Workspace(repo).files()
    assert snapshot() == before


def test_files_without_git_walks_and_skips_tool_directories(tmp_path):
    for rel in ["a.py", "pkg/b.py", ".git/HEAD", "node_modules/x/index.js", "pkg/__pycache__/b.pyc",
                ".venv/lib/site.py", "pkg.egg-info/PKG-INFO", "deep/er/c.txt"]:
        write(tmp_path, rel)
    assert Workspace(tmp_path).files() == ["a.py", "deep/er/c.txt", "pkg/b.py"]


def test_files_falls_back_to_walking_when_git_is_missing(repo, monkeypatch):
    monkeypatch.setenv("PATH", "")
    listed = Workspace(repo).files()
    assert "debug.log" in listed  # no git: .gitignore is not applied
    assert not any(p.startswith(".git/") for p in listed)


def test_files_leaves_out_symlinks_that_escape(tmp_path):
    root = tmp_path / "root"
    write(root, "real.py")
    write(tmp_path, "outside.py")
    (root / "escape.py").symlink_to(tmp_path / "outside.py")
    (root / "alias.py").symlink_to(root / "real.py")
    (root / "dangling.py").symlink_to(root / "missing.py")
    assert Workspace(root).files() == ["alias.py", "real.py"]
