"""Tests of alrao_tune.zoo: every family builds, runs and trains; specs fail clearly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alrao_tune.data import DataInfo, iterate_batches, load_dataset
from alrao_tune.zoo import (
    FAMILIES,
    ArchError,
    ZooModel,
    arch_name,
    build_model,
    count_parameters,
    family_defaults,
    validate_spec,
)

VECTOR = DataInfo("vector", (40,), 10)
IMAGE3 = DataInfo("image", (3, 32, 32), 10)
IMAGE1 = DataInfo("image", (1, 8, 8), 10)
TOKENS = DataInfo("tokens", (12,), 30, vocab_size=30)
REGRESSION = DataInfo("vector", (20,), 2, task="regression")
SUITED = {
    "mlp": [VECTOR, IMAGE1, REGRESSION], "cnn1d": [VECTOR], "cnn_gru": [VECTOR],
    "cnn2d": [IMAGE3, IMAGE1], "mobilenet": [IMAGE3, IMAGE1], "inception": [IMAGE3, IMAGE1],
    "resnet": [IMAGE3, IMAGE1], "gru": [VECTOR, TOKENS, IMAGE1], "lstm": [VECTOR, TOKENS],
    "transformer": [VECTOR, IMAGE3, IMAGE1, TOKENS],
}
# module types the Alrao optimizer can give per-feature learning rates
ALRAO_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
                nn.Embedding, nn.GRU, nn.LSTM, nn.MultiheadAttention)
# small non-default variants, one per family
VARIANTS: dict[str, dict[str, Any]] = {
    "mlp": {"widths": [16, 8], "activation": "gelu", "norm": "layer", "dropout": 0.1},
    "cnn1d": {"channels": [4, 8, 8], "kernel_size": 3, "norm": "batch",
              "global_pool": "flatten", "fc_width": 16, "activation": "tanh"},
    "cnn2d": {"channels": [4, 8], "convs_per_stage": 2, "norm": "none", "global_pool": "max"},
    "mobilenet": {"widths": [8, 16], "strides": [2, 1], "stem_channels": 4, "norm": "none"},
    "inception": {"widths": [8, 13], "stem_channels": 4, "pool": False},
    "resnet": {"widths": [4, 8], "blocks_per_stage": 2, "stem_channels": 4, "norm": "none"},
    "gru": {"hidden": 8, "layers": 2, "bidirectional": True, "dropout": 0.1},
    "lstm": {"hidden": 8, "layers": 2, "embedding_dim": 5},
    "cnn_gru": {"channels": [4, 8], "hidden": 8, "bidirectional": True, "norm": "batch"},
    "transformer": {"dim": 8, "depth": 1, "heads": 2, "mlp_ratio": 1, "patch_size": 3,
                    "pool": "mean", "dropout": 0.1},
}
CASES = [(f, info) for f, infos in SUITED.items() for info in infos]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(info: DataInfo, n: int = 4) -> torch.Tensor:
    if info.kind == "tokens":
        return torch.randint(0, int(info.vocab_size or 1), (n, *info.input_shape))
    return torch.randn(n, *info.input_shape)


def _expected_shape(info: DataInfo, n: int = 4) -> tuple[int, ...]:
    if info.kind == "tokens":  # one prediction per position
        return (n, info.input_shape[0], info.n_outputs)
    return (n, info.n_outputs)


@pytest.mark.parametrize("options", ["defaults", "variant"])
@pytest.mark.parametrize(("family", "info"), CASES, ids=[f"{f}-{i.kind}{i.input_shape}"
                                                          for f, i in CASES])
def test_family_builds_runs_and_backprops(family: str, info: DataInfo, options: str) -> None:
    if options == "variant" and info.kind == "tokens" and family != "transformer":
        spec = {"family": family, **VARIANTS[family], "bidirectional": False}
    else:
        spec = {"family": family, **(VARIANTS[family] if options == "variant" else {})}
    torch.manual_seed(0)
    model = build_model(spec, info)
    assert isinstance(model, ZooModel) and isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert model.sequence_output == (info.kind == "tokens")
    x = _inputs(info)
    features = model.preclassifier(x)
    assert features.shape[-1] == model.feature_dim
    out = model(x)
    assert out.shape == _expected_shape(info)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x[:1]).shape == _expected_shape(info, 1)  # eval mode, batch of one
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    # only layer types with an Alrao per-feature rule own parameters
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, ALRAO_LAYERS), f"{name}: {type(module).__name__}"


def test_counts_and_names() -> None:
    model = build_model({"family": "mlp", "widths": [5]}, DataInfo("vector", (3,), 2))
    assert count_parameters(model) == (3 * 5 + 5) + (5 * 2 + 2)
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 20 + 2
    assert model.name == "mlp-5"
    assert arch_name({"family": "cnn1d", "channels": [32, 64], "norm": "batch"}) == "cnn1d-32x64-bn"
    assert arch_name({"family": "cnn2d"}) == "cnn2d-32x64-bn"
    assert arch_name({"family": "gru", "hidden": 32, "layers": 2, "bidirectional": True}) == (
        "gru-32-l2-bi")
    assert arch_name({"family": "mlp", "widths": [], "dropout": 0.1}) == "mlp-linear-drop0.1"
    assert arch_name({"family": "mobilenet", "widths": [8, 16]}) == "mobilenet-8x16-bn"
    assert arch_name({"family": "mobilenet", "widths": [8, 16], "strides": [2, 2]}) == (
        "mobilenet-8x16-s2x2-bn")
    assert arch_name({"family": "inception", "pool": False, "norm": "none"}) == (
        "inception-64x128-nopool")
    assert arch_name({"family": "resnet", "name": "my-net"}) == "my-net"
    assert arch_name({"builder": "tests.helpers_zoo:tiny", "width": 3}) == "tiny-width3"
    # every variant of the test table gets a distinct name
    names = {arch_name({"family": f, **VARIANTS[f]}) for f in FAMILIES}
    assert len(names) == len(FAMILIES)


def test_validate_spec_fills_defaults() -> None:
    full = validate_spec({"family": "resnet", "widths": 8, "name": "r"})
    assert full == {"family": "resnet", "widths": (8,), "blocks_per_stage": 1,
                    "stem_channels": 16, "norm": "batch", "name": "r"}
    assert family_defaults("gru") == {"hidden": 64, "layers": 1, "bidirectional": False,
                                      "embedding_dim": 32, "dropout": 0.0}
    assert validate_spec({"family": "mobilenet"})["strides"] == (1, 2, 2)
    assert validate_spec({"family": "mlp", "norm": None})["norm"] == "none"  # YAML null


def test_user_builders() -> None:
    model = build_model({"builder": "tests.helpers_zoo:tiny", "width": 3}, VECTOR)
    assert model.feature_dim == 3 and model(_inputs(VECTOR)).shape == (4, 10)
    assert model.name == "tiny-width3"
    zoo = build_model({"builder": "tests.helpers_zoo:tiny_zoo", "name": "mine"}, IMAGE1)
    assert zoo.name == "mine" and zoo(_inputs(IMAGE1)).shape == (4, 10)


@pytest.mark.parametrize(("spec", "match"), [
    ({"family": "resnt"}, r"unknown architecture family 'resnt'; known families: mlp, .*"
                          r"Did you mean 'resnet'"),
    ({"family": "mlp", "widht": [3]}, r"unknown option 'widht' for family 'mlp'; allowed options: "
                                      r"widths, activation, norm, dropout. Did you mean 'widths'"),
    ({"family": "mlp", "widths": [0]}, r"option 'widths' must be a list of at least 0 integers"),
    ({"family": "mlp", "norm": "group"}, r"option 'norm' must be one of 'none', 'batch', 'layer',"
                                         r" but got 'group'"),
    ({"family": "cnn1d", "kernel_size": 4}, r"option 'kernel_size' must be an odd integer >= 1"),
    ({"family": "mlp", "dropout": 1.0}, r"option 'dropout' must be a number in \[0, 1\)"),
    ({"family": "gru", "bidirectional": "yes"}, r"option 'bidirectional' must be true or false"),
    ({"family": "mobilenet", "widths": [8, 8], "strides": [1]},
     r"option 'strides' needs one entry per width \(2\)"),
    ({"widths": [3]}, r"needs 'family' \(one of mlp, .*\) or 'builder'"),
    ({"family": "mlp", "builder": "a:b"}, "either 'family' or 'builder'"),
    ({"builder": "tests.no_such_module:tiny"}, r"cannot import builder module "
                                               r"'tests.no_such_module'.*ModuleNotFoundError"),
    ({"builder": "tests.helpers_zoo:nope"}, r"module 'tests.helpers_zoo' has no callable 'nope'"),
    ({"builder": "tests.helpers_zoo"}, r"builder must look like 'package.module:function'"),
    ({"builder": "tests.helpers_zoo:tiny", "depth": 2}, r"does not accept .*'depth'"),
    ({"builder": "tests.helpers_zoo:bad_return"}, r"must return a ZooModel or a tuple"),
    ({"family": "transformer", "dim": 10, "heads": 4},
     r"option 'dim' \(10\) must be divisible by 'heads' \(4\)"),
])
def test_bad_specs(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ArchError, match=match):
        build_model(spec, VECTOR)


def test_unsuited_inputs() -> None:
    with pytest.raises(ArchError, match=r"family 'cnn2d' takes image inputs, but the dataset has "
                                        r"'vector' inputs of shape \(40,\); families for 'vector' "
                                        r"inputs: mlp, cnn1d, gru, lstm, cnn_gru, transformer"):
        build_model({"family": "cnn2d"}, VECTOR)
    with pytest.raises(ArchError, match=r"'patch_size' \(9\) must be at most the image side"):
        build_model({"family": "transformer", "patch_size": 9}, IMAGE1)
    with pytest.raises(ArchError, match="'bidirectional' must be false for token inputs"):
        build_model({"family": "lstm", "bidirectional": True}, TOKENS)
    with pytest.raises(ArchError, match="must be a mapping"):
        build_model(["mlp"], VECTOR)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- training sanity
def _train(model: ZooModel, x: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, float]:
    """30 Adam steps on mini-batches; returns the full-train loss before and after."""
    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if task == "regression":
            return F.mse_loss(out, target)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    before = full_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen, steps = torch.Generator().manual_seed(0), 0
    while steps < 30:
        model.train()
        for xb, yb in iterate_batches(x, y, 32, shuffle=True, generator=gen):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            steps += 1
            if steps == 30:
                break
    return before, full_loss()


@pytest.mark.parametrize(("dataset", "options", "spec"), [
    ("mnist1d", {"n_train": 200, "n_val": 20, "n_test": 20},
     {"family": "cnn1d", "channels": [8, 16], "norm": "batch", "global_pool": "flatten"}),
    ("digits", {}, {"family": "cnn2d", "channels": [8, 16]}),
    ("text", {"seq_len": 16}, {"family": "gru", "hidden": 32, "embedding_dim": 16}),
    ("synthetic", {"n_train": 256}, {"family": "mlp", "widths": [32]}),
    ("digits", {}, {"family": "transformer", "dim": 16, "depth": 1, "heads": 2,
                    "patch_size": 2}),
])
def test_adam_lowers_training_loss(dataset: str, options: dict[str, Any], spec: dict[str, Any],
                                   tmp_path: Path) -> None:
    if dataset == "text":
        (tmp_path / "t.txt").write_text("hello world, hello alrao. " * 120)
        options = {**options, "path": tmp_path / "t.txt"}
    data = load_dataset(dataset, cache_dir=tmp_path, **options)
    torch.manual_seed(0)
    model = build_model(spec, data)
    before, after = _train(model, data.x_train, data.y_train, data.task)
    # observed ratios 0.05-0.5; 0.8 leaves room for platform differences
    assert after < 0.8 * before, (before, after)
