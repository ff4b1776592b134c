"""`loopcli fix --backend llama.cpp --ctx 8192 --max-steps 3` on a synthetic model with LoopCoder's
tokenizer layout (a SentencePiece tokenizer.model trained on English prose and code, 4096 rows) and
the R = 1 llama architecture llama.cpp runs: the agent's whole first request (system prompt, task
and tool schemas) fits, and the three model calls run (random text, so it ends in format errors).
The run takes ~12 s, so it is `slow` (runs with -m slow or LOOPCLI_SLOW=1); the token count of the
request is checked in the default run."""

from __future__ import annotations

import os

import pytest

from agentkit import ISSUE, TEST_CMD, read_events, run_cli
from agentkit import buggy_repo, hermetic  # noqa: F401  (fixtures)
from loopcli import prompts
from loopcli.agent import build_system_prompt
from loopcli.convert.export import convert
from loopcli.runtime.chat import render_chat
from loopcli.runtime.synthetic import write_synthetic
from loopcli.runtime.tokenizer import Tokenizer
from loopcli.tools.toolbox import Toolbox

pytestmark = pytest.mark.usefixtures("hermetic")


def synthetic(tmp_path):
    return write_synthetic(tmp_path / "m", arch="llama", tokenizer="spm", vocab_size=4096,
                           max_position_embeddings=16384)


class _Counter:
    context_window = 8192

    def __init__(self, tok):
        self.tok = tok

    def count_tokens(self, text):
        return len(self.tok.encode(text, add_bos=False))


def test_the_agent_request_takes_real_token_counts(buggy_repo, tmp_path):
    """The first request, rendered with the model's chat template and tool schemas: about what a
    real 76k vocabulary gives (~3.1k), not the ~9-11k of a tokenizer trained on a few lines."""
    tok = Tokenizer.load(synthetic(tmp_path))
    toolbox = Toolbox(buggy_repo, store_dir=tmp_path / "store")
    system = build_system_prompt(toolbox, _Counter(tok), ISSUE, TEST_CMD, tmp_path / "map")
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": prompts.TASK_TEMPLATE.format(issue=ISSUE)}]
    text = render_chat(tok.chat_template, messages, toolbox.schemas() + [prompts.FINISH_SCHEMA])
    n = len(tok.encode(text))
    assert 2500 < n < 5000 and len(text) / n > 3.0, (n, len(text))


@pytest.mark.slow
def test_fix_on_llama_cpp_fits_the_agent_prompt_in_8192(request, buggy_repo, tmp_path, capsys, monkeypatch):
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("LOOPCLI_SLOW"):
        pytest.skip("slow (~12 s): runs with -m slow or LOOPCLI_SLOW=1")
    pytest.importorskip("llama_cpp")
    import loopcli.backends.llama_cpp as backend

    model = convert(synthetic(tmp_path), tmp_path / "m.gguf", "q8_0", show_progress=False)
    init = backend.LlamaCppBackend.__init__

    def one_thread(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "n_threads": 1})

    monkeypatch.setattr(backend.LlamaCppBackend, "__init__", one_thread)
    # random text: keep each call short through the backend's default cap (without a cap
    # llama.cpp would generate until the 8192-token context is full)
    monkeypatch.setattr(backend, "DEFAULT_MAX_TOKENS", 8)
    trajectory = tmp_path / "run.jsonl"
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "llama.cpp", "--model", str(model), "--ctx", "8192",
                             "--test-cmd", TEST_CMD, "--max-steps", "3", "--trajectory", str(trajectory))
    events = read_events(trajectory)
    calls = [e for e in events if e["type"] == "model"]
    assert len(calls) == 3, err
    assert events[-1]["status"] == "format_errors", err
    first = calls[0]["usage"]["prompt_tokens"]
    # the real agent prompt with its tool schemas: well inside 8192
    assert 2500 < first < 5000, first
    assert all(c["usage"]["prompt_tokens"] > first for c in calls[1:])
    assert all(c["usage"]["completion_tokens"] <= 8 for c in calls), [c["usage"] for c in calls]
