"""AlraoAdam: torch's Adam with one step size per feature (see :mod:`alrao_tune.alrao.optim`)."""

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

__all__ = ["AlraoAdam"]


class AlraoAdam(AlraoOptimizer):
    r"""Adam with one step size per feature (Alrao), ``torch.optim.Adam`` semantics otherwise.

    For each element of feature ``f`` with rate ``eta_f``, at step ``t`` of its parameter::

        g  = grad + weight_decay * p                   (L2 penalty, as torch's Adam)
        m  = beta1 * m + (1 - beta1) * g
        v  = beta2 * v + (1 - beta2) * g^2             (v_hat = max over time if amsgrad)
        p <- p - lr * eta_f / (1 - beta1^t) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)

    Args:
        model: The network; its layout (which parameters form a feature) decides the rates.
        lr_min: Smallest rate, > 0.
        lr_max: Largest rate, >= lr_min.
        lr: Group multiplier of all rates, driven by LR schedulers (default 1.0).
        betas: ``(beta1, beta2)`` in [0, 1) (standard ``betas`` key, cyclable by OneCycleLR).
        eps: Added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        amsgrad: Use the running maximum of ``v``.
        param_groups: Optional torch-style groups of the model's parameters.
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
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        param_groups: Sequence[dict[str, Any]] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        foreach: bool | None = None,
        strict: bool = False,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "foreach": foreach}  # fmt: skip
        super().__init__(model, lr_min, lr_max, defaults, param_groups=param_groups,
                         seed=seed, generator=generator, strict=strict)  # fmt: skip

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        for name in ("lr", "eps", "weight_decay"):
            check_nonnegative(name, group[name])
        betas = group["betas"]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), but got {betas=}.")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update; ``closure`` re-evaluates the model and returns the loss."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads, rates, states = self._collect(group)
            if not params:
                continue
            for p, state in zip(params, states, strict=True):
                if "step" not in state:  # as torch: a float step counter on the CPU
                    state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"] and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
            if torch.compiler.is_compiling():
                kernel = _adam_traced
            elif use_foreach(group["foreach"], params):
                kernel = _adam_foreach
            else:
                kernel = _adam_loop
            kernel(params, grads, rates, states, group)
        return loss


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _adam_loop(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
               states: list[dict[str, Any]], group: dict[str, Any]) -> None:  # fmt: skip
    """Reference Adam update, one parameter at a time."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for p, g, rate, state in zip(params, grads, rates, states, strict=True):
        state["step"] += 1
        if wd != 0:
            g = g.add(p, alpha=wd)
        state["exp_avg"].lerp_(g, 1 - beta1)
        second = state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if group["amsgrad"]:
            second = torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
        t = state["step"].item()
        denom = (second.sqrt() / (1 - beta2**t) ** 0.5).add_(eps).div_(rate)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


def _adam_traced(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                 states: list[dict[str, Any]], group: dict[str, Any]) -> None:  # fmt: skip
    """The loop update as ``torch.compile`` traces it: the step counter stays a tensor (no
    ``.item()``, a graph break) and the hyperparameters enter only tensor arithmetic, so a
    scheduler changing ``lr`` or ``betas`` does not recompile every step."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for p, g, rate, state in zip(params, grads, rates, states, strict=True):
        step = state["step"]
        step.add_(1)
        if wd != 0:
            g = g + p * wd
        m = state["exp_avg"].mul_(beta1).add_(g * (1 - beta1))
        second = state["exp_avg_sq"].mul_(beta2).add_(g * g * (1 - beta2))
        if group["amsgrad"]:
            second = torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
        denom = (second.sqrt() / (1 - _pow(beta2, step)).sqrt()).add_(eps).div_(rate)
        p.sub_(m / denom * (lr / (1 - _pow(beta1, step))))


def _pow(base: float, exponent: Tensor) -> Tensor:
    """``base ** exponent`` with ``base`` entering as a tensor: ``float ** tensor`` makes dynamo
    specialise on the float (a recompile whenever a scheduler cycles ``betas``)."""
    return (torch.ones_like(exponent) * base).pow(exponent)


def _adam_foreach(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                  states: list[dict[str, Any]], group: dict[str, Any]) -> None:  # fmt: skip
    """The same update with ``torch._foreach_*`` kernels, one call per (device, dtype)."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for idx in by_device_and_dtype(params):
        ps, gs, sts = take(params, idx), take(grads, idx), take(states, idx)
        ms, vs = [s["exp_avg"] for s in sts], [s["exp_avg_sq"] for s in sts]
        torch._foreach_add_([s["step"] for s in sts], 1.0)
        if wd != 0:
            gs = torch._foreach_add(gs, ps, alpha=wd)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
        if group["amsgrad"]:
            torch._foreach_maximum_([s["max_exp_avg_sq"] for s in sts], vs)
            vs = [s["max_exp_avg_sq"] for s in sts]
        ts = [s["step"].item() for s in sts]
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in ts])
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(denom, take(rates, idx))
        torch._foreach_addcdiv_(ps, ms, denom, [-lr / (1 - beta1**t) for t in ts])
