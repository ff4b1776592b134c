"""`loopcli inspect` on any GGUF (header, keys, tensor table), the memory estimate only for
architectures we run, and the llama.cpp backend's check before llama.cpp sees a file."""

import json
import struct
import sys

import gguf
import numpy as np
import pytest

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["loopcli", *args])
    main()
    return capsys.readouterr().out


@pytest.fixture
def foreign(tmp_path):
    """A GGUF of an architecture loopcli does not run."""
    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(path, "phi3")
    w.add_block_count(1)
    w.add_token_list([f"t{i}" for i in range(1000)])
    w.add_tensor("token_embd.weight", np.ones((1000, 32), np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_any_gguf_shows_header_keys_and_tensors(monkeypatch, capsys, foreign):
    info = json.loads(run(monkeypatch, capsys, "inspect", str(foreign), "--json"))
    assert info["architecture"] == "phi3" and info["version"] == 3
    assert "memory" not in info and "fits" not in info  # no estimate for an unknown architecture
    assert info["keys"]["phi3.block_count"] == 1
    assert info["keys"]["tokenizer.ggml.tokens"] == {"array": "string", "length": 1000,
                                                     "first": ["t0", "t1", "t2", "t3"]}
    assert info["tensor_table"] == [
        {"name": "token_embd.weight", "type": "F32", "shape": [32, 1000], "bytes": 128000,
         "offset": info["data_offset"]},
        {"name": "output_norm.weight", "type": "F16", "shape": [32], "bytes": 64,
         "offset": info["data_offset"] + 128000},
    ]
    text = run(monkeypatch, capsys, "inspect", str(foreign))
    assert "phi3.block_count = 1" in text and "[string x 1000]" in text
    assert "output_norm.weight" in text and "no memory estimate" in text


def test_known_architecture_gets_the_memory_estimate(monkeypatch, capsys, tmp_path):
    out = convert(write_synthetic(tmp_path / "src", dtype="f32"), tmp_path / "m.gguf", "q8_0",
                  show_progress=False)
    text = run(monkeypatch, capsys, "inspect", str(out), "--gpu-mem", "1GB")
    assert "loopcoder.loop_count = 2" in text and "blk.1.plt_gate.weight" in text
    assert "memory at context 4096" in text and "fits in" in text


def test_nan_in_a_foreign_gguf_is_named(monkeypatch, capsys, foreign):
    r = gguf.GGUFReader(foreign)
    t = r.tensors[1]
    raw = bytearray(foreign.read_bytes())
    raw[t.data_offset + 6:t.data_offset + 8] = struct.pack("<H", 0x7E00)  # f16 NaN
    foreign.write_bytes(bytes(raw))
    monkeypatch.setattr(sys, "argv", ["loopcli", "inspect", str(foreign)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "output_norm.weight contains NaN" in err and err.count("\n") == 1


def test_llama_cpp_never_sees_a_corrupt_file(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    import loopcli.backends.llama_cpp as backend
    from loopcli.backends.base import BackendError

    def refuse(*a, **kw):
        raise AssertionError("llama.cpp was handed the file")

    monkeypatch.setattr(backend, "_CountingLlama", refuse)
    good = convert(write_synthetic(tmp_path / "src", arch="llama", dtype="f32"), tmp_path / "m.gguf",
                   "f16", show_progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(BackendError, match="truncated"):
        backend.LlamaCppBackend(bad)
