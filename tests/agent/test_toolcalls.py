import pytest

from loopcli.toolcalls import EXPECTED_HERMES, EXPECTED_XML, parse_tool_calls

TOOLS = {"read_file", "write_file", "run"}


def one_call(text, tools=TOOLS):
    res = parse_tool_calls(text, tools)
    assert res.errors == []
    assert len(res.calls) == 1
    return res.calls[0]


def one_error(text, tools=TOOLS):
    res = parse_tool_calls(text, tools)
    assert res.calls == []
    assert len(res.errors) == 1, res.errors
    return res.errors[0]


# ------------------------------------------------------------------ Hermes / Qwen JSON

def test_hermes_call_and_surrounding_text():
    text = ('Let me read it.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n'
            '</tool_call>\nThen I will fix it.')
    res = parse_tool_calls(text, TOOLS)
    assert [(c.name, c.arguments) for c in res.calls] == [("read_file", {"path": "a.py"})]
    assert res.calls[0].id.startswith("call_")
    assert res.text == "Let me read it.\nThen I will fix it."
    assert res.errors == []


def test_hermes_missing_closing_tag_at_end():
    call = one_call('<tool_call>\n{"name": "run", "arguments": {"command": "pytest -q"}}\n')
    assert call.arguments == {"command": "pytest -q"}


def test_hermes_parameters_key_and_arguments_as_json_string():
    assert one_call('<tool_call>{"name": "run", "parameters": {"command": "ls"}}</tool_call>'
                    ).arguments == {"command": "ls"}
    assert one_call('<tool_call>{"name": "run", "arguments": "{\\"command\\": \\"ls\\"}"}</tool_call>'
                    ).arguments == {"command": "ls"}


def test_tool_and_args_variant_and_openai_shape():
    assert one_call('<tool_call>{"tool": "run", "args": {"command": "ls"}}</tool_call>'
                    ).name == "run"
    call = one_call('<tool_call>{"type": "function", "function": {"name": "run", '
                    '"arguments": "{\\"command\\": \\"ls\\"}"}}</tool_call>')
    assert (call.name, call.arguments) == ("run", {"command": "ls"})


def test_multiple_calls_in_order_with_distinct_ids():
    text = ('<tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>\n'
            '<tool_call>{"name": "read_file", "arguments": {"path": "b"}}</tool_call>')
    res = parse_tool_calls(text, TOOLS)
    assert [c.arguments["path"] for c in res.calls] == ["a", "b"]
    assert len({c.id for c in res.calls}) == 2
    assert res.text == ""


def test_first_block_missing_close_before_next_opener():
    text = ('<tool_call>{"name": "read_file", "arguments": {"path": "a"}}\n'
            '<tool_call>{"name": "read_file", "arguments": {"path": "b"}}</tool_call>')
    assert [c.arguments["path"] for c in parse_tool_calls(text, TOOLS).calls] == ["a", "b"]


@pytest.mark.parametrize("body, expected", [
    ('{"name": "run", "arguments": {"command": "ls",}}', {"command": "ls"}),           # trailing comma
    ('{"name": "run", "arguments": {"command": "a\nb"}}', {"command": "a\nb"}),        # raw newline
    ("{'name': 'run', 'arguments': {'command': 'ls'}}", {"command": "ls"}),            # single quotes
    ('{"name": "run", "arguments": {"command": "ls"}}}', {"command": "ls"}),           # extra brace
    ('```json\n{"name": "run", "arguments": {"command": "ls"}}\n```', {"command": "ls"}),  # fenced
])
def test_repairs(body, expected):
    assert one_call(f"<tool_call>\n{body}\n</tool_call>").arguments == expected


def test_commas_inside_strings_are_untouched():
    call = one_call('<tool_call>{"name": "run", "arguments": {"command": "echo \\",}\\" ,]"}}'
                    '</tool_call>')
    assert call.arguments == {"command": 'echo ",}" ,]'}


def test_single_quotes_not_swapped_when_ambiguous():
    err = one_error("<tool_call>{'name': 'run', 'arguments': {'command': 'echo \"it\"'}}</tool_call>")
    assert "invalid JSON at line 1 column 2" in err


def test_invalid_json_error_is_precise():
    err = one_error('<tool_call>\n{"name": "run" "arguments": {"command": "ls"}}\n</tool_call>')
    assert err.startswith("Malformed tool call (Hermes/Qwen <tool_call> JSON): "
                          "invalid JSON at line 1 column 16: Expecting ',' delimiter")
    assert err.endswith("Expected form:\n" + EXPECTED_HERMES)


def test_truncated_json_error():
    err = one_error('<tool_call>{"name": "run", "arguments": {"command": "ls"')
    assert "invalid JSON at line 1" in err and "Hermes" in err


@pytest.mark.parametrize("body, problem", [
    ('{"arguments": {"a": 1}}', 'missing "name" (the tool to call); keys given: arguments'),
    ('{"name": "run", "arguments": [1, 2]}', '"arguments" must be a JSON object, got a list'),
    ('{"name": "run", "arguments": "ls -l"}', '"arguments" is a string that is not a JSON object'),
    ('{"name": "  ", "arguments": {}}', '"name" is empty'),
    ('"run"', "expected a JSON object"),
    ('{"name": "run", "arguments": {}} trailing words', "unexpected text after the JSON value"),
    ('run(command="ls")', "invalid JSON at line 1 column 1"),
])
def test_wrong_shapes_give_errors(body, problem):
    assert problem in one_error(f"<tool_call>{body}</tool_call>")


def test_unknown_tool_names_the_known_ones():
    res = parse_tool_calls('<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>', TOOLS)
    assert res.calls == []
    assert res.errors == ["Tool call (Hermes/Qwen <tool_call> JSON): unknown tool 'delete_all'. "
                          "Available tools: read_file, run, write_file."]


def test_any_name_accepted_without_tool_list():
    assert parse_tool_calls('<tool_call>{"name": "x", "arguments": {}}</tool_call>').calls[0].name == "x"


def test_good_and_bad_calls_together():
    text = ('<tool_call>{"name": "run", "arguments": {"command": "ls"}}</tool_call>\n'
            '<tool_call>{"name": "run", "arguments": {"command": }}</tool_call>')
    res = parse_tool_calls(text, TOOLS)
    assert [c.arguments for c in res.calls] == [{"command": "ls"}]
    assert len(res.errors) == 1 and "Expecting value" in res.errors[0]


# ------------------------------------------------------------------ Qwen3-Coder XML

def test_xml_call_with_typed_values():
    text = ("I'll write it.\n<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.py\n"
            "</parameter>\n<parameter=content>\ndef f():\n    return 1\n\n</parameter>\n"
            "<parameter=overwrite>\ntrue\n</parameter>\n<parameter=mode>\n420\n</parameter>\n"
            '<parameter=meta>\n{"a": [1]}\n</parameter>\n</function>\n</tool_call>')
    res = parse_tool_calls(text, TOOLS)
    assert res.errors == [] and res.text == "I'll write it."
    assert res.calls[0].name == "write_file"
    assert res.calls[0].arguments == {"path": "src/a.py", "content": "def f():\n    return 1\n",
                                      "overwrite": True, "mode": 420, "meta": {"a": [1]}}


def test_xml_quoted_string_and_null_stay_strings():
    call = one_call('<tool_call><function=run><parameter=command>"ls"</parameter>'
                    "<parameter=x>null</parameter></function></tool_call>")
    assert call.arguments == {"command": '"ls"', "x": "null"}


def test_xml_missing_closing_tags_at_end():
    call = one_call("<tool_call>\n<function=run>\n<parameter=command>\nls -la\n")
    assert call.arguments == {"command": "ls -la"}
    call = one_call("<tool_call><function=read_file><parameter=path>a<parameter=start>3"
                    "</function></tool_call>")
    assert call.arguments == {"path": "a", "start": 3}


def test_xml_without_tool_call_wrapper():
    res = parse_tool_calls("ok\n<function=run>\n<parameter=command>\nls\n</parameter>\n</function>",
                           TOOLS)
    assert [(c.name, c.arguments) for c in res.calls] == [("run", {"command": "ls"})]
    assert res.text == "ok"


@pytest.mark.parametrize("body, problem", [
    ("<function=>\n<parameter=a>1</parameter>\n</function>", "function name in <function=NAME> is empty"),
    ("<function=run>\nls\n</function>", "unexpected text outside <parameter=...>: 'ls'"),
    ("<function=run><parameter=a>1</parameter><parameter=a>2</parameter></function>",
     "parameter 'a' is given twice"),
    ("<function=run><parameter=a>1</parameter> junk </function>",
     "unexpected text after </parameter> of 'a': 'junk'"),
    ("<func name='run'/>", "no <function=NAME> inside the <tool_call> block"),
])
def test_xml_errors(body, problem):
    err = one_error(f"<tool_call>{body}</tool_call>")
    assert err.startswith("Malformed tool call (Qwen3-Coder <tool_call> XML): ")
    assert problem in err
    assert err.endswith(EXPECTED_XML)


def test_xml_unknown_tool():
    err = one_error("<tool_call><function=rm_rf></function></tool_call>")
    assert "unknown tool 'rm_rf'" in err and "read_file, run, write_file" in err


# ------------------------------------------------------------------ fenced and bare JSON

def test_fenced_json_object_and_list():
    text = ('Plan:\n```json\n{"name": "run", "arguments": {"command": "ls"}}\n```\nand\n'
            '```\n[{"name": "read_file", "arguments": {"path": "a"}}, '
            '{"name": "read_file", "arguments": {"path": "b"}}]\n```\n')
    res = parse_tool_calls(text, TOOLS)
    assert [c.name for c in res.calls] == ["run", "read_file", "read_file"]
    assert res.text == "Plan:\nand"


def test_fenced_malformed_call_attempt():
    err = one_error('```json\n{"name": "run", "arguments": {"command": "ls"\n```')
    assert err.startswith("Malformed tool call (fenced JSON): invalid JSON at line 1")
    assert "```json" in err


def test_bare_json_reply():
    assert one_call('  {"name": "run", "arguments": {"command": "ls"}}\n').name == "run"
    res = parse_tool_calls('{"name": "run", "arguments": {"command": "ls"}}\nThis lists files.', TOOLS)
    assert [c.name for c in res.calls] == ["run"] and res.text == "This lists files."
    assert "invalid JSON" in one_error('{"name": "run", "arguments": {"command": "ls"')


def test_empty_tool_call_block():
    assert "the <tool_call> block is empty" in one_error("<tool_call>\n</tool_call>")


def test_xml_value_with_fenced_call_is_not_parsed_twice():
    code = '```json\n{"name": "run", "arguments": {"command": "ls"}}\n```'
    call = one_call(f"<tool_call><function=write_file><parameter=content>\n{code}\n</parameter>"
                    "</function></tool_call>")
    assert call.arguments == {"content": code}


# ------------------------------------------------------------------ prose is left alone

@pytest.mark.parametrize("text", [
    'Return JSON like {"name": "run", "arguments": {"command": "ls"}} from the API.',
    'Here is the config:\n```json\n{"name": "mypkg", "version": "1.0"}\n```\n',
    '```json\n{"broken": \n```',
    '```python\nprint({"name": "run", "arguments": {}})\n```',
    "The model writes a <tool_call> tag when it wants a tool.",
    "Qwen3-Coder uses the <function=NAME> form.",
    "{not json at all}",
    "",
])
def test_prose_yields_nothing(text):
    res = parse_tool_calls(text, TOOLS)
    assert res.calls == [] and res.errors == []
    assert res.text == text
