"""Tests of the fused heads loss (alrao_tune/alrao/loss.py) and of bf16 autocast.

The fused autograd function must give the gradients of the readable reference (plain autograd
on detached copies) to float64 precision; under bf16 autocast the switch and the heads'
log-softmax stay float32, and 50 steps track float32 training.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from alrao_tune.alrao import AlraoModel, AlraoSGD
from alrao_tune.alrao.loss import fused_heads_loss, reference_loss

F64 = torch.float64
K, C, D, N = 4, 3, 5, 12


def inputs(task: str, seed: int = 0) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, D, generator=gen, dtype=F64)
    weight = torch.randn(K, C, D, generator=gen, dtype=F64)
    bias = torch.randn(K, C, generator=gen, dtype=F64)
    target = (torch.randint(0, C, (N,), generator=gen) if task == "classification"
              else torch.randn(N, C, generator=gen, dtype=F64))  # fmt: skip
    log_post = torch.randn(K, generator=gen, dtype=F64).log_softmax(0)
    return feats, weight, bias, target, log_post


def grads_of(loss_fn, feats: Tensor, weight: Tensor, bias: Tensor, *rest: object) -> list[Tensor]:
    leaves = [t.clone().requires_grad_() for t in (feats, weight, bias)]
    loss = loss_fn(*leaves, *rest)
    loss = loss.loss if hasattr(loss, "loss") else loss
    return [loss, *torch.autograd.grad(loss * 1.7, leaves)]  # a non-unit incoming gradient


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fused_loss_and_gradients_equal_the_autograd_reference(task: str) -> None:
    args = (*inputs(task), task == "classification")
    fused = grads_of(fused_heads_loss, *args)
    reference = grads_of(reference_loss, *args)
    for name, a, b in zip(("loss", "features", "weight", "bias"), fused, reference, strict=True):
        # value and every gradient agree to float64 rounding
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_a_non_finite_head_gets_no_gradient_and_no_weight() -> None:
    feats, weight, bias, target, log_post = inputs("classification")
    weight[1, 0, 0] = float("nan")
    res = fused_heads_loss(feats, weight.requires_grad_(), bias.requires_grad_(), target,
                           log_post, True)  # fmt: skip
    res.loss.backward()
    # the bad head is out of the average (log weight -inf) and gets a zero gradient
    assert res.log_post[1] == -float("inf") and torch.isnan(res.head_nll[1])
    assert not weight.grad[1].any() and not bias.grad[1].any()
    # the others are finite and match the reference computed without the bad head
    keep = [0, 2, 3]
    sub = (feats, weight.detach()[keep], bias.detach()[keep], target, log_post[keep], True)
    torch.testing.assert_close(res.loss, grads_of(reference_loss, *sub)[0])


def mlp_model(seed: int = 0) -> AlraoModel:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    return AlraoModel(body, 64, 4, n_heads=5)


def teacher_data(n: int = 256) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=gen)
    return x, (x @ torch.randn(20, 4, generator=gen)).argmax(-1)


def autocast_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", autocast_devices())
def test_bf16_autocast_keeps_switch_and_log_softmax_in_float32(device: str) -> None:
    model = mlp_model().to(device)
    x, y = (t.to(device) for t in teacher_data(32))
    with torch.autocast(device, dtype=torch.bfloat16):
        feats = model.features(x)
        result = model.training_loss(x, y)
        heads_out = model.heads(feats)
    # the body ran in bf16; the heads' log-probabilities, the losses and the switch did not
    assert feats.dtype == torch.bfloat16
    assert heads_out.dtype == result.loss.dtype == result.head_losses.dtype == torch.float32
    assert model.switch.logw.dtype == torch.float32
    torch.testing.assert_close(heads_out.exp().sum(-1), torch.ones(32, 5, device=device))


@pytest.mark.parametrize("device", autocast_devices())
def test_fifty_bf16_steps_are_finite_and_track_float32(device: str) -> None:
    x, y = (t.to(device) for t in teacher_data())
    full = mlp_model().to(device)
    half = copy.deepcopy(full)
    opts = [AlraoSGD(m, 1e-3, 0.3, seed=0) for m in (full, half)]
    curves: list[list[Tensor]] = [[], []]
    for step in range(50):
        batch = slice(step * 32 % 256, step * 32 % 256 + 32)
        for i, (model, opt) in enumerate(zip((full, half), opts, strict=True)):
            opt.zero_grad()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=i == 1):
                result = model.training_loss(x[batch], y[batch], with_output=False)
            result.loss.backward()
            opt.step()
            curves[i].append(result.model_loss.detach())
    full_curve, half_curve = torch.stack(curves[0]), torch.stack(curves[1])
    assert torch.isfinite(half_curve).all()
    assert all(torch.isfinite(p).all() for p in half.parameters())
    # Tolerance: bf16 keeps 8 significant bits (unit roundoff u = 2**-8 ~ 0.4%); the body's
    # matmul inputs are rounded to it, which perturbs the logits by about u relative, while
    # the log-softmax, the losses and the switch stay float32. So the loss curve may drift by
    # up to u; measured 2e-4 on CPU. A bf16 log-softmax or switch would add u per step.
    assert ((half_curve - full_curve).abs() / full_curve).max() < 2**-8
    torch.testing.assert_close(half.posterior, full.posterior, atol=1e-3, rtol=0)
    # and training works: the averaged model's loss went down
    assert half_curve[-5:].mean() < 0.95 * half_curve[:5].mean()
