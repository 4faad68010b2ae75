"""Tests of the Alrao feature layout (alrao_tune/alrao/lr.py).

The per-layer tests are black-box: one AlraoSGD step without momentum must move each element
by exactly ``-rate * grad``, where the rate depends only on the element's feature. The test
writes down, for each layer type, which feature every element belongs to ("labels"), reads
the implied rate ``-delta / grad`` off the parameters and checks it against the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import alrao_tune.alrao.features as features_module
from alrao_tune.alrao.lr import (
    FeatureSet,
    UnsupportedLayerError,
    describe,
    feature_lrs,
    log_uniform,
    n_features,
    register_feature_rule,
)
from alrao_tune.alrao.optim import AlraoSGD

LR_MIN, LR_MAX = 1e-2, 1.0


def along(p: Tensor, dim: int, offset: int = 0, modulo: int | None = None) -> Tensor:
    """Label of each element of ``p``: its index along ``dim`` (mod ``modulo``) + offset."""
    idx = torch.arange(p.shape[dim])
    if modulo is not None:
        idx = idx % modulo
    shape = [1] * p.dim()
    shape[dim] = -1
    return (idx + offset).view(shape).expand(p.shape)


def rows_and_bias(m: nn.Module, offset: int = 0, prefix: str = "") -> dict[str, Tensor]:
    return {f"{prefix}{n}": along(p, 0, offset) for n, p in m.named_parameters(recurse=False)}


def conv_transpose_labels(m: nn.Module) -> dict[str, Tensor]:
    w = m.weight  # [in, out/groups, *k]; output channel of w[i, j] is g(i) * out/groups + j
    group = (torch.arange(w.shape[0]) // (w.shape[0] // m.groups)).view(-1, 1)
    out = group * w.shape[1] + torch.arange(w.shape[1])
    return {"weight": out.view(*out.shape, *[1] * (w.dim() - 2)).expand(w.shape),
            "bias": along(m.bias, 0)}  # fmt: skip


def elementwise_labels(m: nn.Module) -> dict[str, Tensor]:
    return {n: torch.arange(p.numel()).view(p.shape) for n, p in m.named_parameters()}


def rnn_labels(m: nn.Module) -> dict[str, Tensor]:
    """Unit ``r % H`` of layer k, direction d; every (k, d) has its own H features."""
    labels, h = {}, m.hidden_size
    for name, p in m.named_parameters():
        kind, _, rest = name.rpartition("_l")
        layer, reverse = int(rest.split("_")[0]), name.endswith("_reverse")
        base = (2 * layer + reverse) * 100
        if kind == "weight_hr":  # LSTM projection: its own per-row features
            labels[name] = along(p, 0, base + 50)
        else:
            labels[name] = along(p, 0, base, modulo=h)
    return labels


def cell_labels(m: nn.Module) -> dict[str, Tensor]:
    return {n: along(p, 0, modulo=m.hidden_size) for n, p in m.named_parameters()}


def attention_labels(m: nn.Module) -> dict[str, Tensor]:
    e = m.embed_dim
    block = {"q_proj_weight": 0, "k_proj_weight": 1, "v_proj_weight": 2, "bias_k": 1, "bias_v": 2}
    labels = rows_and_bias(m.out_proj, offset=1000, prefix="out_proj.")
    for name, p in m.named_parameters(recurse=False):
        dim = 2 if name.startswith("bias_") else 0
        labels[name] = along(p, dim, offset=block.get(name, 0) * e)
    return labels


def seq(t: int = 5, n: int = 2, f: int = 3) -> tuple[Tensor, ...]:
    return (torch.randn(t, n, f),)


# name -> (module factory, input factory, labels)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple], Callable]] = {
    "linear": (lambda: nn.Linear(5, 4), lambda: (torch.randn(3, 5),), rows_and_bias),
    "bilinear": (lambda: nn.Bilinear(2, 3, 4), lambda: (torch.randn(5, 2), torch.randn(5, 3)),
                 rows_and_bias),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda: (torch.randn(2, 3, 7),), rows_and_bias),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), lambda: (torch.randn(2, 3, 6, 6),), rows_and_bias),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda: (torch.randn(2, 2, 4, 4, 4),), rows_and_bias),
    "conv2d_depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4), lambda: (torch.randn(2, 4, 6, 6),),
                         rows_and_bias),
    "conv2d_grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2), lambda: (torch.randn(2, 4, 6, 6),),
                       rows_and_bias),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), lambda: (torch.randn(2, 3, 5),),
                         conv_transpose_labels),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(3, 4, 3), lambda: (torch.randn(2, 3, 4, 4),),
                         conv_transpose_labels),
    "conv_transpose2d_grouped": (lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
                                 lambda: (torch.randn(2, 4, 4, 4),), conv_transpose_labels),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(2, 3, 2),
                         lambda: (torch.randn(2, 2, 3, 3, 3),), conv_transpose_labels),
    "batchnorm1d": (lambda: nn.BatchNorm1d(4), lambda: (torch.randn(8, 4),), rows_and_bias),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), lambda: (torch.randn(4, 3, 3, 3),), rows_and_bias),
    "layernorm": (lambda: nn.LayerNorm(5), lambda: (torch.randn(3, 5),), rows_and_bias),
    "layernorm_2d_shape": (lambda: nn.LayerNorm([3, 4]), lambda: (torch.randn(2, 3, 4),),
                           elementwise_labels),
    "rmsnorm": (lambda: nn.RMSNorm(5), lambda: (torch.randn(3, 5),), rows_and_bias),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), lambda: (torch.randn(2, 4, 5),), rows_and_bias),
    "instancenorm": (lambda: nn.InstanceNorm2d(3, affine=True),
                     lambda: (torch.randn(2, 3, 4, 4),), rows_and_bias),
    "prelu": (lambda: nn.PReLU(3), lambda: (torch.randn(2, 3, 4),), rows_and_bias),
    "embedding": (lambda: nn.Embedding(10, 4), lambda: (torch.arange(10).view(2, 5),),
                  lambda m: {"weight": along(m.weight, 1)}),
    "lstm_2layer_bidirectional": (lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True), seq,
                                  rnn_labels),
    "lstm_proj": (lambda: nn.LSTM(3, 4, proj_size=2), seq, rnn_labels),
    "gru": (lambda: nn.GRU(3, 4), seq, rnn_labels),
    "rnn_2layer": (lambda: nn.RNN(3, 4, num_layers=2), seq, rnn_labels),
    "lstm_cell": (lambda: nn.LSTMCell(3, 4), lambda: (torch.randn(2, 3),), cell_labels),
    "gru_cell": (lambda: nn.GRUCell(3, 4), lambda: (torch.randn(2, 3),), cell_labels),
    "attention": (lambda: nn.MultiheadAttention(4, 2), lambda: seq(f=4) * 3, attention_labels),
    "attention_kdim_bias_kv": (
        lambda: nn.MultiheadAttention(4, 2, kdim=3, vdim=5, add_bias_kv=True),
        lambda: (torch.randn(3, 2, 4), torch.randn(6, 2, 3), torch.randn(6, 2, 5)),
        attention_labels,
    ),
}  # fmt: skip


def one_step(module: nn.Module, inputs: tuple) -> tuple[dict, dict, dict]:
    """Take one AlraoSGD step on a random linear loss; return deltas, grads and params."""
    out = module(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out * torch.randn_like(out)).sum().backward()
    params = dict(module.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: p.grad.clone() for n, p in params.items()}
    AlraoSGD(module, LR_MIN, LR_MAX, seed=1).step()
    deltas = {n: p.detach() - before[n] for n, p in params.items()}
    return deltas, grads, params


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_is_minus_feature_rate_times_grad(case: str) -> None:
    torch.manual_seed(0)
    factory, make_inputs, labelling = CASES[case]
    module = factory().double()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in make_inputs())
    deltas, grads, params = one_step(module, inputs)
    labels = labelling(module)
    # the test's labels cover exactly the module's parameters
    assert set(labels) == set(params)

    # the rate of each feature, read off its element with the largest |grad|
    rate: dict[int, float] = {}
    best: dict[int, float] = {}
    for name, lab in labels.items():
        for label, g, d in zip(lab.flatten().tolist(), grads[name].flatten().tolist(),
                               deltas[name].flatten().tolist(), strict=True):  # fmt: skip
            if abs(g) > best.get(label, 0.0):
                best[label], rate[label] = abs(g), -d / g
    # every feature got a usable gradient, so every rate is identified
    assert set(rate) == {int(v) for lab in labels.values() for v in lab.unique()}
    assert min(best.values()) > 1e-6

    for name, lab in labels.items():
        expected = torch.tensor([rate[int(v)] for v in lab.flatten()], dtype=torch.float64)
        # every element moved by exactly -rate[its feature] * grad (shared across gates,
        # ih/hh, weight and bias whenever the labels say they share a feature)
        torch.testing.assert_close(
            deltas[name], -expected.view(lab.shape) * grads[name], atol=1e-12, rtol=0
        )
    values = torch.tensor(sorted(rate.values()), dtype=torch.float64)
    # rates lie in [lr_min, lr_max] (up to the rounding of reading them off delta / grad)
    assert values.min() >= LR_MIN * (1 - 1e-9) and values.max() <= LR_MAX * (1 + 1e-9)
    # different features got different rates: no two sorted rates (nearly) coincide
    if len(values) > 1:
        assert (values.diff() / values[1:]).min() > 1e-8


# --- log_uniform -------------------------------------------------------------------------------


def test_log_uniform_range_dtype_and_distribution() -> None:
    rates = log_uniform(20_000, 1e-4, 1.0, torch.Generator().manual_seed(0))
    assert rates.dtype == torch.float32 and rates.shape == (20_000,)
    assert rates.min() >= 1e-4 and rates.max() <= 1.0
    logs = rates.double().log10()
    # log10 of the rates is uniform on (-4, 0): mean -2, variance 16 / 12
    assert abs(logs.mean().item() + 2) < 0.05
    assert abs(logs.var().item() - 16 / 12) < 0.05
    # each decade holds a quarter of the rates
    counts = torch.histc(logs, bins=4, min=-4, max=0) / len(logs)
    assert torch.allclose(counts, torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)


def test_log_uniform_is_reproducible_and_exact_for_a_point_interval() -> None:
    a = log_uniform(5, 1e-3, 1.0, torch.Generator().manual_seed(3))
    b = log_uniform(5, 1e-3, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    point = log_uniform(4, 0.1, 0.1, dtype=torch.float64)
    # lr_min == lr_max gives exactly lr_min (so Alrao can reproduce plain SGD)
    assert point.tolist() == [0.1] * 4


@pytest.mark.parametrize(
    ("lr_min", "lr_max", "match"),
    [
        (0.0, 1.0, "lr_min must be positive"),
        (-1e-3, 1.0, "lr_min must be positive"),
        (math.nan, 1.0, "lr_min must be positive"),
        (1e-3, math.inf, "lr_max must be finite"),
        (1.0, 0.5, "lr_min must be ≤ lr_max"),
    ],
)
def test_bad_interval_raises(lr_min: float, lr_max: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        log_uniform(3, lr_min, lr_max)
    with pytest.raises(ValueError, match=match):
        feature_lrs(nn.Linear(2, 2), lr_min, lr_max)


# --- feature_lrs -------------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_layout_is_deterministic_in_module_order() -> None:
    model = mlp()
    layout = feature_lrs(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(0))
    again = feature_lrs(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(0))
    other = feature_lrs(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(1))
    w0 = model[0].weight
    assert torch.equal(layout[w0].rates, again[w0].rates)
    assert not torch.equal(layout[w0].rates, other[w0].rates)
    # modules are visited in named_modules order: the first Linear takes the first 4 draws
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(layout[w0].rates, log_uniform(4, 1e-3, 1.0, gen))
    assert torch.equal(layout[model[2].weight].rates, log_uniform(2, 1e-3, 1.0, gen))


def test_weight_and_bias_share_one_rate_tensor_on_the_param_device_and_dtype() -> None:
    model = mlp()
    layout = feature_lrs(model, 1e-3, 1.0)
    w, b = layout[model[0].weight], layout[model[0].bias]
    assert w.rates is b.rates and w.feature_set == b.feature_set
    assert w.rates.dtype == torch.float32 and w.rates.device == model[0].weight.device
    double = mlp().double()
    # float64 models get float64 rates, so float64 tests can be exact
    assert feature_lrs(double, 1e-3, 1.0)[double[0].weight].rates.dtype == torch.float64


def test_describe_and_n_features() -> None:
    model = mlp()
    layout = feature_lrs(model, 1e-3, 1.0)
    assert describe(layout) == [
        ("0.weight", 0, 4), ("0.bias", 0, 4), ("2.weight", 0, 2), ("2.bias", 0, 2)
    ]  # fmt: skip
    # weight and bias of one Linear share their features: 4 + 2, not 12
    assert n_features(layout) == 6
    w = layout[model[0].weight]
    assert w.broadcast(2).shape == (4, 1)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.decoder = nn.Linear(3, 7)
        self.decoder.weight = self.embed.weight


def test_tied_parameters_get_one_layout_from_the_first_occurrence() -> None:
    model = TiedLM()
    layout = feature_lrs(model, 1e-3, 1.0)
    assert len(layout) == 2  # the shared weight and the decoder bias
    shared = layout[model.embed.weight]
    # the Embedding comes first: one rate per embedding coordinate (dim 1)
    assert (shared.name, shared.dim, shared.rates.numel()) == ("embed.weight", 1, 3)
    assert layout[model.decoder.bias].rates.numel() == 7


class Scale(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(c))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate the global rule registry."""
    monkeypatch.setattr(features_module, "_RULES", dict(features_module._RULES))


def test_unsupported_layer_names_path_and_type_then_registering_fixes_it(rules: None) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(Scale(3)))
    # strict: no inference, an error naming the path, the type and the fix
    with pytest.raises(UnsupportedLayerError, match=r"'1\.0' \(.*Scale\).*register_feature_rule"):
        feature_lrs(model, 1e-3, 1.0, strict=True)
    register_feature_rule(Scale, lambda m: [FeatureSet(m.gain.shape[0], {"gain": 0})])
    layout = feature_lrs(model, 1e-3, 1.0, strict=True)
    assert layout[model[1][0].gain].rates.shape == (3,)
    assert layout[model[1][0].gain].rule == "Scale rule"


def test_container_owning_a_parameter_is_unsupported_when_strict() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model.temperature = nn.Parameter(torch.ones(1))
    with pytest.raises(UnsupportedLayerError, match=r"'<root>'.*\['temperature'\].*strict"):
        feature_lrs(model, 1e-3, 1.0, strict=True)
    # without strict the scalar is one inferred feature
    assert feature_lrs(model, 1e-3, 1.0)[model.temperature].rates.numel() == 1


def test_rule_lookup_walks_the_mro() -> None:
    class MyLinear(nn.Linear):
        pass

    model = MyLinear(3, 2)
    assert feature_lrs(model, 1e-3, 1.0)[model.weight].dim == 0


def test_rule_that_misses_a_parameter_or_misfits_is_an_error(rules: None) -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))

    register_feature_rule(Two, lambda m: [FeatureSet(3, {"a": 0})])
    with pytest.raises(UnsupportedLayerError, match=r"\['b'\].*does not cover"):
        feature_lrs(Two(), 1e-3, 1.0, strict=True)
    register_feature_rule(Two, lambda m: [FeatureSet(4, {"a": 0, "b": 0})])
    with pytest.raises(ValueError, match="parameter 'a' of shape \\(3,\\) to 4 features"):
        feature_lrs(Two(), 1e-3, 1.0)


def test_register_feature_rule_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_feature_rule(int, lambda m: [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rule must be callable"):
        register_feature_rule(Scale, None)  # type: ignore[arg-type]


def test_lazy_modules_must_be_materialized() -> None:
    with pytest.raises(ValueError, match="uninitialized"):
        feature_lrs(nn.LazyLinear(3), 1e-3, 1.0)


class FixedHeads(nn.Module):
    """K heads with fixed rates along dim 0 (the protocol AlraoHeads implements)."""

    def __init__(self, k: int = 3, d: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d))
        self.bias = nn.Parameter(torch.zeros(k))

    def alrao_feature_lrs(self, lr_min: float, lr_max: float) -> dict[str, tuple[int, Tensor]]:
        rates = torch.logspace(math.log10(lr_min), math.log10(lr_max), len(self.bias))
        return {"weight": (0, rates), "bias": (0, rates.clone())}


def test_alrao_feature_lrs_protocol_gives_fixed_rates() -> None:
    model = nn.Sequential(nn.Linear(4, 2), FixedHeads())
    layout = feature_lrs(model, 1e-2, 1.0, generator=torch.Generator().manual_seed(0))
    heads = model[1]
    expected = torch.tensor([1e-2, 1e-1, 1.0])
    torch.testing.assert_close(layout[heads.weight].rates, expected)
    assert layout[heads.weight].dim == 0
    # equal rate vectors are one feature set: 2 (Linear) + 3 (heads) features
    assert n_features(layout) == 5
    heads.weight.grad = torch.ones_like(heads.weight)
    before = heads.weight.detach().clone()
    AlraoSGD(model, 1e-2, 1.0, seed=0).step()
    # head k moves by exactly its fixed rate
    torch.testing.assert_close(before - heads.weight.detach(), expected[:, None].expand(3, 2))
