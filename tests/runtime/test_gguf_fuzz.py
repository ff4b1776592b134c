"""Corrupt GGUF files through every command that opens one: exit 2, one `error:` line.

Each mutation class (missing keys, renamed or missing tensors, counts that lie, offsets out of
range, dims of 0, types that do not match the byte size, NaN/Inf weights, truncation, a
directory or FIFO) is applied to a tiny converted GGUF and run through `inspect`, `perplexity`
and `fix` with the local and llama.cpp backends. Random byte flips: a bounded sample by
default (FLIPS_CI), the full count with `-m slow` or LOOPCLI_SLOW=1 (FLIPS_SLOW); each must end
in exit 0 or 2, never a traceback or a hang.
"""

import os
import signal
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic

FLIPS_CI, FLIPS_SLOW = 12, 300
V = gguf.GGUFValueType


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return convert(write_synthetic(root / "src", dtype="f32"), root / "good.gguf", "q8_0", show_progress=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    (root / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    f = tmp_path_factory.mktemp("text") / "t.txt"
    f.write_text("def f(x):\n    return x + 1\n" * 40)
    return f


def expire(*_):
    raise TimeoutError("the command hung")


def commands(model, repo, text):
    return {
        "inspect": ["inspect", str(model)],
        "perplexity": ["perplexity", str(model), "--file", str(text), "--ctx", "16"],
        "fix-local": ["fix", "x", "--repo", str(repo), "--backend", "local", "--model", str(model)],
        "fix-llama.cpp": ["fix", "x", "--repo", str(repo), "--backend", "llama.cpp", "--model", str(model)],
    }


def run_cli(monkeypatch, capsys, args):
    """Exit code and stderr of one command; one that blocks (a FIFO opened for reading, a walk
    without end) fails the test after 60 s."""
    monkeypatch.setattr(sys, "argv", ["loopcli", *args])
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, capsys.readouterr().err


# ---- building corrupt files


def rewrite(src, dst, drop_keys=(), rename=None, drop_tensors=()):
    """The GGUF `src` rewritten with keys or tensors left out or renamed (offsets recomputed)."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.get_field("general.architecture").contents())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in drop_keys or key == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == V.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    if "general.architecture" in drop_keys:
        del w.kv_data[0]["general.architecture"]
    kept = [t for t in r.tensors if t.name not in drop_tensors]
    for t in kept:
        shape = gguf.quant_shape_to_byte_shape(tuple(int(d) for d in reversed(t.shape)), t.tensor_type)
        w.add_tensor_info((rename or {}).get(t.name, t.name), shape, np.dtype(np.uint8), t.n_bytes,
                          raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in kept:
        w.write_tensor_data(np.asarray(t.data).view(np.uint8))
    w.close()
    return dst


def tensor_info_offsets(path, name):
    """Byte offsets of a tensor's info fields: (dims, type, offset), from gguf-py's reader."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    start = t.field.offset + 8 + len(name)
    n_dims = len(t.shape)
    return start + 4, start + 4 + 8 * n_dims, start + 4 + 8 * n_dims + 4


def array_count_offset(path, key):
    f = gguf.GGUFReader(path).get_field(key)
    return f.offset + 8 + len(key) + 4 + 4


def patched(src, dst, offset, fmt, value):
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


def tensor_value(src, dst, name, byte_in_tensor, raw: bytes):
    """Overwrite bytes inside tensor `name`'s data."""
    t = next(t for t in gguf.GGUFReader(src).tensors if t.name == name)
    data = bytearray(src.read_bytes())
    at = t.data_offset + byte_in_tensor
    data[at:at + len(raw)] = raw
    dst.write_bytes(bytes(data))
    return dst


def last_tensor(path):
    return gguf.GGUFReader(path).tensors[-1].name


def count(path, what):
    r = gguf.GGUFReader(path)
    return len(r.tensors) if what == "tensors" else len(r.fields) - 3  # less the GGUF.* pseudo-keys


F32, Q8 = "blk.0.attn_norm.weight", "blk.0.ffn_up.weight"
TOKENS = "tokenizer.ggml.tokens"
# name -> (write the corrupt file `out` from the good file `g`, words the message must name)
MUTATIONS = {
    "missing-key-block_count": (lambda g, out: rewrite(g, out, drop_keys={"loopcoder.block_count"}), "block_count"),
    "missing-key-architecture": (lambda g, out: rewrite(g, out, drop_keys={"general.architecture"}),
                                 "general.architecture"),
    "missing-key-tokens": (lambda g, out: rewrite(g, out, drop_keys={TOKENS}), TOKENS),
    "missing-key-loop_count": (lambda g, out: rewrite(g, out, drop_keys={"loopcoder.loop_count"}), "loop_count"),
    "renamed-tensor": (lambda g, out: rewrite(g, out, rename={Q8: "blk.0.ffn_upp.weight"}), "ffn_up"),
    "missing-tensor": (lambda g, out: rewrite(g, out, drop_tensors={"blk.1.attn_k.weight"}), "blk.1.attn_k.weight"),
    "tensor-count-up": (lambda g, out: patched(g, out, 8, "<Q", count(g, "tensors") + 1), ""),
    "tensor-count-down": (lambda g, out: patched(g, out, 8, "<Q", count(g, "tensors") - 1), ""),
    "tensor-count-huge": (lambda g, out: patched(g, out, 8, "<Q", 1 << 60), "claims"),
    "kv-count-up": (lambda g, out: patched(g, out, 16, "<Q", count(g, "keys") + 1), ""),
    "kv-count-down": (lambda g, out: patched(g, out, 16, "<Q", count(g, "keys") - 1), ""),
    "token-count-huge": (lambda g, out: patched(g, out, array_count_offset(g, TOKENS), "<Q", 1 << 40), "claims"),
    "token-count-up": (lambda g, out: patched(g, out, array_count_offset(g, TOKENS), "<Q", 513), ""),
    "type-count-down": (lambda g, out: patched(g, out, array_count_offset(g, "tokenizer.ggml.token_type"), "<Q", 511), ""),
    "offset-out-of-range": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[2], "<Q", 1 << 50), Q8),
    "offset-shifted": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[2], "<Q", 0), Q8),
    "dim-zero": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[0], "<Q", 0), "dimension of 0"),
    "type-f32-for-q8_0": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[1], "<I", 0), ""),
    "type-q4_0-for-q8_0": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[1], "<I", 2), ""),
    "type-unknown": (lambda g, out: patched(g, out, tensor_info_offsets(g, Q8)[1], "<I", 99), "unknown type"),
    "nan-f32-weight": (lambda g, out: tensor_value(g, out, F32, 8, struct.pack("<f", float("nan"))), "NaN"),
    "inf-q8_0-scale": (lambda g, out: tensor_value(g, out, Q8, 34 * 3, struct.pack("<H", 0x7C00)), "Inf"),
    "truncated-in-header": (lambda g, out: out.write_bytes(g.read_bytes()[:2000]), "truncated"),
    "truncated-in-data": (lambda g, out: out.write_bytes(g.read_bytes()[:-1000]), "truncated"),
    "trailing-bytes": (lambda g, out: out.write_bytes(g.read_bytes() + bytes(4096)), "after its last tensor"),
    "empty": (lambda g, out: out.write_bytes(b""), "too few"),
    "not-gguf": (lambda g, out: out.write_bytes(b"PK\x03\x04" + bytes(100)), "magic"),
    "directory": (lambda g, out: out.mkdir(), "directory"),
    "fifo": (lambda g, out: os.mkfifo(out), "not a regular file"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_mutation_is_one_error_line_exit_2(monkeypatch, capsys, tmp_path, good, repo, text, mutation):
    make, needle = MUTATIONS[mutation]
    bad = tmp_path / "bad.gguf"
    make(good, bad)
    for name, args in commands(bad, repo, text).items():
        code, err = run_cli(monkeypatch, capsys, args)
        assert code == 2, (mutation, name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (mutation, name, err)
        assert "Traceback" not in err
        assert needle in err, (mutation, name, err)


def test_the_unmutated_file_passes(monkeypatch, capsys, good, repo, text):
    """The harness can pass: the same commands accept the good file."""
    for name in ("inspect", "perplexity"):
        code, err = run_cli(monkeypatch, capsys, commands(good, repo, text)[name])
        assert code == 0, (name, err)


def only_when_asked(request):
    """pytest runs every test by default; the full counts run with -m slow or LOOPCLI_SLOW=1."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("LOOPCLI_SLOW"):
        pytest.skip("the full count: runs with -m slow or LOOPCLI_SLOW=1")


def flip_runs(monkeypatch, capsys, good, tmp_path, repo, text, count):
    rng = np.random.default_rng(1234)
    data = good.read_bytes()
    outcomes = {0: 0, 2: 0}
    for i in range(count):
        buf = bytearray(data)
        # half the flips land in the header, where structure lives
        limit = len(buf) if i % 2 else min(len(buf), 20000)
        for at in rng.integers(0, limit, size=int(rng.integers(1, 4))):
            buf[at] ^= 1 << int(rng.integers(0, 8))
        bad = tmp_path / "flip.gguf"
        bad.write_bytes(bytes(buf))
        for name in ("inspect", "perplexity"):
            code, err = run_cli(monkeypatch, capsys, commands(bad, repo, text)[name])
            assert code in (0, 2), (i, name, err)
            assert "Traceback" not in err
            if code == 2:
                assert err.startswith("error: ") and err.count("\n") == 1, (i, name, err)
            outcomes[code] += 1
    assert outcomes[2] > 0  # the sample does hit structure


def test_random_byte_flips(monkeypatch, capsys, good, tmp_path, repo, text):
    flip_runs(monkeypatch, capsys, good, tmp_path, repo, text, FLIPS_CI)


@pytest.mark.slow
def test_random_byte_flips_full(request, monkeypatch, capsys, good, tmp_path, repo, text):
    only_when_asked(request)
    flip_runs(monkeypatch, capsys, good, tmp_path, repo, text, FLIPS_SLOW)
