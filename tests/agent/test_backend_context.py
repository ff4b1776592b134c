"""--ctx for every backend, the llama.cpp default context, and the openai backend against a fake
OpenAI-compatible server on loopback: server errors with the server's message, the context
window where the server tells it, and the live token line of `fix`."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from rich.console import Console

from loopcli import prompts
from loopcli.agent import build_system_prompt
from loopcli.backends import factory, openai_compat
from loopcli.backends.base import BackendError, Finish, TextDelta, collect
from loopcli.backends.factory import make_backend
from loopcli.backends.gguf_context import Metadata, default_context, read_metadata
from loopcli.backends.scripted import ScriptedBackend
from loopcli.cli import cli
from loopcli.fix import FixConfig, MeteredBackend, run_fix
from loopcli.tools.toolbox import Toolbox

MESSAGES = [{"role": "user", "content": "hi"}]
OVERFLOW = {"error": {"code": 400, "message": "request (9000 tokens) exceeds the available "
                      "context size (4096 tokens)", "type": "exceed_context_size_error",
                      "n_prompt_tokens": 9000, "n_ctx": 4096}}


class FakeServer:
    """An OpenAI-compatible server in a thread; `routes` maps (method, path) to a reply:
    (status, JSON body or text), (200, [SSE lines]) for a stream, or a function of the request
    body returning one of those. Unknown paths answer 404."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer("GET", None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._answer("POST", json.loads(self.rfile.read(length) or b"{}"))

            def _answer(self, method, body):
                path = self.path.split("?")[0]
                server.requests.append((method, path, body))
                route = server.routes.get((method, path), (404, {"error": "no route"}))
                status, reply = route(body) if callable(route) else route
                if isinstance(reply, list):  # a stream of SSE lines
                    self.send_response(status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for line in reply:
                        self.wfile.write((line + "\n\n").encode())
                    return
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def paths(self, method: str) -> list[str]:
        return [p for m, p, _ in self.requests if m == method]


@pytest.fixture
def server():
    fake = FakeServer()
    fake.routes[("GET", "/v1/models")] = (200, {"object": "list", "data": [
        {"id": "coder", "object": "model", "created": 0, "owned_by": "me"}]})
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()
    fake.thread.join(timeout=10)


def backend(server, **opts):
    return make_backend("openai", base_url=server.url, timeout=10, max_retries=0, **opts)


def chunk(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                  "model": "coder", "choices": [{"index": 0, "delta": delta,
                                                                 "finish_reason": finish}]})


# ---- context discovery ----------------------------------------------------------------------


def test_context_from_vllm_max_model_len(server):
    server.routes[("GET", "/v1/models")] = (200, {"object": "list", "data": [
        {"id": "coder", "object": "model", "created": 0, "owned_by": "vllm",
         "max_model_len": 12288}]})
    assert backend(server).context_window == 12288
    assert "/props" not in server.paths("GET")


@pytest.mark.parametrize("props", [{"default_generation_settings": {"n_ctx": 8192}},
                                   {"n_ctx": 8192}])
def test_context_from_llama_server_props(server, props):
    server.routes[("GET", "/props")] = (200, props)
    assert backend(server).context_window == 8192


@pytest.mark.parametrize("props", [{"n_ctx": "big"}, {"n_ctx": -1}, {"n_ctx": 10**12}, [1, 2],
                                   {"default_generation_settings": "x"}])
def test_unreadable_or_absent_context_falls_back_to_the_default(server, props):
    server.routes[("GET", "/props")] = (200, props)
    assert backend(server).context_window == openai_compat.DEFAULT_CONTEXT
    del server.routes[("GET", "/props")]  # a server without /props (404)
    assert backend(server).context_window == openai_compat.DEFAULT_CONTEXT


def test_ctx_overrides_the_server_and_asks_nothing(server):
    server.routes[("GET", "/props")] = (200, {"n_ctx": 8192})
    assert backend(server, ctx=3000).context_window == 3000
    assert server.requests == []


# ---- server errors --------------------------------------------------------------------------


def stream_error(server, reply) -> str:
    server.routes[("POST", "/v1/chat/completions")] = reply
    with pytest.raises(BackendError) as err:
        collect(backend(server, model="coder").stream(MESSAGES, []))
    return str(err.value)


def test_http_context_overflow_names_the_window_and_keeps_the_servers_message(server):
    model = backend(server, model="coder")
    server.routes[("POST", "/v1/chat/completions")] = (400, OVERFLOW)
    with pytest.raises(BackendError) as err:
        collect(model.stream(MESSAGES, []))
    message = str(err.value)
    assert "HTTP 400" in message and "does not fit 4,096 context window" in message
    assert "request (9000 tokens) exceeds the available context size (4096 tokens)" in message
    assert model.context_window == 4096  # what the server said, for the next run's budget


@pytest.mark.parametrize("status, body, expected", [
    (500, {"detail": "CUDA out of memory"}, "HTTP 500: CUDA out of memory"),
    (503, "model is loading", "HTTP 503: model is loading"),
    (422, {"object": "error", "message": "tools: unknown field 'x'"}, "HTTP 422: tools: unknown field 'x'"),
])
def test_http_errors_carry_the_servers_message(server, status, body, expected):
    assert expected in stream_error(server, (status, body))


def test_vllm_error_object_inside_the_stream(server):
    line = "data: " + json.dumps({"object": "error", "message": "This model's maximum context "
                                  "length is 2048 tokens. However, you requested 3000 tokens.",
                                  "type": "BadRequestError", "code": 400})
    message = stream_error(server, (200, [line, "data: [DONE]"]))
    assert "does not fit its context window" in message and "maximum context length is 2048" in message


def test_openai_error_chunk_inside_the_stream(server):
    line = "data: " + json.dumps({"error": {"message": "slot unavailable", "code": 503}})
    assert "reported an error: slot unavailable" in stream_error(server, (200, [line]))


def test_empty_stream_is_asked_again_to_learn_the_servers_error(server):
    # llama-server reports errors on a stream as an "error:" SSE field, which clients skip
    def reply(body):
        if body.get("stream"):
            return 200, ["error: " + json.dumps(OVERFLOW["error"])]
        return 400, OVERFLOW
    message = stream_error(server, reply)
    assert "does not fit 4,096 context window" in message
    posts = [b for m, p, b in server.requests if m == "POST"]
    assert [b["stream"] for b in posts] == [True, False] and posts[1]["max_tokens"] == 1


def test_empty_stream_from_a_server_with_nothing_to_say(server):
    def reply(body):
        return (200, []) if body.get("stream") else (200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": "coder",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "a"}}]})
    assert "ended its reply without any output" in stream_error(server, reply)


def test_a_normal_stream_still_works(server):
    server.routes[("POST", "/v1/chat/completions")] = (200, [
        chunk({"role": "assistant", "content": "hel"}), chunk({"content": "lo"}),
        chunk({}, "stop"), "data: [DONE]"])
    reply = collect(backend(server, model="coder").stream(MESSAGES, []))
    assert reply.text == "hello" and reply.finish_reason == "stop"


def test_fix_reports_a_context_overflow_as_a_backend_error(server, tmp_path):
    server.routes[("POST", "/v1/chat/completions")] = (400, OVERFLOW)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    config = FixConfig("make x 2", repo, backend(server, model="coder", ctx=16384),
                       trajectory=tmp_path / "t.jsonl", store_dir=tmp_path / "store",
                       map_cache=tmp_path / "map")
    result = run_fix(config)
    assert result.status == "backend_error" and result.exit_code == 3
    assert "context window" in result.message and "did not call a tool" not in result.message


# ---- --ctx for every backend ----------------------------------------------------------------


def test_ctx_reaches_the_scripted_backend_through_fix(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"tool_calls": [{"name": "view", "arguments": {"path": "."}}]}) + "\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    result = CliRunner().invoke(cli, ["fix", "make x 2", "--repo", str(repo), "--backend",
                                      "scripted", "--model", str(script), "--ctx", "300",
                                      "--trajectory", str(tmp_path / "t.jsonl")],
                                env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.exit_code == 4, result.output  # a 300-token window cannot hold the prompt
    assert "context window allows" in result.output
    start = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert start["type"] == "start"


@pytest.mark.parametrize("kind, argument", [("local", "max_context"), ("llama.cpp", "n_ctx"),
                                            ("openai", "context_window"),
                                            ("scripted", "context_window")])
def test_ctx_goes_to_each_backends_own_argument(monkeypatch, kind, argument):
    made = {}
    monkeypatch.setattr(factory, "_load", lambda module, cls: lambda *a, **kw: made.update(kw))
    url = "http://127.0.0.1:9/v1" if kind == "openai" else None
    make_backend(kind, None if url else "m.gguf", base_url=url, ctx=5000)
    assert made[argument] == 5000


def test_ctx_reaches_eval_backends(tmp_path):
    from loopcli.cli import _eval_backends

    script = tmp_path / "solution.jsonl"
    script.write_text(json.dumps({"text": "x"}) + "\n")
    assert _eval_backends("scripted", str(script), None, 1234)(None).context_window == 1234
    shared = _eval_backends("openai", "coder", "http://127.0.0.1:9/v1", 4321)
    assert shared(None) is shared(None) and shared(None).context_window == 4321
    assert _eval_backends("scripted", str(script), None, None)(None).context_window == 32768


def test_bad_ctx_is_refused():
    with pytest.raises(ValueError, match="positive number of tokens"):
        make_backend("scripted", "x.jsonl", ctx=0)


# ---- llama.cpp default context --------------------------------------------------------------

LLAMA_8B = Metadata(arch="llama", train_ctx=131072, layers=32, heads=32, kv_heads=8, head_dim=128)


def test_metadata_is_read_from_the_gguf_header(tmp_path):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_context_length(16384)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_embedding_length(64)
    writer.add_string("llama.attention.key_length", "not a number")  # hostile: ignored
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = read_metadata(tmp_path / "m.gguf")
    assert meta == Metadata(arch="llama", train_ctx=16384, layers=2, heads=4, kv_heads=2,
                            head_dim=16)
    with pytest.raises(BackendError, match="does not exist"):
        read_metadata(tmp_path / "missing.gguf")


def test_default_context_is_the_training_context_when_it_fits():
    tiny = Metadata(arch="llama", train_ctx=4096, layers=2, heads=4, kv_heads=2, head_dim=16)
    assert default_context(tiny, 10 << 20, 8 << 30) == 4096


def test_default_context_is_capped_to_half_the_available_memory():
    per_token = LLAMA_8B.bytes_per_token()
    assert per_token == 2 * 32 * 8 * 128 * 2 + 512 * 32 * 4
    ctx = default_context(LLAMA_8B, 5 << 30, 16 << 30)
    assert ctx % 256 == 0 and 2048 <= ctx < 131072
    assert (5 << 30) + ctx * per_token <= 8 << 30 < (5 << 30) + (ctx + 256) * per_token


def test_default_context_never_drops_below_the_minimum_or_needs_memory_info():
    assert default_context(LLAMA_8B, 5 << 30, 1 << 30) == 2048
    assert default_context(LLAMA_8B, 5 << 30, None) == 131072
    assert default_context(Metadata(arch="x", train_ctx=None), 0, 8 << 30) == 4096


# ---- live tokens on the progress output -------------------------------------------------------


def test_metered_backend_shows_tokens_live_and_passes_events_through(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"text": "one two"}) + "\n")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    inner = ScriptedBackend(script, context_window=777)
    metered = MeteredBackend(inner, console)
    assert (metered.name, metered.context_window) == ("scripted", 777)
    events = list(metered.stream(MESSAGES, []))
    assert events[0] == TextDelta("one two") and isinstance(events[-1], Finish)
    assert "model: 1 tokens" in out.getvalue()


# ---- llama.cpp at --ctx 8192 with the real agent prompt ---------------------------------------


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from loopcli.convert.export import convert
    from loopcli.runtime.synthetic import write_synthetic

    folder = tmp_path_factory.mktemp("llama")
    write_synthetic(folder / "hf", arch="llama")
    convert(folder / "hf", folder / "tiny.gguf", "q8_0", show_progress=False)
    return folder / "tiny.gguf"


def test_llama_cpp_default_context_is_the_training_context(llama_gguf):
    llama = make_backend("llama.cpp", str(llama_gguf), n_threads=1, max_tokens=4)
    assert llama.context_window == 4096  # the synthetic model's training context fits memory


def test_llama_cpp_runs_the_agent_prompt_at_ctx_8192(llama_gguf, tmp_path):
    """The agent's real system prompt (tool docs, repo map) and task: 3.1k+ tokens, more than
    the old n_ctx=4096 left room for. The tool schemas are not sent: with the synthetic
    byte-level tokenizer they add 5.4k tokens, and the whole request (9.2k) needs --ctx 16384;
    a real vocabulary makes the same request about 3.1k tokens."""
    llama = make_backend("llama.cpp", str(llama_gguf), ctx=8192, n_threads=1, max_tokens=8)
    assert llama.context_window == 8192
    repo = tmp_path / "repo"
    (repo / "calc").mkdir(parents=True)
    for name in ("ops", "parse", "report"):
        body = "".join(f"def {name}_{i}(value, scale={i}):\n    return value * scale + {i}\n\n\n"
                       for i in range(40))
        (repo / "calc" / f"{name}.py").write_text(body)
    issue = "ops_3 returns the wrong value for negative scales; fix it and keep the others."
    toolbox = Toolbox(repo, store_dir=tmp_path / "store")
    system = build_system_prompt(toolbox, llama, issue, None, tmp_path / "map")
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": prompts.TASK_TEMPLATE.format(issue=issue)}]
    reply = collect(llama.stream(messages, []))
    assert reply.usage.prompt_tokens >= 3100
    assert reply.usage.completion_tokens > 0 and reply.finish_reason == "length"  # max_tokens
    with pytest.raises(BackendError, match=r"exceed context window of 8192"):
        collect(llama.stream(messages, toolbox.schemas() + [prompts.FINISH_SCHEMA]))
