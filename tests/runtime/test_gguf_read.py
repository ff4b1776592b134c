"""Our GGUF reader against gguf-py's on files the converter writes: same fields, values, types,
tensors and data; and the NaN/Inf check against dequantization."""

import gguf
import numpy as np
import pytest

from loopcli.convert.export import convert
from loopcli.runtime.gguf_load import FLOAT_FIELDS, nonfinite, open_gguf
from loopcli.runtime.gguf_read import GGUFFile
from loopcli.runtime.synthetic import write_synthetic

Q = gguf.GGMLQuantizationType
SIZES = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)


@pytest.fixture(scope="module", params=[("loopcoder", "q4_k_m"), ("llama", "f32"), ("qwen2", "bf16"),
                                        ("loopcoder", "q8_0")])
def converted(request, tmp_path_factory):
    arch, type_name = request.param
    root = tmp_path_factory.mktemp(arch)
    extra = {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}} if arch == "llama" else {}
    ckpt = write_synthetic(root / "src", arch=arch, dtype="f32", **SIZES, **extra)
    return convert(ckpt, root / "m.gguf", type_name, show_progress=False)


def test_fields_equal_gguf_py(converted):
    ref, ours = gguf.GGUFReader(converted), open_gguf(converted)
    assert isinstance(ours, GGUFFile)
    assert list(ours.fields) == list(ref.fields)
    for key, f in ref.fields.items():
        mine = ours.get_field(key)
        assert (mine.name, mine.offset, mine.types) == (f.name, f.offset, f.types), key
        assert mine.contents() == f.contents(), key
        assert type(mine.contents()) is type(f.contents()), key
        if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) > 3:
            assert mine.contents(2) == f.contents(2) and type(mine.contents(2)) is type(f.contents(2))
            assert mine.contents(slice(1, 3)) == f.contents(slice(1, 3))
            assert mine.contents(slice(None, None, 2)) == f.contents(slice(None, None, 2))
    assert ours.get_field("no.such.key") is None
    assert (ours.data_offset, ours.alignment) == (ref.data_offset, ref.alignment)


def test_tensors_equal_gguf_py(converted):
    ref, ours = gguf.GGUFReader(converted), open_gguf(converted)
    assert len(ours.tensors) == len(ref.tensors)
    for a, b in zip(ref.tensors, ours.tensors):
        for attr in ("name", "tensor_type", "n_elements", "n_bytes", "data_offset"):
            assert getattr(a, attr) == getattr(b, attr), (a.name, attr)
            assert type(getattr(a, attr)) is type(getattr(b, attr)), (a.name, attr)
        assert type(b) is type(a) and type(b.data) is type(a.data)
        assert b.shape.dtype == a.shape.dtype and np.array_equal(b.shape, a.shape)
        assert b.data.dtype == a.data.dtype and b.data.shape == a.data.shape, a.name
        assert np.array_equal(b.data, a.data, equal_nan=True), a.name


def test_string_arrays_decode_many_at_once_and_name_bad_utf8(tmp_path):
    tokens = [f"t{i}" for i in range(300)] + ["\u00e9\u4e2d\U0001F600", "", " ", "\n\t"]
    w = gguf.GGUFWriter(tmp_path / "v.gguf", "llama")
    w.add_token_list(tokens)
    w.add_tensor("x", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = GGUFFile(tmp_path / "v.gguf")
    assert r.get_field("tokenizer.ggml.tokens").contents() == tokens
    assert r.get_field("tokenizer.ggml.tokens").contents(slice(299, None)) == tokens[299:]
    raw = bytearray((tmp_path / "v.gguf").read_bytes())
    at = raw.index(b"t150")
    raw[at] = 0xFF  # a byte UTF-8 never has
    (tmp_path / "bad.gguf").write_bytes(bytes(raw))
    field = GGUFFile(tmp_path / "bad.gguf").get_field("tokenizer.ggml.tokens")
    from loopcli.runtime.errors import ModelError
    with pytest.raises(ModelError, match="not UTF-8"):
        field.contents()


def test_float_field_table_fits_each_block():
    for qtype, (offsets, width) in FLOAT_FIELDS.items():
        assert max(offsets) + width <= gguf.GGML_QUANT_SIZES[qtype][1], qtype.name


@pytest.mark.parametrize("qtype", [q for q in FLOAT_FIELDS if q not in (Q.Q8_1, Q.Q8_K, Q.F64)])
@pytest.mark.parametrize("bad", [np.float16(np.nan), np.float16(np.inf)])
def test_nonfinite_agrees_with_dequantization(qtype, bad):
    """A NaN/Inf written into each float field of a block: our check names it exactly when
    gguf-py's dequantization gives a non-finite value; clean blocks pass."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    raw = rng.integers(0, 256, size=(4, size), dtype=np.uint8)
    offsets, width = FLOAT_FIELDS[qtype]
    for off in offsets:  # make every float field a small finite number
        raw[:, off:off + width] = np.frombuffer(np.array([0.5] * 4, dtype=f"<f{width}").tobytes()
                                                if qtype != Q.BF16 else np.array([0x3F00] * 4, "<u2").tobytes(),
                                                np.uint8).reshape(4, width)
    raw = raw.reshape(1, -1)

    def reader_tensor(data):
        n = data.size // size * block
        return gguf.ReaderTensor("t", qtype, np.array([n], np.uint64), n, data.size, 0, data, None)

    def dequantized_finite(data):
        try:
            return np.isfinite(gguf.quants.dequantize(data, qtype)).all()
        except NotImplementedError:
            pytest.skip(f"gguf-py cannot dequantize {qtype.name}")

    assert nonfinite(reader_tensor(raw)) is None and dequantized_finite(raw)
    for off in offsets:
        data = raw.copy().reshape(4, size)
        if width == 2 and qtype != Q.BF16:
            data[2, off:off + 2] = np.frombuffer(bad.tobytes(), np.uint8)
        else:
            value = np.array([bad], dtype=f"<f{width}") if qtype != Q.BF16 else \
                (np.array([bad], np.float32).view(np.uint32) >> 16).astype("<u2")
            data[2, off:off + width] = np.frombuffer(value.tobytes(), np.uint8)
        data = data.reshape(1, -1)
        want = "NaN" if np.isnan(bad) else "Inf"
        assert nonfinite(reader_tensor(data)) == want, (qtype.name, off)
        assert not dequantized_finite(data), (qtype.name, off)
