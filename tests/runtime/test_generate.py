import pytest
import torch

from loopcli.runtime.generate import Generation, Sampler, TextStream, generate_tokens

PROMPT = [5, 17, 42, 99, 3, 250, 7]


def tag_decode(ids):
    """A stand-in tokenizer: every id is its own visible piece."""
    return "".join(f"<{i}>" for i in ids)


def greedy_run(model, n):
    return list(generate_tokens(model, PROMPT, Sampler(), n))


@pytest.mark.parametrize("arch, overrides", [
    ("loopcoder", {}),
    ("loopcoder", {"plt_window_size": [2, 0]}),  # the ring wraps during generation
    ("llama", {}),
])
def test_greedy_is_argmax_of_full_forward(make_model, arch, overrides):
    model = make_model(arch, **overrides)
    ids = list(PROMPT)
    for token in generate_tokens(model, PROMPT, Sampler(temperature=0), 12):
        logits = model(torch.tensor([ids]))[0, -1]
        top2 = torch.topk(logits, 2).values
        assert top2[0] - top2[1] > 1e-4  # a clear winner, so the comparison is meaningful
        assert token == int(torch.argmax(logits))
        ids.append(token)


def test_max_new_tokens_and_lazy_feedback(make_model):
    model = make_model()
    assert len(greedy_run(model, 5)) == 5
    assert greedy_run(model, 5)[:3] == greedy_run(model, 3)


def test_eos_stops_and_is_counted(make_model):
    model = make_model()
    first, second, *_ = greedy_run(model, 4)
    gen = Generation(model, tag_decode, PROMPT, Sampler(), 10, eos_ids=[second])
    assert "".join(gen) == f"<{first}>"
    assert (gen.finish_reason, gen.completion_tokens) == ("stop", 2)


def test_length_finish(make_model):
    model = make_model()
    gen = Generation(model, tag_decode, PROMPT, Sampler(), 6)
    assert "".join(gen) == tag_decode(greedy_run(model, 6))
    assert (gen.finish_reason, gen.completion_tokens) == ("length", 6)


def test_stop_string_cuts_text(make_model):
    model = make_model()
    run = greedy_run(model, 6)
    gen = Generation(model, tag_decode, PROMPT, Sampler(), 10, stop=[f"<{run[2]}>"])
    assert "".join(gen) == tag_decode(run[:2])
    assert (gen.finish_reason, gen.completion_tokens) == ("stop", 3)


def test_seeded_sampling_is_reproducible(make_model):
    model = make_model()
    sample = lambda seed: list(generate_tokens(model, PROMPT, Sampler(temperature=1.5, seed=seed), 16))
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_empty_prompt_is_an_error(make_model):
    with pytest.raises(ValueError, match="prompt is empty"):
        next(generate_tokens(make_model(), [], Sampler(), 3))


# ------------------------------------------------------------------ the sampler's distribution

LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))


def test_temperature_scales_logits():
    assert torch.allclose(Sampler(temperature=1).probs(LOGITS), torch.tensor([0.05, 0.5, 0.15, 0.3]))
    assert torch.allclose(Sampler(temperature=2).probs(LOGITS), torch.softmax(LOGITS / 2, -1))
    assert Sampler(temperature=0).probs(LOGITS).tolist() == [0, 1, 0, 0]


def test_top_k_masks_all_but_k():
    p = Sampler(temperature=1, top_k=2).probs(LOGITS)
    assert p[0] == 0 and p[2] == 0
    assert torch.allclose(p[[1, 3]], torch.tensor([0.5, 0.3]) / 0.8)


@pytest.mark.parametrize("top_p, kept", [(0.5, [1]), (0.7, [1, 3]), (0.8, [1, 3]), (0.81, [1, 3, 2]),
                                         (1.0, [1, 3, 2, 0])])
def test_top_p_keeps_smallest_head_reaching_p(top_p, kept):
    p = Sampler(temperature=1, top_p=top_p).probs(LOGITS)
    assert sorted(torch.nonzero(p).flatten().tolist()) == sorted(kept)
    assert torch.isclose(p.sum(), torch.tensor(1.0))


def test_samples_follow_the_masked_distribution():
    sampler = Sampler(temperature=1, top_k=3, seed=0)
    counts = torch.bincount(torch.tensor([sampler(LOGITS) for _ in range(3000)]), minlength=4)
    assert counts[0] == 0
    assert torch.allclose(counts / 3000, sampler.probs(LOGITS), atol=0.03)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_k": -1}, "top_k"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
])
def test_bad_sampling_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampler(**kwargs)


# ------------------------------------------------------------------ streamed text

def byte_decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_are_never_split():
    text = "a é € 😀 end"
    stream = TextStream(byte_decode)
    deltas = [stream.push(b) for b in text.encode()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + stream.flush() == text
    assert deltas[2] == "" and deltas[3] == "é"  # first byte of é held until the second


def test_incomplete_bytes_come_out_at_flush():
    stream = TextStream(byte_decode)
    assert stream.push(ord("x")) == "x"
    assert stream.push(0xE2) == ""
    assert stream.flush() == "\ufffd"


def test_stop_strings_are_held_and_cut():
    stream = TextStream(byte_decode, stop=["STOP"])
    out = "".join(stream.push(b) for b in b"hello ST")
    assert out == "hello " and not stream.stopped  # "ST" might begin the stop string
    assert stream.push(ord("O")) + stream.push(ord("P")) == ""
    assert stream.stopped and stream.flush() == ""


def test_partial_stop_string_released_when_it_diverges_or_ends():
    stream = TextStream(byte_decode, stop=["STOP"])
    assert "".join(stream.push(b) for b in b"a STx") == "a STx"
    assert "".join(stream.push(b) for b in b" S") == " "
    assert stream.flush() == "S"
