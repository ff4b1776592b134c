"""The OpenAI Python client and our own `openai` backend against `loopcli serve` on synthetic
models: chat (streaming and not), completions, models, seeds, tools."""

from __future__ import annotations

import json

import openai
import pytest

from servekit import TOOL_TEXT, running
from loopcli.backends.base import Finish, TextDelta, ToolCall, Usage
from loopcli.backends.openai_compat import OpenAIBackend
from loopcli.runtime.engine import load
from loopcli.runtime.generate import Sampler
from loopcli.runtime.tokenizer import Tokenizer
from loopcli.serve import load_server
from loopcli.serve.scheduler import BACKOFF

TIMEOUT = 60
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sum a list."}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def client(url, key="sekrit"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=TIMEOUT, max_retries=0)


def test_chat_streaming_equals_non_streaming(confident_url):
    url, _ = confident_url
    c = client(url)
    whole = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, seed=7, temperature=0.9)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 10 and 1 <= whole.usage.completion_tokens <= 16
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, seed=7,
                                            temperature=0.9, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == choice.message.content
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_each_conversation_reuses_its_own_prefix(confident_url):
    """Two conversations interleaved: each next turn finds its earlier turn in a slot's state (all
    of it, or up to the extra snapshot BACKOFF tokens before its end when the reply's first token
    merges with the prompt's last one)."""
    url, _ = confident_url
    c = client(url)
    talks = [[{"role": "user", "content": "Write a parser."}], [{"role": "user", "content": "Sort a list fast."}]]
    previous = {}
    for turn in range(3):
        for i, talk in enumerate(talks):
            reply = c.chat.completions.create(model="tiny", messages=talk, max_tokens=6, temperature=0)
            cached = reply.usage.prompt_tokens_details.cached_tokens
            if turn:
                assert cached >= previous[i] - BACKOFF, (turn, i, cached, previous[i])
            else:
                assert cached < reply.usage.prompt_tokens
            previous[i] = reply.usage.prompt_tokens
            talk += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"and now step {turn}"}]


def test_seed_decides_the_sample_and_max_tokens_bounds_it(confident_url):
    url, _ = confident_url
    c = client(url)
    ask = lambda seed: c.completions.create(model="tiny", prompt="def fibonacci(n):", max_tokens=24,
                                            temperature=1.0, seed=seed)
    a, b = ask(11), ask(11)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens <= 24
    others = {ask(s).choices[0].text for s in (12, 13, 14)}
    assert others - {a.choices[0].text}, "different seeds gave the same text every time"


def test_completion_matches_a_solo_engine_run(confident_url, models):
    url, server = confident_url
    prompt = list(range(40, 70))
    got = client(url).completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0.8,
                                         seed=5, stop=None)
    engine = load(models["confident"], threads=1)
    tok = Tokenizer.load(models["confident"])
    tokens = []
    for t in engine.generate(prompt, Sampler(temperature=0.8, seed=5), 20):
        if t in server.eos:
            break
        tokens.append(t)
    assert got.choices[0].text == tok.decode(tokens)


def test_stop_strings_cut_the_text(confident_url):
    url, _ = confident_url
    c = client(url)
    full = c.completions.create(model="tiny", prompt="import os", max_tokens=30, temperature=0, seed=0)
    text = full.choices[0].text
    assert len(text.strip()) >= 4, text
    stop = text.strip()[2:4]
    cut = c.completions.create(model="tiny", prompt="import os", max_tokens=30, temperature=0, seed=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]


def test_models_lists_the_context_length(confident_url):
    url, server = confident_url
    [model] = client(url).models.list().data
    assert model.id == "tiny" and model.model_extra["max_model_len"] == server.ctx == 512


def test_our_openai_backend_streams_text_and_usage(confident_url):
    url, _ = confident_url
    backend = OpenAIBackend(url, api_key="sekrit", max_tokens=12, temperature=0.0)
    assert backend.context_window == 512
    events = list(backend.stream(MESSAGES, []))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage and usage[0].prompt_tokens > 10 and 1 <= usage[0].completion_tokens <= 12
    assert isinstance(events[-1], Finish) and events[-1].reason in ("stop", "length")
    whole = client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert text == whole.choices[0].message.content


@pytest.fixture(scope="module")
def tool_url(models):
    server = load_server(models["tool"], ctx=1024, parallel=2, name="tool", threads=1)
    with running(server) as url:
        yield url


def test_tool_calls_reach_the_openai_client(tool_url):
    c = client(tool_url, key="unused")
    whole = c.chat.completions.create(model="tool", messages=MESSAGES, tools=WEATHER, temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(c.chat.completions.create(model="tool", messages=MESSAGES, tools=WEATHER, temperature=0,
                                            stream=True))
    parts = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [p.function.name for p in parts] == ["get_weather"]
    assert json.loads("".join(p.function.arguments for p in parts)) == {"city": "Paris"}
    assert not "".join(ch.choices[0].delta.content or "" for ch in chunks).strip()
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_leaves_the_text(tool_url):
    c = client(tool_url, key="unused")
    whole = c.chat.completions.create(model="tool", messages=MESSAGES, tools=WEATHER, tool_choice="none",
                                      temperature=0)
    assert whole.choices[0].message.tool_calls is None
    assert whole.choices[0].message.content == TOOL_TEXT and whole.choices[0].finish_reason == "stop"
    named = c.chat.completions.create(model="tool", messages=MESSAGES, tools=WEATHER, temperature=0,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        c.chat.completions.create(model="tool", messages=MESSAGES, tools=WEATHER,
                                  tool_choice={"type": "function", "function": {"name": "nope"}})


def test_our_openai_backend_gets_tool_calls(tool_url):
    events = list(OpenAIBackend(tool_url, temperature=0.0).stream(MESSAGES, WEATHER))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert events[-1] == Finish("tool_calls")
