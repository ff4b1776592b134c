"""Bad checkpoints and files: one clear message naming the problem, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from loopcli.cli import main
from loopcli.runtime.synthetic import write_synthetic


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["loopcli", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.fixture
def ckpt(tmp_path):
    return write_synthetic(tmp_path / "m", dtype="f32")


@pytest.fixture
def text(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("def f(x):\n    return x + 1\n" * 20)
    return f


def rewrite_weights(ckpt, change):
    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def expect_error(monkeypatch, capsys, ckpt, text, *needles):
    code, err = run_cli(monkeypatch, capsys, "perplexity", str(ckpt), "--file", str(text), "--ctx", "16")
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err
    assert "Traceback" not in err


def test_missing_config(monkeypatch, capsys, ckpt, text):
    (ckpt / "config.json").unlink()
    expect_error(monkeypatch, capsys, ckpt, text, "no config.json")


def test_model_dir_missing(monkeypatch, capsys, tmp_path, text):
    expect_error(monkeypatch, capsys, tmp_path / "nope", text, "does not exist", "give a .gguf file or a checkpoint directory")


def test_unknown_architecture(monkeypatch, capsys, ckpt, text):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    expect_error(monkeypatch, capsys, ckpt, text, "MambaForCausalLM", "not supported")


def test_missing_tensor(monkeypatch, capsys, ckpt, text):
    rewrite_weights(ckpt, lambda t: t.pop("model.layers.1.self_attn.plt_gate.bias"))
    expect_error(monkeypatch, capsys, ckpt, text, "missing tensor model.layers.1.self_attn.plt_gate.bias")


def test_extra_tensor(monkeypatch, capsys, ckpt, text):
    rewrite_weights(ckpt, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}))
    expect_error(monkeypatch, capsys, ckpt, text, "unexpected tensor model.layers.9.mlp.up_proj.weight")


def test_wrong_shape(monkeypatch, capsys, ckpt, text):
    rewrite_weights(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(63)}))
    expect_error(monkeypatch, capsys, ckpt, text, "model.norm.weight", "[63]", "[64]")


def test_unsupported_dtype(monkeypatch, capsys, ckpt, text):
    def to_int8(t):
        t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"].to(torch.int8)
    rewrite_weights(ckpt, to_int8)
    expect_error(monkeypatch, capsys, ckpt, text, "model.layers.0.mlp.down_proj.weight", "I8")


def test_truncated_safetensors(monkeypatch, capsys, ckpt, text):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(monkeypatch, capsys, ckpt, text, "model.safetensors", "truncated")


def test_missing_shard(monkeypatch, capsys, tmp_path, text):
    ckpt = write_synthetic(tmp_path / "s", dtype="f32", shards=3)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    expect_error(monkeypatch, capsys, ckpt, text, "model-00002-of-00003.safetensors", "missing")


def test_text_file_missing(monkeypatch, capsys, ckpt, tmp_path):
    expect_error(monkeypatch, capsys, ckpt, tmp_path / "absent.txt", "absent.txt", "does not exist")


def test_text_too_short(monkeypatch, capsys, ckpt, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x")
    expect_error(monkeypatch, capsys, ckpt, short, "fewer than one chunk")


def test_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "loopcli", "perplexity", str(tmp_path), "--file", str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_synth_refuses_to_overwrite_without_force(monkeypatch, capsys, ckpt):
    before = (ckpt / "model.safetensors").read_bytes()
    code, err = run_cli(monkeypatch, capsys, "synth", str(ckpt))
    assert code == 2 and "--force" in err
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_synth_to_an_unwritable_place(monkeypatch, capsys):
    # /proc refuses new entries even to root, which CI runs as
    code, err = run_cli(monkeypatch, capsys, "synth", "/proc/loopcli-model")
    assert code == 2 and "cannot write to /proc" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_text_file_that_is_not_a_file(monkeypatch, capsys, ckpt, tmp_path, kind):
    target = tmp_path / "nope.txt"
    if kind == "directory":
        target.mkdir()
    needle = "does not exist" if kind == "missing" else "is not a regular file"
    expect_error(monkeypatch, capsys, ckpt, target, needle, "--file")
