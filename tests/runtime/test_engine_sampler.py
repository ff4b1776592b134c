"""The sampler's min-p and repetition penalty (temperature, top-k, top-p: test_generate.py)."""

import pytest
import torch

from loopcli.runtime.generate import Sampler

LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))


@pytest.mark.parametrize("min_p, kept", [(0.0, [0, 1, 2, 3]), (0.2, [1, 2, 3]), (0.5, [1, 3]), (0.9, [1])])
def test_min_p_drops_tokens_below_a_share_of_the_top(min_p, kept):
    p = Sampler(temperature=1, min_p=min_p).probs(LOGITS)
    assert sorted(torch.nonzero(p).flatten().tolist()) == kept
    assert torch.isclose(p.sum(), torch.tensor(1.0))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -1.0, 3.0, 0.5])
    out = Sampler(repetition_penalty=2.0).penalize(logits, [0, 1, 1])
    assert out.tolist() == [1.0, -2.0, 3.0, 0.5]
    assert Sampler().penalize(logits, [0, 1]).tolist() == logits.tolist()


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([1.0, 1.5, 0.2])
    assert Sampler()(logits, [1]) == 1
    assert Sampler(repetition_penalty=2.0)(logits, [1]) == 0


@pytest.mark.parametrize("kwargs", [{"min_p": -0.1}, {"min_p": 1.5}, {"repetition_penalty": 0}])
def test_bad_values_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Sampler(**kwargs)
