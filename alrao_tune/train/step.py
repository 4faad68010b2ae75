"""One optimisation step of the training loop, eager or compiled (``training.compile``).

A step is ``zero_grad``, the loss of one batch, ``backward`` and ``optimizer.step()``. With
``compile`` the loss function goes through ``torch.compile`` (the forward pass and, through
AOTAutograd, its backward) and so does the optimizer's ``step``: the Alrao model, heads, loss
and switch trace as one graph (no graph break), and ``AlraoSGD`` / ``AlraoAdam`` trace their
update with the hyperparameters in tensor arithmetic, so learning-rate schedules do not
recompile. The plain ``torch.optim`` optimizers get a tensor learning rate for the same
reason (PyTorch's recipe for compiled optimizers with schedulers). The step is compiled once,
on its first call; evaluation stays eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from alrao_tune.alrao.optim_base import AlraoOptimizer

__all__ = ["LossFn", "make_step"]

LossFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(x, y) -> (loss to backpropagate, detached loss to report)``."""


def make_step(loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
              compile: bool = False) -> Callable[[Tensor, Tensor], Tensor]:  # fmt: skip
    """The training step ``step(x, y) -> reported loss``.

    Args:
        loss_fn: the batch loss, see :data:`LossFn`.
        optimizer: steps after the backward pass. Build any LR scheduler on it *before*
            calling this: the compiled update calls ``optimizer.step`` as the scheduler
            wrapped it.
        compile: run ``loss_fn`` (``fullgraph=True``) and ``optimizer.step`` through
            ``torch.compile``.
    """
    forward, update = loss_fn, optimizer.step
    if compile:
        # torch's optimizers specialise on a float lr (a recompile per scheduler step);
        # Alrao's trace it as a tensor (see alrao_tune.alrao.sgd)
        if not isinstance(optimizer, AlraoOptimizer):
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32)
        forward = torch.compile(loss_fn, fullgraph=True)
        update = torch.compile(optimizer.step)

    def step(x: Tensor, y: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss, report = forward(x, y)
        loss.backward()
        update()
        return report

    return step

