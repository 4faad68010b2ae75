"""Tests of AlraoSGD / AlraoAdam (alrao_tune/alrao/optim.py): the optimizer contract."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrao_tune.alrao.lr import feature_lrs
from alrao_tune.alrao.optim import AlraoAdam, AlraoSGD

Factory = Callable[..., torch.optim.Optimizer]


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


class Mixed(nn.Module):
    """Parameters of every layout kind: slices, index maps (RNN gates, grouped ConvT, LN)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.lstm = nn.LSTM(4, 3, bidirectional=True)
        self.up = nn.ConvTranspose1d(6, 4, 3, groups=2)
        self.norm = nn.LayerNorm([4, 5])
        self.head = nn.Linear(20, 2)


def random_grads(model: nn.Module, gen: torch.Generator) -> None:
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def params_of(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-12) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=atol, rtol=0)


def train_steps(
    model: nn.Module, opt: torch.optim.Optimizer | list[torch.optim.Optimizer], n: int
) -> None:
    """``n`` steps of a regression loss on fixed random data (stepping every optimizer)."""
    opts = opt if isinstance(opt, list) else [opt]
    gen = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    x = torch.randn(16, 4, generator=gen, dtype=dtype)
    y = torch.randn(16, 3, generator=gen, dtype=dtype)
    for _ in range(n):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        for o in opts:
            o.step()


# --- equivalence with torch when lr_min == lr_max ----------------------------------------------

SGD_CONFIGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.9, "dampening": 0.3},
    {"weight_decay": 1e-2},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
]
ADAM_CONFIGS = [
    {},
    {"weight_decay": 1e-2},
    {"amsgrad": True},
    {"betas": (0.5, 0.9), "eps": 1e-6, "amsgrad": True, "weight_decay": 1e-3},
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_point_interval_reproduces_torch_sgd(config: dict[str, Any], foreach: bool) -> None:
    ref, model = mlp(), mlp()
    train_steps(ref, torch.optim.SGD(ref.parameters(), lr=0.1, **config), 20)
    train_steps(model, AlraoSGD(model, 0.1, 0.1, foreach=foreach, **config), 20)
    # every feature has rate 0.1: 20 steps of Alrao are 20 steps of SGD(lr=0.1)
    assert_same_params(model, ref)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=str)
def test_point_interval_reproduces_torch_adam(config: dict[str, Any], foreach: bool) -> None:
    ref, model = mlp(), mlp()
    train_steps(ref, torch.optim.Adam(ref.parameters(), lr=0.1, **config), 20)
    train_steps(model, AlraoAdam(model, 0.1, 0.1, foreach=foreach, **config), 20)
    assert_same_params(model, ref)


# --- foreach == loop ---------------------------------------------------------------------------

OPTIMIZERS: dict[str, Factory] = {
    "sgd": lambda m, **kw: AlraoSGD(m, 1e-3, 1.0, momentum=0.9, nesterov=True,
                                    weight_decay=1e-3, **kw),
    "sgd_dampening": lambda m, **kw: AlraoSGD(m, 1e-3, 1.0, momentum=0.5, dampening=0.5, **kw),
    "adam": lambda m, **kw: AlraoAdam(m, 1e-4, 1e-1, weight_decay=1e-3, **kw),
    "adam_amsgrad": lambda m, **kw: AlraoAdam(m, 1e-4, 1e-1, amsgrad=True, **kw),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_foreach_path_equals_loop_path(name: str) -> None:
    loop_model = Mixed().double()
    fast_model = copy.deepcopy(loop_model)
    loop = OPTIMIZERS[name](loop_model, foreach=False, seed=0)
    fast = OPTIMIZERS[name](fast_model, foreach=True, seed=0)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(50):
        random_grads(loop_model, gen_a)
        random_grads(fast_model, gen_b)
        loop.step()
        fast.step()
    assert_same_params(fast_model, loop_model)


# --- state_dict --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_keeps_two_optimizers_in_lockstep(name: str) -> None:
    model = Mixed().double()
    opt = OPTIMIZERS[name](model, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        random_grads(model, gen)
        opt.step()
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[name](twin, seed=123)  # different rates until the load
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer))
    for _ in range(5):
        random_grads(model, gen)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            q.grad = p.grad.clone()
        opt.step()
        twin_opt.step()
    # the rates (and moments) came from the state dict, not from the second seed
    assert_same_params(twin, model, atol=0)


def test_loaded_rates_follow_the_parameter_dtype() -> None:
    model = mlp(dtype=torch.float32)
    opt = AlraoSGD(model, 1e-3, 1.0, seed=0)
    double = copy.deepcopy(model).double()
    double_opt = AlraoSGD(double, 1e-3, 1.0, seed=1)
    double_opt.load_state_dict(opt.state_dict())
    rates = double_opt.state[double[0].weight]["feature_lr"]
    assert rates.dtype == torch.float64
    torch.testing.assert_close(rates, opt.state[model[0].weight]["feature_lr"].double())


def test_loading_a_state_dict_of_another_architecture_is_an_error() -> None:
    opt = AlraoSGD(mlp(), 1e-3, 1.0)
    other = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="no Alrao rates of length 5 for '0.weight'"):
        AlraoSGD(other, 1e-3, 1.0).load_state_dict(opt.state_dict())


# --- schedulers and the group lr ---------------------------------------------------------------


def step_delta(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Tensor, Tensor]:
    """Take one step with random gradients; return (delta, grad) of the first weight."""
    random_grads(model, torch.Generator().manual_seed(7))
    w = model[0].weight
    before = w.detach().clone()
    opt.step()
    return w.detach() - before, w.grad


def rate_view(opt: torch.optim.Optimizer, p: Tensor) -> Tensor:
    return opt.state[p]["feature_lr"].view(-1, 1)


def test_step_lr_scales_every_rate() -> None:
    model = mlp()
    opt = AlraoSGD(model, 1e-3, 1.0, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    delta, grad = step_delta(model, opt)
    # the group lr multiplies the feature rates
    torch.testing.assert_close(delta, -0.5 * rate_view(opt, model[0].weight) * grad)


def test_one_cycle_lr_scales_every_rate() -> None:
    model = mlp()
    opt = AlraoSGD(model, 1e-3, 1.0, seed=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=10,
                                                cycle_momentum=False)  # fmt: skip
    for _ in range(3):
        opt.step()
        sched.step()
    x = opt.param_groups[0]["lr"]
    assert 0.1 < x < 2.0
    delta, grad = step_delta(model, opt)
    torch.testing.assert_close(delta, -x * rate_view(opt, model[0].weight) * grad)


@pytest.mark.parametrize(
    ("make_opt", "key"),
    [
        (lambda m: AlraoSGD(m, 1e-3, 1.0, momentum=0.9), "momentum"),
        (lambda m: AlraoAdam(m, 1e-3, 1.0), "betas"),
    ],
)
def test_momentum_cycling_schedulers_drive_the_standard_keys(make_opt: Factory, key: str) -> None:
    model = mlp()
    opt = make_opt(model)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=20)
    start = copy.deepcopy(opt.param_groups[0][key])
    train_steps(model, opt, 1)
    one_cycle.step()
    # OneCycleLR found and moved the momentum / beta1 of the group
    assert opt.param_groups[0][key] != start
    if key == "momentum":  # CyclicLR requires a momentum key too
        cyclic = torch.optim.lr_scheduler.CyclicLR(opt, 0.1, 1.0, step_size_up=2)
        train_steps(model, opt, 1)
        cyclic.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_zero_group_lr_leaves_parameters_unchanged(name: str) -> None:
    model = Mixed().double()
    opt = OPTIMIZERS[name](model, lr=0.0)
    before = params_of(model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        random_grads(model, gen)
        opt.step()
    # lr = 0 is exact: not even rounding moves a parameter
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("foreach", [False, True])
def test_parameters_without_grad_are_skipped(name: str, foreach: bool) -> None:
    model = mlp()
    opt = OPTIMIZERS[name](model, foreach=foreach)
    random_grads(model, torch.Generator().manual_seed(0))
    frozen = model[2].weight
    frozen.grad = None
    before = frozen.detach().clone()
    opt.step()
    assert torch.equal(frozen, before)
    # no moment / momentum state was created for it: only its rates
    assert set(opt.state[frozen]) == {"feature_lr", "feature_dim"}
    assert set(opt.state[model[0].weight]) > {"feature_lr", "feature_dim"}


def test_state_without_momentum_is_one_value_per_feature() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 10))  # fmt: skip
    opt = AlraoSGD(model, 1e-3, 1.0)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    state_numel = sum(
        v.numel() for s in opt.state.values() for v in s.values() if isinstance(v, Tensor)
    )
    # conv 16 + 16, bn 16 + 16, linear 10 + 10 rates; the weights number 2,600+
    assert state_numel == 16 * 4 + 10 * 2
    assert state_numel < sum(p.numel() for p in model.parameters()) / 30


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda m: AlraoSGD(m, 0.0, 1.0), ValueError, "lr_min must be positive"),
        (lambda m: AlraoSGD(m, 1.0, 0.1), ValueError, "lr_min must be ≤ lr_max"),
        (lambda m: AlraoSGD(m, 1e-3, float("inf")), ValueError, "lr_max must be finite"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, lr=-1.0), ValueError, "lr must be non-negative"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, momentum=-0.1), ValueError, "momentum=-0.1"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, weight_decay=-1), ValueError, "weight_decay=-1"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, dampening=float("nan")), ValueError, "dampening"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, nesterov=True), ValueError, "requires momentum > 0"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, momentum=0.9, nesterov=True, dampening=0.1),
         ValueError, "dampening == 0"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, seed=0, generator=torch.Generator()), ValueError,
         "seed or generator"),
        (lambda m: AlraoSGD(list(m.parameters()), 1e-3, 1.0), TypeError, "an nn.Module"),
        (lambda m: AlraoSGD(m, 1e-3, 1.0, param_groups=[{"params": [nn.Parameter(
            torch.ones(2))]}]), ValueError, "not parameters of the model"),
        (lambda m: AlraoAdam(m, 1e-3, 1.0, betas=(0.9, 1.0)), ValueError, "betas must be"),
        (lambda m: AlraoAdam(m, 1e-3, 1.0, eps=-1e-8), ValueError, "eps must be non-negative"),
        (lambda m: AlraoAdam(m, 1e-3, 1.0, param_groups=[
            {"params": m[0].parameters(), "weight_decay": -1.0}]), ValueError, "weight_decay"),
    ],
)  # fmt: skip
def test_bad_arguments_raise(make: Factory, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make(mlp())


def test_param_groups_equal_separate_optimizers() -> None:
    joint_model, split_model = mlp(), mlp()
    joint = AlraoSGD(joint_model, 1e-3, 1.0, seed=0, param_groups=[
        {"params": joint_model[0].parameters(), "weight_decay": 0.1},
        {"params": joint_model[2].parameters(), "momentum": 0.9},
    ])  # fmt: skip
    first = AlraoSGD(split_model, 1e-3, 1.0, seed=0, weight_decay=0.1,
                     param_groups=[{"params": split_model[0].parameters()}])  # fmt: skip
    second = AlraoSGD(split_model, 1e-3, 1.0, seed=0, momentum=0.9,
                      param_groups=[{"params": split_model[2].parameters()}])  # fmt: skip
    train_steps(joint_model, joint, 10)
    train_steps(split_model, [first, second], 10)
    # same seed -> same rates: groups behave exactly like separate optimizers
    assert_same_params(joint_model, split_model, atol=0)


def test_same_seed_same_rates_and_feature_rates_by_name() -> None:
    a, b = AlraoSGD(mlp(), 1e-3, 1.0, seed=5), AlraoAdam(mlp(), 1e-3, 1.0, seed=5)
    rates_a, rates_b = a.feature_rates(), b.feature_rates()
    assert list(rates_a) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(torch.equal(rates_a[k], rates_b[k]) for k in rates_a)
    # the optimizer's rates are the layout's
    model = mlp()
    layout = feature_lrs(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(layout[model[0].weight].rates, rates_a["0.weight"])


def test_closure_loss_is_returned_and_sparse_grads_are_rejected() -> None:
    model = mlp()
    opt = AlraoAdam(model, 1e-3, 1.0)
    x = torch.randn(3, 4, dtype=torch.float64)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), Tensor)
    emb = nn.Embedding(5, 2, sparse=True)
    sparse_opt = AlraoSGD(emb, 1e-3, 1.0)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients.*'weight'"):
        sparse_opt.step()


# --- training ----------------------------------------------------------------------------------


def test_mlp_on_a_random_teacher_learns() -> None:
    torch.manual_seed(0)
    x = torch.randn(500, 10)
    teacher = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    student = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                            nn.Linear(64, 3))  # fmt: skip
    opt = AlraoSGD(student, 1e-4, 1.0, seed=0)
    initial = F.cross_entropy(student(x), y).item()
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(student(x), y).backward()
        opt.step()
    final = F.cross_entropy(student(x), y).item()
    # random per-feature rates in (1e-4, 1) still train the network
    assert final < 0.5 * initial
