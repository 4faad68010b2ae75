"""Checks shared by the Alrao tests of modern models (Hugging Face, torch transformers, zoo)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from alrao_tune.alrao import AlraoModel, AlraoSGD, feature_lrs

LR_MIN, LR_MAX = 1e-3, 1.0


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one intra-op thread: these models are tiny, and two OpenMP
    threads on a busy two-core machine spin against each other (measured 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_one_exact_step(model: AlraoModel, x: Any, y: Tensor, seed: int = 0) -> AlraoSGD:
    """One AlraoSGD step (momentum 0) moves every parameter by exactly ``-rate_f * grad``.

    The rates come from an independent draw of the layout with the same seed; each parameter
    has one rate per feature (``rates.numel()`` features along its channel dim), all in
    ``[LR_MIN, LR_MAX]``. Returns the optimizer, ready for more steps.
    """
    opt = AlraoSGD(model, LR_MIN, LR_MAX, seed=seed)
    layout = feature_lrs(model, LR_MIN, LR_MAX, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model.training_loss(x, y).loss.backward()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    missing = [n for n, p in params.items() if p.grad is None]
    # every parameter takes part in the step
    assert not missing, f"no gradient for {missing}"
    grads = {n: p.grad.clone() for n, p in params.items()}
    opt.step()
    for name, p in params.items():
        feature = layout[p]
        rates = feature.rates
        # one rate per feature along the channel dim, inside the interval
        if feature.index is None:
            assert rates.numel() == (p.shape[feature.dim] if p.dim() else 1), name
        assert rates.min() >= LR_MIN * (1 - 1e-6) and rates.max() <= LR_MAX * (1 + 1e-6), name
        expected = -feature.broadcast(p.dim()).to(p.dtype) * grads[name]
        torch.testing.assert_close(p.detach() - before[name], expected, atol=1e-12, rtol=0,
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip
    return opt


def averaged_nll(model: AlraoModel, x: Any, y: Tensor) -> float:
    """The switch-averaged model's NLL on ``(x, y)`` in eval mode."""
    model.eval()
    with torch.no_grad():
        loss = F.nll_loss(model(x), y).item()
    model.train()
    return loss


def train(model: AlraoModel, opt: torch.optim.Optimizer, x: Any, y: Tensor, steps: int) -> None:
    """``steps`` training steps on one fixed batch."""
    for _ in range(steps):
        opt.zero_grad()
        model.training_loss(x, y, with_output=False).loss.backward()
        opt.step()
