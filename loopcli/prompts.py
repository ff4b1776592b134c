"""The agent's prompts: the system prompt template and the fixed messages the loop sends.

The system prompt is built once per run and never changes, so that a local server can keep
its KV cache of it (a byte-stable prefix): repo map, AGENTS.md and tool docs all go in here.
"""

from __future__ import annotations

import jinja2

AGENTS_MD_MAX_BYTES = 32 * 1024  # Codex's cap for project instructions

SYSTEM_TEMPLATE = """\
You are loopcli, a coding agent working in the repository at {{ root }}. You resolve the \
issue the user gives you by reading the code and editing files with tools, one step at a time.

How to work:
1. Find the code the issue is about: use the repository map below, find_files, search, \
outline and view.
2. Understand the cause before you edit. Make the smallest change that fixes it; do not \
change tests unless the issue asks for it.
3. Check your change{% if test_cmd %} (the test command is `{{ test_cmd }}`){% endif %}.
4. Call finish with a short summary when the issue is resolved.\
{% if test_cmd %} finish runs `{{ test_cmd }}`; if it fails you get its output and continue.\
{% endif %}

Every reply must call at least one tool. Use the tool-calling interface if you have one; \
otherwise write each call as JSON inside tags, exactly like this:
<tool_call>
{"name": "view", "arguments": {"path": "src/app.py", "start": 1}}
</tool_call>

Tools:
{% for tool in tools %}
- {{ tool.signature }}: {{ tool.description }}
{% endfor %}
{% if agents_md %}
Project instructions (AGENTS.md):
{{ agents_md }}
{% endif %}
{% if repo_map %}
Repository map (the most relevant definitions):
{{ repo_map }}
{% endif %}"""

TASK_TEMPLATE = "Resolve this issue:\n\n{issue}"

FINISH_SCHEMA = {"type": "function", "function": {
    "name": "finish",
    "description": "Declare the issue resolved and end the session. Call it only when your "
                   "change is complete and checked.",
    "parameters": {"type": "object", "properties": {
        "summary": {"type": "string", "description": "What was wrong and what you changed."},
    }, "required": ["summary"], "additionalProperties": False},
}}

NO_TOOL_CALL = ("Your reply did not call a tool. Every reply must call at least one tool; call "
                "finish(summary) when the issue is resolved.")
REPEAT_NUDGE = ("You made exactly this call twice in a row and it gave the same result. "
                "Repeating it again will end the session. Do something different: look at "
                "another file, change your approach, or call finish if you are done.")
TESTS_FAILED = ("Not finished: the test command `{cmd}` failed (exit code {code}). Fix the "
                "problem, then call finish again. Its output (end):\n{output}")
COMPACTED_OUTPUT = ("[output of {call} removed to save context ({tokens} tokens); call the "
                    "tool again if you need it]")
SUMMARY_HEADER = ("[Earlier steps were removed to save context. What you did so far, oldest "
                  "first:]")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                          keep_trailing_newline=False, autoescape=False)


def signature(schema: dict) -> str:
    """`replace(path: string, old: string, new: string, all?: boolean)` from a function schema."""
    fn = schema["function"]
    params = fn["parameters"]
    required = set(params.get("required", []))
    args = [f"{key}{'' if key in required else '?'}: {spec.get('type', 'any')}"
            for key, spec in params.get("properties", {}).items()]
    return f"{fn['name']}({', '.join(args)})"


def system_prompt(root: str, tools: list[dict], *, repo_map: str = "", agents_md: str = "",
                  test_cmd: str | None = None) -> str:
    docs = [{"signature": signature(t), "description": t["function"]["description"]} for t in tools]
    return _ENV.from_string(SYSTEM_TEMPLATE).render(
        root=root, tools=docs, repo_map=repo_map.strip(), agents_md=agents_md.strip(),
        test_cmd=test_cmd,
    )


def format_error(errors: list[str]) -> str:
    """What the model reads after a reply whose tool calls could not be read."""
    listed = "\n".join(errors)
    return f"{listed}\nSend the corrected call again."
