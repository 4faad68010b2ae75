"""AlraoSGD: torch's SGD with one learning rate per feature (see :mod:`alrao_tune.alrao.optim`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from alrao_tune.alrao.optim_base import (
    AlraoOptimizer,
    by_device_and_dtype,
    check_nonnegative,
    take,
    use_foreach,
)

__all__ = ["AlraoSGD"]


class AlraoSGD(AlraoOptimizer):
    r"""SGD with one learning rate per feature (Alrao), torch SGD semantics otherwise.

    For each element of a parameter ``p`` in feature ``f`` with rate ``eta_f``::

        g   = grad + weight_decay * p
        buf = g                                        (first step)
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        d   = g + momentum * buf if nesterov else buf  (d = g when momentum == 0)
        p  <- p - lr * eta_f * d

    ``p.grad`` is never modified. Without momentum the state is O(#features).

    Args:
        model: The network; its layout (which parameters form a feature) decides the rates.
        lr_min: Smallest rate, > 0.
        lr_max: Largest rate, >= lr_min.
        lr: Group multiplier of all rates, driven by LR schedulers (default 1.0).
        momentum: Momentum factor (standard ``momentum`` key, so OneCycleLR/CyclicLR can cycle it).
        dampening: Dampening for momentum.
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum.
        param_groups: Optional torch-style groups of the model's parameters with per-group
            options; default: one group with all ``model.parameters()``.
        seed: Seed of the rate draws (exclusive with ``generator``).
        generator: CPU generator for the rate draws.
        foreach: Use ``torch._foreach_*`` kernels; ``None``: when all parameters are on CUDA.
        strict: Raise on layers no feature rule covers instead of inferring their channel
            dim (:mod:`alrao_tune.alrao.infer`).
    """

    def __init__(
        self,
        model: nn.Module,
        lr_min: float,
        lr_max: float,
        *,
        lr: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        param_groups: Sequence[dict[str, Any]] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        foreach: bool | None = None,
        strict: bool = False,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                    "weight_decay": weight_decay, "foreach": foreach}  # fmt: skip
        super().__init__(model, lr_min, lr_max, defaults, param_groups=param_groups,
                         seed=seed, generator=generator, strict=strict)  # fmt: skip

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            check_nonnegative(name, group[name])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening == 0, but got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads, rates, states = self._collect(group)
            if not params:
                continue
            bufs = [s.get("momentum_buffer") for s in states] if group["momentum"] else []
            if torch.compiler.is_compiling():
                kernel = _sgd_traced
            elif use_foreach(group["foreach"], params):
                kernel = _sgd_foreach
            else:
                kernel = _sgd_loop
            kernel(params, grads, rates, bufs, group)
            if bufs:  # the kernel replaced missing buffers
                for state, buf in zip(states, bufs, strict=True):
                    state["momentum_buffer"] = buf
        return loss


def _sgd_loop(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
              bufs: list[Tensor | None], group: dict[str, Any]) -> None:  # fmt: skip
    """Reference SGD update, one parameter at a time; replaces ``None`` entries of ``bufs``."""
    lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
    for i, (p, g, rate) in enumerate(zip(params, grads, rates, strict=True)):
        if wd != 0:
            g = g.add(p, alpha=wd)
        if momentum != 0:
            if bufs[i] is None:
                bufs[i] = torch.clone(g).detach()
            else:
                bufs[i].mul_(momentum).add_(g, alpha=1 - group["dampening"])
            g = g.add(bufs[i], alpha=momentum) if group["nesterov"] else bufs[i]
        p.addcmul_(rate, g, value=-lr)


def _sgd_traced(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                bufs: list[Tensor | None], group: dict[str, Any]) -> None:  # fmt: skip
    """The loop update as ``torch.compile`` traces it: the hyperparameters enter only tensor
    arithmetic (no ``alpha=`` / ``value=`` scalars, which dynamo must specialise on), so an LR
    or momentum scheduler changing them every step does not recompile every step."""
    lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
    for i, (p, g, rate) in enumerate(zip(params, grads, rates, strict=True)):
        if wd != 0:
            g = g + p * wd
        if momentum != 0:
            if bufs[i] is None:
                bufs[i] = torch.clone(g).detach()
            else:
                bufs[i].mul_(momentum).add_(g * (1 - group["dampening"]))
            g = g + bufs[i] * momentum if group["nesterov"] else bufs[i]
        p.sub_(g * rate * lr)


def _sgd_foreach(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                 bufs: list[Tensor | None], group: dict[str, Any]) -> None:  # fmt: skip
    """The same update with ``torch._foreach_*`` kernels, one call per (device, dtype)."""
    wd, momentum = group["weight_decay"], group["momentum"]
    for idx in by_device_and_dtype(params):
        ps, gs = take(params, idx), take(grads, idx)
        if wd != 0:
            gs = torch._foreach_add(gs, ps, alpha=wd)
        if momentum != 0:
            bs = _foreach_momentum(bufs, idx, gs, momentum, group["dampening"])
            gs = torch._foreach_add(gs, bs, alpha=momentum) if group["nesterov"] else bs
        torch._foreach_addcmul_(ps, take(rates, idx), gs, value=-group["lr"])


def _foreach_momentum(bufs: list[Tensor | None], idx: list[int], grads: list[Tensor],
                      momentum: float, dampening: float) -> list[Tensor]:  # fmt: skip
    """Update ``bufs[i]`` for ``i`` in ``idx`` (a missing buffer starts as the gradient)."""
    bs = take(bufs, idx)
    if all(b is not None for b in bs):
        torch._foreach_mul_(bs, momentum)
        torch._foreach_add_(bs, grads, alpha=1 - dampening)
        return bs
    for g, i in zip(grads, idx, strict=True):
        if bufs[i] is None:
            bufs[i] = torch.clone(g).detach()
        else:
            bufs[i].mul_(momentum).add_(g, alpha=1 - dampening)
    return take(bufs, idx)
