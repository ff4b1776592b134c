"""No traceback from anything a model or server sends.

A fuzzing backend feeds random hostile turns (lone surrogates, NUL bytes, JSON nested 1,000
deep, non-object arguments, broken call markup, unknown tools, hostile paths, backend
exceptions mid-stream) through the real agent and tools; every run must end in one of the
documented statuses with a readable trajectory. By default 150 turns run; LOOPCLI_SLOW=1
runs 1,200. A fake OpenAI-compatible server then sends malformed SSE streams to `loopcli fix`.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentkit import ISSUE, make_buggy_repo, read_events, run_cli
from agentkit import hermetic  # noqa: F401  (fixture)
from loopcli.agent import Agent, Limits, Trajectory
from loopcli.backends.base import BackendError, Finish, TextDelta, ToolCall, Usage
from loopcli.fix import EXIT_CODES

pytestmark = pytest.mark.usefixtures("hermetic")
FULL = os.environ.get("LOOPCLI_SLOW") == "1"
TURNS = 1_200 if FULL else 150
TURNS_PER_RUN = 6
STATUSES = set(EXIT_CODES)

DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a": ' * 1000 + "1" + "}" * 1000
NASTY = ["\ud800", "\udcff", "\x00", "\x1b[31m", "[bold]markup[/]", "\u202e", "é", "\r\n",
         "<tool_call>", "</tool_call>", "<function=shell>", "<parameter=command>",
         "</parameter>", "</function>", "```json\n", "\n```", '{"name": "view", "arguments": ',
         DEEP, DEEP_OBJECT, "{", "}", ",", '"', "'", "\\", "null"]
PATHS = ["calc/ops.py", "new.txt", "../outside.txt", "/etc/passwd", "a\x00b", "a\ud800b",
         ".GIT/config", ".git/hooks/pre-commit", "pipe", "", ".", "GIT~1/x", "x" * 300]
COMMANDS = ["echo hi", "printf '\\000\\377\\376'", "false", "ls -la", "head -c 5 blob",
            "printf 'caf\\351\\n'", "echo \ud800", "echo a\x00b", "git status"]
TOOLS = ["view", "search", "find_files", "outline", "replace", "write", "shell", "undo", "diff",
         "finish", "no_such_tool", "", "VIEW", "shell\x00"]

texts = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=40)), max_size=12).map("".join)
values = st.one_of(st.sampled_from(PATHS), st.sampled_from(COMMANDS), texts, st.integers(),
                   st.booleans(), st.none(), st.just([1, [2]]), st.floats(allow_nan=True))
objects = st.dictionaries(st.sampled_from(["path", "command", "old", "new", "content", "pattern",
                                           "start", "limit", "overwrite", "summary", "zzz",
                                           "\ud800"]), values, max_size=4)
arguments = st.one_of(objects, objects.map(json.dumps), st.sampled_from(
    [DEEP, DEEP_OBJECT, '{"path": ' * 990 + '"x"' + "}" * 990, "[1, 2]", "5", "null", '"str"',
     "{not json", "\ud800", "\x00", ""]), st.just([1, 2]), st.just(7), st.none())
native_calls = st.builds(lambda name, args: ToolCall(name, args, ""), st.sampled_from(TOOLS),
                         arguments)


def _text_call(name: str, args) -> str:
    try:
        body = json.dumps({"name": name, "arguments": args})
    except (ValueError, TypeError):
        body = str(args)
    return f"<tool_call>\n{body}\n</tool_call>"


text_calls = st.builds(_text_call, st.sampled_from(TOOLS), objects)
turns = st.fixed_dictionaries({
    "text": st.one_of(texts, text_calls, st.lists(text_calls, max_size=3).map("\n".join)),
    "calls": st.lists(native_calls, max_size=3),
    "failure": st.sampled_from([None] * 8 + ["backend", "crash", "cut"]),
})


class FuzzBackend:
    """Replays hostile turns; a failure makes the stream raise part way, as servers do."""

    name = "fuzz"
    context_window = 32_768

    def __init__(self, script: list[dict]):
        self.script = list(script)
        self.served = 0

    def stream(self, messages, tools):
        json.dumps(messages)  # what a real backend does with the messages: they must encode
        turn = self.script.pop(0) if self.script else {"text": "", "calls": [], "failure": None}
        self.served += 1
        yield TextDelta(turn["text"][: len(turn["text"]) // 2])
        if turn["failure"] == "backend":
            raise BackendError("the server went away")
        if turn["failure"] == "crash":
            raise ValueError("a bug in a backend")
        yield TextDelta(turn["text"][len(turn["text"]) // 2:])
        if turn["failure"] == "cut":
            return  # the stream just ends: no calls, usage or finish reason
        yield from turn["calls"]
        yield Usage(10, 5)
        yield Finish("tool_calls" if turn["calls"] else "stop")

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1


def test_fuzzed_model_output_never_escapes_the_agent(tmp_path):
    from loopcli.tools.toolbox import Toolbox

    repo = make_buggy_repo(tmp_path)
    os.mkfifo(repo / "pipe")
    outside = tmp_path / "outside.txt"
    box = Toolbox(repo, store_dir=tmp_path / "store")
    counts = {"turns": 0, "runs": 0}

    @settings(max_examples=TURNS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(turns, min_size=1, max_size=TURNS_PER_RUN))
    def one_run(script):
        if counts["turns"] >= TURNS:
            return  # enough: hypothesis cannot be told to stop otherwise
        backend = FuzzBackend(script)
        path = tmp_path / "trajectory.jsonl"
        with Trajectory(path) as trajectory:
            agent = Agent(backend, box, "system", limits=Limits(max_steps=len(script)),
                          record=trajectory.write)
            result = agent.run("task")
        assert result.status in STATUSES
        events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert all(isinstance(e, dict) for e in events)
        counts["turns"] += backend.served
        counts["runs"] += 1

    one_run()
    assert not outside.exists()
    assert counts["turns"] >= TURNS, counts
    print(f"\nfuzzed turns through the agent: {counts['turns']} in {counts['runs']} runs")


# ---- loopcli fix against a hostile OpenAI-compatible server -------------------------------

def _sse(*chunks) -> bytes:
    out = b""
    for chunk in chunks:
        data = chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()
        out += b"data: " + data + b"\n\n"
    return out


def _delta(**delta) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _call_delta(args: str, name: str = "view") -> dict:
    return _delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": name, "arguments": args}}])


DONE = b"data: [DONE]\n\n"
STREAMS = {
    "not_json": _sse(_delta(content="hi")) + b"data: {this is not json\n\n" + DONE,
    "not_an_object": _sse(5, [1, 2], "text", None, _delta(content="x")) + DONE,
    "wrong_shapes": _sse({"choices": "x"}, {"choices": [5, {"delta": "y"}]},
                         {"choices": [{"delta": {"content": 7, "tool_calls": "z"}}]},
                         {"usage": "many"}) + DONE,
    "surrogates_and_nul": b'data: {"choices": [{"index": 0, "delta": {"content": '
                          b'"\\ud800 and \\u0000 and \\udcff"}}]}\n\n' + DONE,
    "deep_arguments": _sse(_call_delta(DEEP)) + DONE,
    "deep_object_arguments": _sse(_call_delta(DEEP_OBJECT)) + DONE,
    "non_object_arguments": _sse(_call_delta("[1, 2]")) + DONE,
    "surrogate_arguments": _sse(_call_delta('{"path": "\\ud800"}')) + DONE,
    "cut": "cut",  # headers and a first chunk, then the connection drops
}


class Hostile(http.server.BaseHTTPRequestHandler):
    stream = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.stream == "cut":
            piece = _sse(_delta(content="partial rep"))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"ff\r\ndata: {\"cho")  # a chunk that never completes
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.stream), self.stream))


@pytest.fixture
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("kind", list(STREAMS))
def test_malformed_streams_end_in_a_documented_exit_code(kind, hostile_server, tmp_path,
                                                         capsys, monkeypatch):
    Hostile.stream = STREAMS[kind]
    repo = make_buggy_repo(tmp_path)
    trajectory = tmp_path / "t.jsonl"
    url = f"http://127.0.0.1:{hostile_server.server_address[1]}/v1"
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(repo), "--backend",
                             "openai", "--base-url", url, "--max-steps", "4", "--test-cmd",
                             "true", "--trajectory", str(trajectory))
    assert "Traceback" not in err
    last = read_events(trajectory)[-1]
    assert last["type"] == "result" and last["exit_code"] == code, err
    assert code in (1, 3, 4), err  # a repeated call, backend failure / format errors, step limit
    if kind in ("not_json", "cut"):
        assert code == 3 and last["status"] == "backend_error"
        assert "malformed stream" in err or "cannot reach" in err or "failed" in err


def test_a_script_nested_too_deeply_is_bad_input(tmp_path, capsys, monkeypatch):
    repo = make_buggy_repo(tmp_path)
    script = tmp_path / "s.jsonl"
    script.write_text('{"text": "", "tool_calls": [{"name": "view", "arguments": '
                      + DEEP_OBJECT + "}]}\n")
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(repo), "--backend",
                             "scripted", "--model", str(script))
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err


def test_lone_surrogates_and_nul_from_a_scripted_model_reach_the_trajectory(tmp_path, capsys,
                                                                            monkeypatch):
    repo = make_buggy_repo(tmp_path)
    script = tmp_path / "s.jsonl"
    turns = [{"text": "\\ud800 odd \\u0000", "tool_calls": [
        {"name": "write", "arguments": {"path": "n\\udcffw.txt", "content": "a\\u0000\\ud800"}}]},
        {"text": "", "tool_calls": [{"name": "view", "arguments": '{"path": ' * 500 + "}"}]},
        {"text": "", "tool_calls": [{"name": "finish", "arguments": ["not", "an", "object"]}]}]
    script.write_text("".join(json.dumps(t).replace("\\\\u", "\\u") + "\n" for t in turns))
    trajectory = tmp_path / "t.jsonl"
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(repo), "--backend",
                             "scripted", "--model", str(script), "--test-cmd", "true", "--json",
                             "--trajectory", str(trajectory))
    assert "Traceback" not in err
    events = read_events(trajectory)
    assert events[-1]["type"] == "result" and events[-1]["exit_code"] == code
    assert [json.loads(line) for line in out.splitlines()][-1]["type"] == "result"
    assert code == 0  # finish with a non-object argument list still finishes (no summary)
    assert (repo / "n\ufffdw.txt").read_bytes() == "a\x00\ufffd".encode()
    assert not Path(str(repo / "n")).exists()


def test_json_events_survive_a_non_utf8_repository_name(tmp_path):
    import subprocess
    import sys

    from agentkit import FIX_TURNS, TEST_CMD, write_script

    repo = make_buggy_repo(tmp_path).rename(tmp_path / os.fsdecode(b"caf\xe9-\xff"))
    script = write_script(tmp_path / "s.jsonl", FIX_TURNS)
    trajectory = tmp_path / "t.jsonl"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "loopcli", "fix", ISSUE, "--repo", str(repo),
                           "--backend", "scripted", "--model", str(script), "--test-cmd",
                           TEST_CMD, "--json", "--trajectory", str(trajectory)],
                          capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    events = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    assert events[0]["repo"] == str(repo) and events[-1]["type"] == "result"
    assert read_events(trajectory)[0]["repo"] == str(repo)
