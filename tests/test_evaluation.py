from types import SimpleNamespace

import pytest
import torch
from torch import nn

import anybit


class Bigram(nn.Module):
    """Logits depend on the previous token only, so any window with context scores alike."""

    def __init__(self, vocab=11):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab))
        self.calls = []

    def forward(self, ids):
        self.calls.append(ids.shape[1])
        return SimpleNamespace(logits=self.table[ids])


def _direct(model, ids):
    logp = torch.log_softmax(model.table[ids[:-1]], -1)
    return torch.exp(-logp.gather(1, ids[1:, None]).mean()).item()


def test_sliding_windows_score_every_token_once():
    model = Bigram()
    ids = torch.randint(0, 11, (100,))
    expected = _direct(model, ids)
    assert anybit.perplexity(model, ids, window=100, stride=100) == pytest.approx(expected, rel=1e-5)
    assert anybit.perplexity(model, ids[None], window=30, stride=10) == pytest.approx(expected, rel=1e-5)
    assert max(model.calls) <= 100


def test_disjoint_windows_use_each_first_token_as_context_only():
    model = Bigram()
    ids = torch.randint(0, 11, (40,))
    got = anybit.perplexity(model, ids, window=10, stride=10)
    logp = torch.log_softmax(model.table[ids[:-1]], -1).gather(1, ids[1:, None])[:, 0]
    scored = torch.tensor([i for i in range(1, 40) if i % 10 != 0])
    assert got == pytest.approx(torch.exp(-logp[scored - 1].mean()).item(), rel=1e-5)
    assert model.calls == [10, 10, 10, 10]


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        (torch.randint(0, 5, (2, 8)), {}, r"shape \(T,\) or \(1, T\)"),
        (torch.rand(8), {}, "LongTensor"),
        (torch.tensor([1]), {}, "at least 2 tokens"),
        (torch.arange(8), {"window": 4, "stride": 5}, "stride=5 must be in 1..window"),
    ],
)
def test_bad_input(ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        anybit.perplexity(Bigram(), ids, **kwargs)
