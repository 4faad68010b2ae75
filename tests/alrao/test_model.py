"""Tests of AlraoModel: averaging, the one-backward training loss, from_model, NaN safety."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from alrao_tune.alrao.model import AlraoModel

F64 = torch.float64


def _model(task: str = "classification", n_heads: int = 4, n_out: int = 3) -> AlraoModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(5, 8), nn.Tanh()).to(F64)
    return AlraoModel(body, 8, n_out, n_heads=n_heads, task=task).to(F64)


def _data(n: int = 16, task: str = "classification", n_out: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=F64)
    if task == "classification":
        return x, torch.randint(0, n_out, (n,), generator=gen)
    return x, torch.randn(n, n_out, generator=gen, dtype=F64)


def _averaged_nll(model: AlraoModel, x: Tensor, y: Tensor) -> Tensor:
    """Mean NLL of the switch-averaged model, written independently of training_loss."""
    head_out = model.heads(model.preclassifier(x))
    ll = model.log_posterior.to(F64) - model.heads.nll(head_out, y)
    return -torch.logsumexp(ll, dim=-1).mean()


def test_output_is_a_log_distribution() -> None:
    model = _model()
    x, _ = _data()
    out = model(x)
    assert out.shape == (16, 3)
    # exp of the averaged log-probabilities sums to 1 over classes
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(16, dtype=F64))


def test_single_head_equals_linear_with_log_softmax() -> None:
    model = _model(n_heads=1)
    x, y = _data()
    linear = nn.Linear(8, 3, dtype=F64)
    with torch.no_grad():
        linear.weight.copy_(model.heads.weight[0])
        linear.bias.copy_(model.heads.bias[0])
    expected = linear(model.preclassifier(x)).log_softmax(-1)
    torch.testing.assert_close(model(x), expected)
    # with one head the training loss is twice the plain loss (body part + head part)
    result = model.training_loss(x, y)
    torch.testing.assert_close(result.model_loss, F.nll_loss(expected, y))
    torch.testing.assert_close(result.loss, 2 * F.nll_loss(expected, y))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_one_backward_gives_each_part_its_own_gradient(task: str) -> None:
    model = _model(task)
    x, y = _data(task=task)
    with torch.no_grad():  # make the switch posterior non-uniform first
        model.switch.update(torch.tensor([0.3, 1.2, 0.8, 2.0]))
    ref = copy.deepcopy(model)
    model.training_loss(x, y).loss.backward()

    # (1) pre-classifier: gradient of the averaged model's NLL (heads held fixed)
    _averaged_nll(ref, x, y).backward()
    pairs = zip(model.preclassifier.parameters(), ref.preclassifier.parameters(), strict=True)
    for p, p_ref in pairs:
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-12, rtol=1e-10)

    # (2) head k: gradient of its own mean NLL on fixed features
    feats = ref.preclassifier(x).detach()
    for k in range(model.n_heads):
        w = ref.heads.weight[k].detach().clone().requires_grad_()
        b = ref.heads.bias[k].detach().clone().requires_grad_()
        out = feats @ w.T + b
        if task == "classification":
            loss = F.cross_entropy(out, y)
        else:
            loss = 0.5 * ((out - y) ** 2).sum(-1).mean()
        loss.backward()
        torch.testing.assert_close(model.heads.weight.grad[k], w.grad, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(model.heads.bias.grad[k], b.grad, atol=1e-12, rtol=1e-10)


def test_training_loss_values_and_single_switch_update() -> None:
    model = _model()
    x, y = _data()
    ref = copy.deepcopy(model)
    result = model.training_loss(x, y)
    # per-head batch-mean NLLs of the pre-update heads
    expected_heads = ref.heads.nll(ref.heads(ref.preclassifier(x)), y).mean(0)
    torch.testing.assert_close(result.head_losses, expected_heads)
    # the averaged model's loss and prediction use the posterior from before the batch
    torch.testing.assert_close(result.model_loss, F.nll_loss(ref(x), y))
    torch.testing.assert_close(result.output, ref(x))
    torch.testing.assert_close(result.loss, result.model_loss + expected_heads.sum())
    assert not result.model_loss.requires_grad and not result.head_losses.requires_grad
    # the switch advanced exactly once, with those losses
    ref.switch.update(expected_heads)
    assert int(model.switch.t) == int(ref.switch.t) == 2
    torch.testing.assert_close(model.switch.logw, ref.switch.logw, atol=0, rtol=0)


def test_sequence_features_with_per_step_targets() -> None:
    torch.manual_seed(0)
    model = AlraoModel(nn.Linear(5, 8), 8, 3, n_heads=3)
    x, y = torch.randn(2, 7, 5), torch.randint(0, 3, (2, 7))
    ref = copy.deepcopy(model)
    result = model.training_loss(x, y)
    assert result.output.shape == (2, 7, 3)
    assert model(x).shape == (2, 7, 3)
    # the loss is the mean over all B * T positions
    expected = F.nll_loss(ref(x).reshape(14, 3), y.reshape(14))
    torch.testing.assert_close(result.model_loss, expected)
    result.loss.backward()


def test_regression_task() -> None:
    model = _model("regression", n_out=2)
    x, y = _data(task="regression", n_out=2)
    ref = copy.deepcopy(model)
    result = model.training_loss(x, y)
    # output: posterior-weighted mean of the heads' means
    means = ref.heads(ref.preclassifier(x))
    expected = (ref.posterior[:, None] * means).sum(1)
    torch.testing.assert_close(result.output, expected)
    torch.testing.assert_close(ref(x), expected)
    # loss: NLL of the mixture of unit-variance Gaussians
    torch.testing.assert_close(result.model_loss, _averaged_nll(ref, x, y))
    result.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.body(x)))


def test_from_model_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    model = AlraoModel.from_model(net, n_heads=3)
    x = torch.randn(4, 5)
    # the copy minus its classifier gives the original's penultimate features
    torch.testing.assert_close(model.preclassifier(x), net[:2](x))
    assert (model.heads.in_features, model.heads.out_features) == (8, 3)
    assert model.n_heads == 3
    # the original model is untouched
    assert isinstance(net[2], nn.Linear)
    assert model.preclassifier[0].weight is not net[0].weight


def test_from_model_named_fc_and_dotted_paths() -> None:
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(4, 5)
    features = torch.relu(net.body(x))
    for classifier in (None, "fc"):
        model = AlraoModel.from_model(net, n_heads=2, classifier=classifier)
        torch.testing.assert_close(model.preclassifier(x), features)
    nested = nn.Sequential(nn.Linear(5, 6), nn.Sequential(nn.Tanh(), nn.Linear(6, 4), nn.ReLU()))
    model = AlraoModel.from_model(nested, classifier="1.1")
    assert isinstance(model.preclassifier[1][1], nn.Identity)
    assert model.heads.in_features == 6 and model.heads.out_features == 4


def test_from_model_errors() -> None:
    with pytest.raises(ValueError, match="needs a final nn.Linear"):
        AlraoModel.from_model(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="must be an nn.Linear, but is ReLU"):
        AlraoModel.from_model(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), classifier="1")
    with pytest.raises(ValueError, match="is not a submodule"):
        AlraoModel.from_model(_Net(), classifier="head")


def test_nan_head_does_not_poison_the_model() -> None:
    model = _model(n_heads=4)
    x, y = _data()
    with torch.no_grad():
        model.heads.weight[2, 0, 0] = math.nan
    for step in range(1, 6):
        model.zero_grad()
        result = model.training_loss(x, y)
        result.loss.backward()
        # the averaged model, its loss and the scalar to backward stay finite
        assert torch.isfinite(result.output).all()
        assert torch.isfinite(result.model_loss) and torch.isfinite(result.loss)
        assert torch.isnan(result.head_losses[2])
        # the pre-classifier and the healthy heads get finite gradients
        assert all(torch.isfinite(p.grad).all() for p in model.preclassifier.parameters())
        healthy = [0, 1, 3]
        assert torch.isfinite(model.heads.weight.grad[healthy]).all()
        # the NaN head keeps at most the switching pool's share, pi_t / K
        assert model.posterior[2].item() <= 1.0 / ((step + 1) * 4) + 1e-12
    assert torch.isfinite(model(x)).all()
    torch.testing.assert_close(model(x).exp().sum(-1), torch.ones(16, dtype=F64))


def test_state_dict_round_trip_restores_the_switch() -> None:
    model = _model()
    x, y = _data()
    for _ in range(3):
        model.training_loss(x, y)
    clone = _model()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.switch.logw, model.switch.logw)
    assert int(clone.switch.t) == 4
    # both continue identically
    model.training_loss(x, y)
    clone.training_loss(x, y)
    assert torch.equal(clone.switch.logw, model.switch.logw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_heads": 0}, "n_heads must be an integer >= 1"),
        ({"task": "ranking"}, "task must be one of"),
        ({"theta": 1.0}, "theta must lie strictly between 0 and 1"),
        ({"theta": 0.0}, "theta must lie strictly between 0 and 1"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlraoModel(nn.Linear(3, 4), 4, 2, **kwargs)  # type: ignore[arg-type]


def _blobs(n: int = 512) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 2, generator=gen) + 2.0 * (2 * y[:, None] - 1).float()
    return x, y


def _train(model: AlraoModel, opt: torch.optim.Optimizer, steps: int = 50) -> tuple[float, float]:
    x, y = _blobs()
    before = F.nll_loss(model(x), y).item()
    for step in range(steps):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        opt.zero_grad()
        model.training_loss(x[batch], y[batch]).loss.backward()
        opt.step()
    return before, F.nll_loss(model(x), y).item()


def _mlp_model() -> AlraoModel:
    torch.manual_seed(0)
    return AlraoModel(nn.Sequential(nn.Linear(2, 16), nn.ReLU()), 16, 2, n_heads=5)


def test_training_smoke_with_plain_sgd() -> None:
    model = _mlp_model()
    before, after = _train(model, torch.optim.SGD(model.parameters(), lr=0.05))
    # the averaged model learns the two blobs
    assert after < 0.5 * before


@pytest.mark.skipif(
    importlib.util.find_spec("alrao_tune.alrao.optim") is None, reason="optim.py not written yet"
)
def test_training_smoke_with_alrao_sgd() -> None:
    from alrao_tune.alrao.optim import AlraoSGD

    model = _mlp_model()
    before, after = _train(model, AlraoSGD(model, 1e-3, 1.0, seed=0))
    assert after < 0.5 * before
    # the switch has moved away from uniform
    assert model.posterior.max() > 1.5 / model.n_heads
