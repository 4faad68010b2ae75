"""Tests of the batched Alrao output heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from alrao_tune.alrao.heads import AlraoHeads, head_learning_rates


def _linears(heads: AlraoHeads) -> list[nn.Linear]:
    """K separate nn.Linear layers holding the same weights as ``heads``."""
    layers = []
    for k in range(heads.n_heads):
        layer = nn.Linear(heads.in_features, heads.out_features, dtype=heads.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(heads.weight[k])
            layer.bias.copy_(heads.bias[k])
        layers.append(layer)
    return layers


@pytest.mark.parametrize("lead", [(7,), (3, 5), ()])
def test_forward_equals_separate_linear_layers(lead: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    heads = AlraoHeads(6, 4, n_heads=5, dtype=torch.float64)
    x = torch.randn(*lead, 6, dtype=torch.float64)
    out = heads(x)
    assert out.shape == (*lead, 5, 4)
    for k, layer in enumerate(_linears(heads)):
        # head k is exactly log_softmax(Linear_k(x))
        torch.testing.assert_close(out[..., k, :], layer(x).log_softmax(-1), atol=1e-12, rtol=0)


def test_heads_are_initialised_independently_like_linear() -> None:
    torch.manual_seed(0)
    heads = AlraoHeads(50, 20, n_heads=4)
    bound = 1.0 / math.sqrt(50)
    # nn.Linear's init: U(-1/sqrt(D), 1/sqrt(D)) for weight (kaiming a=sqrt(5)) and bias
    assert heads.weight.abs().max() <= bound
    assert heads.bias.abs().max() <= bound
    assert heads.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    # no two heads start equal
    assert not torch.equal(heads.weight[0], heads.weight[1])


def test_replacement_weights_are_used() -> None:
    heads = AlraoHeads(3, 2, n_heads=2)
    x = torch.randn(4, 3)
    zero_w, zero_b = torch.zeros(2, 2, 3), torch.zeros(2, 2)
    # zero parameters give the uniform distribution for every head
    torch.testing.assert_close(heads(x, zero_w, zero_b), torch.full((4, 2, 2), -math.log(2)))


def test_classification_nll_is_cross_entropy_per_head() -> None:
    heads = AlraoHeads(6, 4, n_heads=3, dtype=torch.float64)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    nll = heads.nll(heads(x), y)
    assert nll.shape == (8, 3)
    for k, layer in enumerate(_linears(heads)):
        expected = F.cross_entropy(layer(x), y, reduction="none")
        torch.testing.assert_close(nll[:, k], expected)


def test_regression_outputs_means_and_gaussian_nll() -> None:
    heads = AlraoHeads(6, 2, n_heads=3, task="regression", dtype=torch.float64)
    x, y = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 2, dtype=torch.float64)
    out = heads(x)
    assert out.shape == (2, 5, 3, 2)
    layers = _linears(heads)
    # raw linear outputs are the Gaussian means
    torch.testing.assert_close(out[..., 1, :], layers[1](x))
    nll = heads.nll(out, y)
    assert nll.shape == (2, 5, 3)
    expected = 0.5 * ((y - layers[2](x)) ** 2).sum(-1) + math.log(2 * math.pi)
    torch.testing.assert_close(nll[..., 2], expected)


def test_regression_scalar_target_without_trailing_dim() -> None:
    heads = AlraoHeads(4, 1, n_heads=2, task="regression")
    x, y = torch.randn(10, 4), torch.randn(10)
    torch.testing.assert_close(heads.nll(heads(x), y), heads.nll(heads(x), y[:, None]))


def test_head_rates_are_log_linspace() -> None:
    rates = head_learning_rates(5, 1e-4, 1.0)
    # exp(linspace(log 1e-4, log 1, 5)) = 1e-4, 1e-3, 1e-2, 1e-1, 1
    torch.testing.assert_close(rates, torch.tensor([1e-4, 1e-3, 1e-2, 1e-1, 1.0]))
    assert rates.dtype == torch.float32
    heads = AlraoHeads(3, 2, n_heads=5)
    torch.testing.assert_close(heads.head_rates(1e-4, 1.0), rates)


def test_single_head_rate_is_geometric_mean() -> None:
    torch.testing.assert_close(head_learning_rates(1, 1e-4, 1.0), torch.tensor([1e-2]))


def test_alrao_feature_lrs_protocol() -> None:
    heads = AlraoHeads(3, 2, n_heads=4)
    lrs = heads.alrao_feature_lrs(1e-3, 1.0)
    assert set(lrs) == {"weight", "bias"}
    (dim_w, rates_w), (dim_b, rates_b) = lrs["weight"], lrs["bias"]
    # one fixed rate per head along dim 0, one shared vector (one feature per head)
    assert dim_w == dim_b == 0
    assert rates_w is rates_b
    assert rates_w.dtype == torch.float32 and rates_w.device == heads.weight.device
    torch.testing.assert_close(rates_w, head_learning_rates(4, 1e-3, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_heads": 0}, "n_heads must be an integer >= 1"),
        ({"task": "ranking"}, "task must be one of"),
        ({"in_features": 0}, "in_features must be an integer >= 1"),
        ({"out_features": -1}, "out_features must be an integer >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"in_features": 3, "out_features": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        AlraoHeads(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lr_min", "lr_max"), [(0.0, 1.0), (1.0, 0.1), (-1.0, 1.0)])
def test_head_rates_reject_bad_interval(lr_min: float, lr_max: float) -> None:
    with pytest.raises(ValueError, match="need 0 < lr_min <= lr_max"):
        head_learning_rates(3, lr_min, lr_max)


def test_heads_with_their_own_interval_leave_the_body_draws_unchanged() -> None:
    from alrao_tune.alrao import AlraoModel, AlraoSGD

    def build(head_interval):
        torch.manual_seed(0)
        model = AlraoModel(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), 8, 3, n_heads=4,
                           head_interval=head_interval)
        return model, AlraoSGD(model, 1e-4, 1.0, seed=3)

    same, opt_same = build(None)
    wide, opt_wide = build((1e-3, 10.0))
    rates = lambda opt, model, p: opt.state[p]["feature_lr"].double()  # noqa: E731
    # the heads' rates follow their own interval, in the optimizer and for lr_eff
    expected = head_learning_rates(4, 1e-3, 10.0).double()
    torch.testing.assert_close(rates(opt_wide, wide, wide.heads.weight), expected)
    torch.testing.assert_close(wide.heads.head_rates(1e-4, 1.0).double(), expected)
    torch.testing.assert_close(rates(opt_same, same, same.heads.weight),
                               head_learning_rates(4, 1e-4, 1.0).double())
    # the body's per-feature rates are the same draws (the heads draw nothing)
    body = lambda opt, model: rates(opt, model, model.preclassifier[0].weight)  # noqa: E731
    torch.testing.assert_close(body(opt_wide, wide), body(opt_same, same))
    assert "interval=(0.001, 10.0)" in repr(wide.heads)
    with pytest.raises(ValueError, match="lr_min <= lr_max"):
        AlraoHeads(8, 3, n_heads=4, interval=(1.0, 0.1))
