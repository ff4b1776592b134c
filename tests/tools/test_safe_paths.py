"""Paths without races: symlink swaps mid-call, .git look-alikes, FIFOs and other special files.

The racing tests run a bounded number of writes and reads by default; LOOPCLI_SLOW=1 runs
the counts of the issue (see tests/fuzzcounts.py).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from loopcli.tools import edit, view
from loopcli.tools.errors import ToolError
from loopcli.tools.toolbox import Toolbox
from loopcli.tools.workspace import Workspace, is_git_dir_name

FULL = os.environ.get("LOOPCLI_SLOW") == "1"
RACE_WRITES = 10_000 if FULL else 1_000
RACE_READS = 5_000 if FULL else 300


@pytest.fixture
def layout(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "note.txt").write_text("inside\n")
    (outside / "note.txt").write_text("OUTSIDE-SECRET\n")
    return root, outside


# Swaps root/sub between the real directory and a symlink to `outside` as fast as it can, in
# its own process (true parallelism), until root/../stop exists; prints how many swaps it made.
SWAPPER = r"""
import os, shutil, sys
root, outside = sys.argv[1], sys.argv[2]
sub, away, stop = root + "/sub", root + "/sub-away", root + "/../stop"
swaps = 0
while not os.path.exists(stop):
    try:
        os.rename(sub, away)
        os.symlink(outside, sub)
        swaps += 1
        os.unlink(sub)
        os.rename(away, sub)
    except OSError:  # a write made a fresh sub/ meanwhile: put the real one back
        try:
            if os.path.islink(sub):
                os.unlink(sub)
            elif os.path.isdir(sub) and os.path.isdir(away):
                shutil.rmtree(sub, ignore_errors=True)
            if os.path.isdir(away) and not os.path.lexists(sub):
                os.rename(away, sub)
        except OSError:
            pass
print(swaps)
"""


def _race(layout, action, count: int) -> tuple[int, int]:
    root, outside = layout
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root), str(outside)],
                               stdout=subprocess.PIPE, text=True)
    done = refused = 0
    try:
        for i in range(count):
            try:
                action(i)
                done += 1
            except ToolError:
                refused += 1
    finally:
        (root.parent / "stop").touch()
        swaps = int(swapper.communicate(timeout=60)[0])
    assert swaps > 100, "the race hardly happened; the test proves nothing"
    return done, refused


def test_writes_never_land_outside_while_a_parent_is_swapped_for_a_symlink(layout, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what is tested here
    root, outside = layout
    ws = Workspace(root)
    done, refused = _race(layout, lambda i: edit.write(ws, f"sub/f{i % 50}.txt", f"{i}\n",
                                                       overwrite=True), RACE_WRITES)
    assert sorted(p.name for p in outside.iterdir()) == ["note.txt"]
    assert (outside / "note.txt").read_text() == "OUTSIDE-SECRET\n"
    assert done > 0 and done + refused == RACE_WRITES


def test_reads_never_see_outside_while_a_parent_is_swapped_for_a_symlink(layout):
    ws = Workspace(layout[0])
    seen: list[str] = []
    done, _ = _race(layout, lambda i: seen.append(view.view(ws, "sub/note.txt")), RACE_READS)
    assert done > 0
    assert not [text for text in seen if "OUTSIDE" in text]
    assert all("inside" in text for text in seen)


# ---- .git look-alikes ---------------------------------------------------------------------

LOOK_ALIKES = [".GIT/config", ".Git/hooks/pre-commit", ".git./x", ".git /x", ".git../x",
               "GIT~1/x", "git~12/x", "sub/.GIT/x", ".git::$INDEX_ALLOCATION/x", ".g\u200cit/x",
               ".git"]


@pytest.mark.parametrize("path", LOOK_ALIKES)
def test_git_look_alikes_are_refused_for_writes(tmp_path, path):
    ws = Workspace(tmp_path)
    with pytest.raises(ToolError, match="inside .git"):
        ws.resolve(path, for_write=True)
    box = Toolbox(tmp_path, store_dir=tmp_path.parent / f"{tmp_path.name}-store")
    result = box.call("write", {"path": path, "content": "x\n"})
    assert not result.ok and "inside .git" in result.output
    assert not (tmp_path / path).exists()


@pytest.mark.parametrize("name", [".gitignore", ".github", ".gitattributes", "x.git", "git~x",
                                  "git", "GIT", "my.git."])
def test_ordinary_names_are_not_look_alikes(tmp_path, name):
    assert not is_git_dir_name(name)
    assert Workspace(tmp_path).resolve(f"{name}/f", for_write=True)


def test_a_look_alike_made_by_the_shell_does_not_break_later_checkpoints(tmp_path):
    (tmp_path / "a.txt").write_text("a\n")
    box = Toolbox(tmp_path, store_dir=tmp_path.parent / f"{tmp_path.name}-store")
    made = box.call("shell", {"command": "mkdir .GIT 'GIT~1' && echo x > .GIT/config && "
                                         "echo y > 'GIT~1/f' && echo b > a.txt"})
    assert made.ok, made.output
    edited = box.call("write", {"path": "b.txt", "content": "b\n"})
    assert edited.ok, edited.output
    assert box.call("undo").ok  # the write
    assert box.call("undo").ok  # the shell command's edit of a.txt
    assert (tmp_path / "a.txt").read_text() == "a\n"
    assert not (tmp_path / "b.txt").exists()
    # git cannot record them, so undo leaves them alone rather than failing or deleting them
    assert (tmp_path / ".GIT" / "config").read_text() == "x\n"


# ---- special files ------------------------------------------------------------------------


def _special_files(root: Path) -> list[str]:
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    return ["pipe", "sock"]


CALLS = [("view", {}), ("outline", {}), ("replace", {"old": "a", "new": "b"}),
         ("write", {"content": "x", "overwrite": True}), ("replace_symbol", {"symbol": "f", "code": "def f(): pass"})]


@pytest.mark.parametrize("tool,extra", CALLS, ids=[c[0] for c in CALLS])
def test_fifos_and_sockets_are_refused_without_blocking(tmp_path, tool, extra):
    root = tmp_path / "root"
    root.mkdir()
    names = _special_files(root)
    box = Toolbox(root, store_dir=tmp_path / "store")
    results = []

    def work():
        for name in names:
            results.append(box.call(tool, {"path": name, **extra}))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), f"{tool} blocked on a FIFO"
    assert len(results) == 2
    for result in results:
        assert not result.ok
        assert "not a regular file" in result.output or "does not exist" not in result.output
    assert (root / "pipe").exists() and not (root / "pipe").is_file()  # not replaced either


def test_file_info_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ToolError, match="FIFO"):
        Workspace(tmp_path).file_info("pipe")


def test_a_device_node_is_refused(tmp_path):
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs root (FIFOs and sockets above take the same path)")
    box = Toolbox(tmp_path, store_dir=tmp_path.parent / f"{tmp_path.name}-store")
    for tool, extra in CALLS:
        result = box.call(tool, {"path": "null", **extra})
        assert not result.ok and "device" in result.output, (tool, result.output)
    assert stat.S_ISCHR((tmp_path / "null").lstat().st_mode)
