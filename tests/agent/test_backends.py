"""The model backends on tiny synthetic models: the mechanics of streaming, not the (random) text.

llama.cpp tests run serially with one thread (its workers spin-wait); the OpenAI-compatible
backend is tested against a real llama_cpp.server started on a loopback port.
"""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from loopcli.backends.base import BackendError, Finish, Progress, TextDelta, ToolCall, Usage, collect
from loopcli.backends.factory import make_backend
from loopcli.runtime.chat import render_chat
from loopcli.runtime.generate import Sampler, generate_tokens
from loopcli.runtime.synthetic import write_synthetic

MESSAGES = [{"role": "system", "content": "You fix code."}, {"role": "user", "content": "Fix the bug é€"}]
TOOLS = [{"type": "function", "function": {
    "name": "run", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                   "required": ["command"]}}}]


def split(events):
    """Text deltas, then the rest; checks the order text -> tool calls -> usage -> finish."""
    events = [e for e in events if not isinstance(e, Progress)]  # interleaved anywhere
    kinds = [type(e) for e in events]
    order = [TextDelta, ToolCall, Usage, Finish]
    assert kinds == sorted(kinds, key=order.index), kinds
    assert kinds.count(Usage) == 1 and kinds[-1] is Finish
    return [e.text for e in events if isinstance(e, TextDelta)], events[-2], events[-1]


@pytest.fixture(scope="module")
def loopcoder_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("models") / "loopcoder", arch="loopcoder")


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    from loopcli.convert.export import convert

    d = tmp_path_factory.mktemp("gguf")
    write_synthetic(d / "llama", arch="llama")
    out = d / "tiny.gguf"
    convert(d / "llama", out, "q8_0", show_progress=False)
    return out


@pytest.fixture(scope="module")
def local(loopcoder_dir):
    return make_backend("local", str(loopcoder_dir), max_tokens=8)


# ------------------------------------------------------------------ local (our runtime)

def prompt_ids(backend, tools):
    tok = backend.tokenizer
    return tok.encode(render_chat(tok.chat_template, MESSAGES, tools or None,
                                  bos_token=tok.bos_token, eos_token=tok.eos_token))


def test_local_streams_greedy_tokens_as_text(local):
    texts, usage, finish = split(list(local.stream(MESSAGES, TOOLS)))
    ids = prompt_ids(local, TOOLS)
    expected = list(generate_tokens(local.model, ids, Sampler(), 8))
    assert texts and all(texts)
    assert "".join(texts) == local.tokenizer.decode(expected)
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), 8)
    assert finish.reason == "length"


def test_local_renders_tools_into_the_prompt(local):
    with_tools = collect(local.stream(MESSAGES, TOOLS)).usage.prompt_tokens
    without = collect(local.stream(MESSAGES, [])).usage.prompt_tokens
    assert with_tools > without + local.count_tokens('"name": "run"')


def test_local_stops_on_eos(loopcoder_dir):
    backend = make_backend("local", str(loopcoder_dir), max_tokens=8)
    first = collect(backend.stream(MESSAGES, [])).text
    ids = list(generate_tokens(backend.model, prompt_ids(backend, []), Sampler(), 3))
    backend.eos_ids.add(ids[2])
    reply = collect(backend.stream(MESSAGES, []))
    assert reply.finish_reason == "stop" and reply.usage.completion_tokens == 3
    assert reply.text == backend.tokenizer.decode(ids[:2]) and first.startswith(reply.text)


def test_local_context_window_and_overflow(loopcoder_dir, local):
    assert local.context_window == 4096  # the synthetic config's max_position_embeddings
    small = make_backend("local", str(loopcoder_dir), max_context=64)
    assert small.context_window == 64
    with pytest.raises(BackendError, match="context window is 64"):
        list(small.stream(MESSAGES, TOOLS))


def test_local_count_tokens_uses_the_tokenizer(local):
    code = "def f(x):\n    return x"
    assert local.count_tokens(code) == len(local.tokenizer.encode(code, add_bos=False))
    assert local.count_tokens("") == 0


def test_local_seeded_sampling_repeats(loopcoder_dir):
    backend = make_backend("local", str(loopcoder_dir), max_tokens=6, temperature=1.0, seed=3)
    assert collect(backend.stream(MESSAGES, [])).text == collect(backend.stream(MESSAGES, [])).text


def test_local_missing_model(tmp_path):
    with pytest.raises(BackendError, match="nope is not a directory"):
        make_backend("local", str(tmp_path / "nope"))


# ------------------------------------------------------------------ llama.cpp (in process)

@pytest.fixture(scope="module")
def llama(llama_gguf):
    pytest.importorskip("llama_cpp")
    return make_backend("llama.cpp", str(llama_gguf), n_ctx=512, n_threads=1, max_tokens=8)


def test_llama_cpp_streams_text_and_finish(llama):
    texts, usage, finish = split(list(llama.stream(MESSAGES, TOOLS)))
    assert texts and all(texts)
    assert usage.prompt_tokens > 50 and usage.completion_tokens == 8
    assert finish.reason == "length"
    assert llama.context_window == 512


def test_llama_cpp_count_tokens(llama):
    assert llama.count_tokens("hello world") > 0
    assert llama.count_tokens("<|im_end|>") == 1  # special tokens count as one


def test_llama_cpp_refuses_plt_and_bad_files(loopcoder_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    from loopcli.convert.export import convert

    plt = tmp_path / "plt.gguf"
    convert(loopcoder_dir, plt, "q8_0", show_progress=False)
    with pytest.raises(BackendError, match="LoopCoder .PLT. model.*local backend"):
        make_backend("llama.cpp", str(plt))
    with pytest.raises(BackendError, match="does not exist"):
        make_backend("llama.cpp", str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a gguf")
    with pytest.raises(BackendError, match="not a readable GGUF"):
        make_backend("llama.cpp", str(junk))


# ------------------------------------------------------------------ OpenAI-compatible server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(llama_gguf, tmp_path_factory):
    pytest.importorskip("llama_cpp.server.app")
    pytest.importorskip("openai")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(llama_gguf), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "512", "--n_threads", "1"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not come up:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_streams_from_a_real_server(server, llama_gguf):
    backend = make_backend("openai", base_url=server, max_tokens=8, temperature=0.0)
    texts, usage, finish = split(list(backend.stream(MESSAGES, TOOLS)))
    assert texts and all(texts)
    assert backend.model == str(llama_gguf)  # discovered from /v1/models
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert finish.reason == "length"


def test_openai_http_error_names_the_server(server):
    backend = make_backend("openai", base_url=f"{server}/nope", model="x", max_retries=0)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1.*HTTP 404"):
        list(backend.stream(MESSAGES, []))


def test_openai_unreachable_server_fails_fast():
    pytest.importorskip("openai")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = make_backend("openai", base_url=url, model="m")
    start = time.monotonic()
    with pytest.raises(BackendError) as err:
        list(backend.stream(MESSAGES, []))
    assert time.monotonic() - start < 10
    assert f"cannot reach the model server at {url}" in str(err.value)
    assert "Is the server running?" in str(err.value)


def test_stream_assembler_joins_tool_call_fragments():
    openai_compat = pytest.importorskip("loopcli.backends.openai_compat")
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": "Let me look."}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "function": {"name": "run", "arguments": '{"comm'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "function": {"name": "read_file", "arguments": ""}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'and": "ls"}'}}]}}]},
        # llama-cpp-python repeats the name in every fragment
        {"choices": [{"delta": {"tool_calls": [
            {"index": 1, "function": {"name": "read_file", "arguments": '{"path": '}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"arguments": "oops"}}]},
                      "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12}},
    ]
    asm = openai_compat.StreamAssembler()
    texts = [d.text for c in chunks for d in asm.feed(c)]
    assert texts == ["Let me look."]
    assert asm.tool_calls() == [ToolCall("run", {"command": "ls"}, "call_a"),
                                ToolCall("read_file", '{"path": oops', "call_b")]  # raw when not JSON
    assert (asm.finish(), asm.usage) == (Finish("tool_calls"), Usage(30, 12))
    silent = openai_compat.StreamAssembler()  # no finish_reason sent: infer it from the calls
    list(silent.feed(chunks[1]))
    assert silent.finish() == Finish("tool_calls")


# ------------------------------------------------------------------ factory

@pytest.mark.parametrize("kind, kwargs, message", [
    ("gpt", {}, "unknown backend 'gpt'; choose one of: local, llama.cpp, openai, scripted"),
    ("local", {}, "the local backend needs a model: a checkpoint directory or a .gguf file"),
    ("llama.cpp", {}, "the llama.cpp backend needs a model: a .gguf file"),
    ("openai", {"model": "m"}, "the openai backend needs the base URL"),
    ("local", {"model": "m", "base_url": "http://x"}, "apply only to the openai backend"),
])
def test_factory_rejects_bad_choices(kind, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make_backend(kind, **kwargs)


def test_factory_builds_scripted_and_aliases(tmp_path, llama_gguf):
    script = tmp_path / "turns.jsonl"
    script.write_text('{"text": "hello"}\n')
    backend = make_backend("scripted", str(script))
    assert backend.name == "scripted" and collect(backend.stream(MESSAGES, [])).text == "hello"
    pytest.importorskip("llama_cpp")
    assert make_backend("llama_cpp", str(llama_gguf), n_ctx=256, n_threads=1).name == "llama.cpp"
