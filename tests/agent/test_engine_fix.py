"""`loopcli fix --backend local` on a synthetic LoopCoder-layout model with the real agent
prompt: three model calls (random text, so it ends in format errors), the second and third
prefilling only what the conversation added, with progress on stderr."""

from __future__ import annotations

import pytest

import loopcli.backends.local as local
from agentkit import ISSUE, TEST_CMD, read_events, run_cli
from agentkit import buggy_repo, hermetic  # noqa: F401  (fixtures)
from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic

pytestmark = pytest.mark.usefixtures("hermetic")


def test_fix_on_the_engine_reuses_the_conversation_prefix(buggy_repo, tmp_path, capsys, monkeypatch):
    ckpt = write_synthetic(tmp_path / "lc", arch="loopcoder", preset="tiny", vocab_size=2048,
                           max_position_embeddings=16384)
    model = convert(ckpt, tmp_path / "lc.gguf", "q8_0", show_progress=False)
    trajectory = tmp_path / "run.jsonl"
    monkeypatch.setattr(local, "DEFAULT_MAX_TOKENS", 40)  # random text: keep the calls short
    monkeypatch.setattr(local, "DECODE_PROGRESS_EVERY", 16)
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "local", "--model", str(model), "--test-cmd", TEST_CMD,
                             "--max-steps", "3", "--trajectory", str(trajectory))
    events = read_events(trajectory)
    calls = [e for e in events if e["type"] == "model"]
    assert len(calls) == 3, err
    assert events[-1]["status"] == "format_errors", err
    first, *later = [c["usage"] for c in calls]
    assert first["prompt_tokens"] > 2000 and first["cached_tokens"] == 0  # the real agent prompt
    for prev, usage in zip([first, *later], later):
        # everything up to the previous prompt's end comes from the kept state
        assert usage["cached_tokens"] >= prev["prompt_tokens"]
        assert usage["prompt_tokens"] - usage["cached_tokens"] < usage["prompt_tokens"] // 4
    stages = {e["stage"] for e in events if e["type"] == "progress"}
    assert stages == {"prefill", "decode"} and "prefill" in err and "decode" in err
