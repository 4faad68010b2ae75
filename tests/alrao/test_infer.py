"""Tests of the channel-dimension fallback (alrao_tune/alrao/infer.py) and describe_features.

Each layer below is a plain-torch stand-in for what modern models own (an RMSNorm, GRN, a
layer scale, Hugging Face's ``Conv1D`` with weight ``[in, out]``, class tokens and position
embeddings on a container, a relative-position bias table). The checks are black-box: one
AlraoSGD step moves each element by exactly ``-rate * grad``, and elements the docstring puts
in one feature share one rate.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from alrao_tune.alrao import (
    AlraoSGD,
    FeatureRow,
    UnsupportedLayerError,
    describe_features,
    feature_lrs,
    format_features,
)

D = 4


class RMSNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(D))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class GRN(nn.Module):
    """ConvNeXt-V2's global response normalisation on channel-last maps [B, H, W, D]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, 1, D))
        self.bias = nn.Parameter(torch.randn(1, 1, 1, D))

    def forward(self, x: Tensor) -> Tensor:
        g = x.norm(p=2, dim=(1, 2), keepdim=True)
        return self.weight * (x * g / (g.mean(-1, keepdim=True) + 1e-6)) + self.bias + x


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a linear layer whose weight is ``[in, out]``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class SquareLinear(nn.Module):
    """A torch-layout ``[out, in]`` linear layer of an unknown type, square."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(D, D))
        self.bias = nn.Parameter(torch.randn(D))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Embeddings(nn.Module):
    """ViT-style: a patch projection, a class token, position embeddings, a layer scale."""

    def __init__(self, n_patches: int = 3) -> None:
        super().__init__()
        self.proj = nn.Linear(2, D)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.position_embeddings = nn.Parameter(torch.randn(1, n_patches + 1, D))
        self.layer_scale = nn.Parameter(torch.rand(D, 1, 1))
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.bias_table = nn.Parameter(torch.randn(5, 2))  # [(2W-1)^2, heads]

    def forward(self, x: Tensor) -> Tensor:
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), self.proj(x)], 1)
        tokens = tokens + self.position_embeddings
        scaled = (tokens.transpose(1, 2)[..., None] * self.layer_scale).squeeze(-1)
        return scaled.sum() * self.temperature + self.bias_table.sum() * tokens.mean()


def one_step(model: nn.Module, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """One AlraoSGD step on a random linear loss; parameter name -> (rates implied, grad)."""
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    AlraoSGD(model, 1e-2, 1.0, seed=0).step()
    return {n: ((before[n] - p.detach()) / p.grad, p.grad) for n, p in model.named_parameters()}


def shared_along(rates: Tensor, dim: int) -> Tensor:
    """The rates of a parameter, checked constant across every dim but ``dim``."""
    moved = rates.movedim(dim, 0).reshape(rates.shape[dim], -1)
    torch.testing.assert_close(moved, moved[:, :1].expand_as(moved), atol=1e-9, rtol=1e-9)
    return moved[:, 0]


@pytest.mark.parametrize(
    ("module", "x", "dims", "n"),
    [
        (RMSNorm(), torch.randn(3, D), {"weight": 0}, D),
        (GRN(), torch.randn(2, 3, 3, D), {"weight": 3, "bias": 3}, D),
        (Conv1D(D, 6), torch.randn(3, D), {"weight": 1, "bias": 0}, 6),
        (Conv1D(D, D), torch.randn(3, D), {"weight": 1, "bias": 0}, D),
        (SquareLinear(), torch.randn(3, D), {"weight": 0, "bias": 0}, D),
    ],
    ids=["rmsnorm", "grn", "conv1d", "conv1d_square", "square_linear"],
)
def test_inferred_features_get_one_rate_each(module: nn.Module, x: Tensor,
                                             dims: dict[str, int], n: int) -> None:  # fmt: skip
    torch.manual_seed(0)
    module = module.double()
    # every element of a slice along the inferred channel dim moved with the same rate
    rates = {k: shared_along(r, dims[k]) for k, (r, _) in one_step(module, x.double()).items()}
    # the weight's output units and the bias share one rate per unit
    if "bias" in rates:
        torch.testing.assert_close(rates["weight"], rates["bias"], atol=1e-9, rtol=1e-9)
    # n different rates (one per output unit), all in the interval
    values = rates["weight"]
    assert len(values) == n and len(values.unique()) == n
    assert values.min() >= 1e-2 * (1 - 1e-9) and values.max() <= 1.0 + 1e-9


def test_container_parameters_of_one_channel_count_share_a_feature_set() -> None:
    torch.manual_seed(0)
    model = Embeddings().double()
    rates = one_step(model, torch.randn(2, 3, 2, dtype=torch.float64))
    cls = shared_along(rates["cls_token"][0], 2)
    # class token [1, 1, D], position embeddings [1, T, D] and layer scale [D, 1, 1]: the same
    # D channels of the module's output, so one rate per channel, shared by the three
    torch.testing.assert_close(shared_along(rates["position_embeddings"][0], 2), cls)
    torch.testing.assert_close(shared_along(rates["layer_scale"][0], 0), cls)
    # the bias table [5, heads] is a table: one feature per head (last dim)
    assert len(shared_along(rates["bias_table"][0], 1).unique()) == 2
    rows = {r.parameter: r for r in describe_features(model)}
    assert rows["temperature"] == FeatureRow("", "Embeddings", "temperature", (),
                                             "inferred: scalar (one feature)", 0, 1)  # fmt: skip
    assert rows["position_embeddings"].rule == "inferred: table (last dim 2)"
    assert rows["layer_scale"].rule == "inferred: vector (dim 0)"


def test_describe_features_lists_every_parameter_and_formats_a_table() -> None:
    model = nn.Sequential(nn.Linear(3, D), RMSNorm(), Conv1D(D, 2))
    rows = describe_features(model)
    assert [(r.module, r.type, r.parameter, r.rule, r.dim, r.n_features) for r in rows] == [
        ("0", "Linear", "weight", "Linear rule", 0, D),
        ("0", "Linear", "bias", "Linear rule", 0, D),
        ("1", "RMSNorm", "weight", "inferred: vector (dim 0)", 0, D),
        ("2", "Conv1D", "weight", "inferred: matches the bias (dim 1)", 1, 2),
        ("2", "Conv1D", "bias", "inferred: vector (dim 0)", 0, 2),
    ]
    text = format_features(rows)
    assert text.splitlines()[0].split() == list(FeatureRow._fields)
    assert "inferred: matches the bias (dim 1)" in text


def test_strict_raises_instead_of_inferring() -> None:
    model = nn.Sequential(nn.Linear(3, D), RMSNorm())
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(.*RMSNorm\).*\['weight'\].*strict"):
        feature_lrs(model, 1e-3, 1.0, strict=True)
    with pytest.raises(UnsupportedLayerError, match="strict"):
        describe_features(model, strict=True)
    with pytest.raises(UnsupportedLayerError, match="strict"):
        AlraoSGD(model, 1e-3, 1.0, strict=True)
    # known layers alone pass under strict
    assert len(describe_features(nn.Linear(2, 2), strict=True)) == 2


class Ambiguous(nn.Module):
    """A square weight with a bias, whose forward the probe cannot run on a [2, D] input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(D, D))
        self.bias = nn.Parameter(torch.randn(D))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x @ self.weight + self.bias * mask


def test_undecidable_square_weight_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"ambiguous.*register_feature_rule"):
        feature_lrs(Ambiguous(), 1e-3, 1.0)


def test_probe_leaves_grads_and_rng_untouched() -> None:
    torch.manual_seed(0)
    layer = SquareLinear()
    state = torch.get_rng_state()
    feature_lrs(layer, 1e-3, 1.0, generator=torch.Generator().manual_seed(0))
    # the probe ran the layer but left no gradient and drew nothing from the global RNG
    assert layer.weight.grad is None
    assert torch.equal(torch.get_rng_state(), state)
