"""The learning-rate range test (Smith 2017, "Cyclical learning rates"; fast.ai's lr_find).

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``num_iter``
mini-batches while the (exponentially smoothed, bias-corrected) training loss is recorded;
the test stops early once the loss exceeds ``diverge_factor`` times its minimum. Two
suggestions are read off the loss-vs-log(lr) curve:

- ``lr_steepest``: where the smoothed loss falls fastest (most negative slope);
- ``lr_min_div10``: one tenth of the rate at the minimum loss (Smith's "a bit before the
  minimum", fast.ai's ``lr_min``).

``suggested`` is the geometric mean of the two. The test trains a fresh copy of the
architecture with plain SGD (or Adam, when ``config.method == "adam"``) and leaves
nothing behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alrao_tune.data import DatasetSplits, iterate_batches, load_dataset
from alrao_tune.train.config import TrainConfig
from alrao_tune.train.methods import task_loss
from alrao_tune.train.trainer import resolve_device
from alrao_tune.zoo import build_model


@dataclass(frozen=True)
class LRFindResult:
    """The curve and the suggestions of one range test."""

    lrs: list[float]
    losses: list[float]
    lr_steepest: float
    lr_min_loss: float
    lr_min_div10: float
    suggested: float
    stopped_early: bool


def lr_find(
    config: TrainConfig,
    data: DatasetSplits | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 200,
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
) -> LRFindResult:
    """Runs the range test for ``config``'s architecture, dataset, batch size and seed."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, but got {start_lr=}, {end_lr=}.")
    if num_iter < 5:
        raise ValueError(f"num_iter must be ≥ 5, but got {num_iter=}.")
    data = data if data is not None else load_dataset(
        config.dataset, seed=config.data_seed, **dict(config.dataset_options))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, data).to(device)
    if config.method == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=start_lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=config.momentum)
    gamma = (end_lr / start_lr) ** (1.0 / (num_iter - 1))
    x, y = data.x_train.to(device), data.y_train.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    lrs, losses, avg, best, stopped = [], [], 0.0, math.inf, False
    model.train()
    while len(lrs) < num_iter and not stopped:
        for xb, yb in iterate_batches(x, y, config.batch_size, shuffle=True, generator=gen):
            lr = start_lr * gamma ** len(lrs)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = task_loss(model(xb), yb, data.task)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            avg = smooth * avg + (1 - smooth) * value if math.isfinite(value) else math.inf
            smoothed = avg / (1 - smooth ** (len(lrs) + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * best:
                stopped = True
            if stopped or len(lrs) >= num_iter:
                break
    return _suggest(lrs, losses, stopped)


def _suggest(lrs: list[float], losses: list[float], stopped: bool) -> LRFindResult:
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if len(finite) < 3:
        raise ValueError("the range test produced fewer than 3 finite losses; lower start_lr.")
    i_min = min(range(len(finite)), key=lambda i: finite[i][1])
    slopes = [
        (finite[i + 1][1] - finite[i - 1][1])
        / (math.log(finite[i + 1][0]) - math.log(finite[i - 1][0]))
        for i in range(1, max(2, i_min))
        if i + 1 < len(finite)
    ]
    i_steep = 1 + min(range(len(slopes)), key=slopes.__getitem__) if slopes else i_min
    lr_steep, lr_min = finite[i_steep][0], finite[i_min][0]
    return LRFindResult(
        lrs=lrs, losses=losses, lr_steepest=lr_steep, lr_min_loss=lr_min,
        lr_min_div10=lr_min / 10, suggested=math.sqrt(lr_steep * lr_min / 10),
        stopped_early=stopped,
    )
