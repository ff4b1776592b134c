"""Chat templates render exactly as transformers' apply_chat_template renders them."""

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models
from transformers import PreTrainedTokenizerFast

from loopcli.runtime.chat import render_chat
from loopcli.runtime.errors import ModelError
from loopcli.runtime.synthetic import chat_template

TOOLS = [
    {"type": "function", "function": {
        "name": "view", "description": "Show a file with line numbers.\n",
        "parameters": {"type": "object", "required": ["path"], "properties": {
            "path": {"type": "string", "description": "File path"},
            "start": {"type": ["integer", "null"], "description": "First line"}}}}},
    {"type": "function", "function": {
        "name": "run", "description": "Run a shell command",
        "parameters": {"type": "object", "required": ["cmd"], "properties": {
            "cmd": {"type": "string"}, "mode": {"type": "string", "enum": ["fast", "full"]}}}}},
]
BARE_TOOLS = [t["function"] for t in TOOLS]  # schemas without the {"type": "function"} wrapper

CONVERSATIONS = {
    "plain": ([{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "Say hi"}], None),
    "tool_round_trip": ([
        {"role": "system", "content": "You fix bugs."},
        {"role": "user", "content": "Fix <bug> in a.py & b.py"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "view", "arguments": {"path": "a.py", "start": 3}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3: x = \"é\" 😀\n4:\treturn"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"}], TOOLS),
    "parallel_calls_no_system": ([
        {"role": "user", "content": "Run the tests and show conftest"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "run", "arguments": {"cmd": "pytest -q", "mode": "fast"}}},
            {"id": "b", "type": "function", "function": {"name": "view", "arguments": {"path": "conftest.py"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "2 failed"},
        {"role": "tool", "tool_call_id": "b", "content": "{\"json\": [1, 2]}"}], TOOLS),
    "bare_schemas_nested_arguments": ([
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "Edit"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "run", "arguments": {"cmd": ["a", {"b": None}], "mode": "full"}}}]},
        {"role": "tool", "content": ""}], BARE_TOOLS),
    "reasoning_and_multi_turn": ([
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2", "reasoning_content": "simple"},
        {"role": "user", "content": "Now view x"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "view", "arguments": {}}}]},
        {"role": "tool", "content": "missing argument"}], TOOLS),
}

# the Jinja features transformers' environment adds or enables
FEATURES = """{{- bos_token -}}
{%- set ns = namespace(n=0, last='') -%}
{%- for m in messages -%}
  {%- if m.role == 'tool' -%}{%- continue -%}{%- endif -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- set ns.last = m.role -%}
  {%- if ns.n > 4 -%}{%- break -%}{%- endif -%}
  {%- generation -%}[{{ m.role }}|{{ m.content | default('-', true) }}|{{ m.thinking | default('') }}]{%- endgeneration -%}
  {%- if m.tool_calls is defined -%}{{ m.tool_calls | tojson(indent=2, sort_keys=True) }}{%- endif -%}
{%- endfor -%}
{{- tools | tojson(separators=(',', ':')) if tools else '' -}}
{{- dict(a=1) | tojson }}{{ ns.n }}{{ ns.last }}{{ strftime_now('%Y') | length }}
{%- if add_generation_prompt %}>>{{ eos_token }}{% endif -%}"""

TEMPLATES = {"qwen3_coder": chat_template("loopcoder"), "hermes": chat_template("llama"), "features": FEATURES}


def transformers_render(template, messages, tools):
    tok = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(models.BPE()), bos_token="<s>", eos_token="</s>",
                                  chat_template=template)
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_render_equals_transformers(template, conversation):
    messages, tools = CONVERSATIONS[conversation]
    want = transformers_render(TEMPLATES[template], messages, tools)
    got = render_chat(TEMPLATES[template], messages, tools, add_generation_prompt=True,
                      bos_token="<s>", eos_token="</s>")
    assert got == want
    assert len(want) > 40


def test_json_string_arguments_reach_the_template_as_a_mapping():
    """OpenAI's wire format (arguments as a JSON string), as the agent sends it, renders like a dict."""
    messages, tools = CONVERSATIONS["tool_round_trip"]
    as_string = [dict(m) for m in messages]
    call = as_string[2]["tool_calls"][0]
    as_string[2]["tool_calls"] = [{**call, "function": {"name": "view", "arguments": '{"path": "a.py", "start": 3}'}}]
    template = TEMPLATES["qwen3_coder"]
    assert render_chat(template, as_string, tools) == render_chat(template, messages, tools)
    assert "<parameter=start>\n3\n</parameter>" in render_chat(template, as_string, tools)
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"path": "a.py", "start": 3}  # not mutated


def test_named_templates_pick_tool_use_when_tools_are_given():
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "with tools"}]
    assert render_chat(named, [{"role": "user", "content": "x"}]) == "plain"
    assert render_chat(named, [{"role": "user", "content": "x"}], TOOLS) == "with tools"


def test_template_errors_and_sandbox_are_one_clear_error():
    with pytest.raises(ModelError, match="chat template failed: no"):
        render_chat("{{ raise_exception('no') }}", [])
    with pytest.raises(ModelError, match="chat template failed"):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])
    with pytest.raises(ModelError, match="chat template failed"):
        render_chat("{% set ns = namespace(_x=1) %}", [])
