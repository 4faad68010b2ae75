"""AlraoSGD and AlraoAdam: torch optimizers with one learning rate per feature.

Each parameter ``p`` carries, in ``optimizer.state[p]``, a vector ``feature_lr`` of rates
``eta_f`` (one per feature, drawn log-uniformly by :func:`~alrao_tune.alrao.lr.feature_lrs`)
and the int ``feature_dim`` along which they vary. The update of element ``i`` of feature
``f(i)`` is torch's SGD / Adam update with step size ``lr * eta_f(i)``, where the group ``lr``
(default 1.0) is a global multiplier that ``torch.optim.lr_scheduler`` schedulers drive.

Departures from the paper (Blier, Wolinski & Ollivier, arXiv:1810.01322) and from the
authors' 2018 code: momentum, Nesterov, dampening and weight decay follow torch semantics
(the original code used its own momentum variant); every layer type is per feature (the
original used per-weight rates for some layers); rates are stored as per-feature vectors and
broadcast, never as parameter-shaped copies; the state round-trips through ``state_dict``
(rates come from the loaded state, not from re-sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from alrao_tune.alrao.lr import FeatureLR, broadcast_rates, check_lr_interval, feature_lrs

__all__ = ["AlraoAdam", "AlraoSGD"]


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be non-negative, but got {name}={value!r}.")


def _by_device_and_dtype(params: Sequence[Tensor]) -> list[list[int]]:
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return list(buckets.values())


def _take(xs: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    return [xs[i] for i in idx] if xs else []


def _use_foreach(flag: bool | None, params: Sequence[Tensor]) -> bool:
    if flag is None:
        return all(p.device.type == "cuda" for p in params)
    return flag


class _AlraoOptimizer(Optimizer):
    """Shared machinery: layout, per-parameter rate state, cached broadcast views."""

    def __init__(
        self,
        model: nn.Module,
        lr_min: float,
        lr_max: float,
        defaults: dict[str, Any],
        *,
        param_groups: Sequence[dict[str, Any]] | None,
        seed: int | None,
        generator: torch.Generator | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__} takes the model (an nn.Module) as first argument, "
                f"but got {type(model).__name__}; pass param_groups=[...] to select parameters."
            )
        check_lr_interval(lr_min, lr_max)
        if seed is not None and generator is not None:
            raise ValueError(f"Give seed or generator, not both, but got {seed=} and a generator.")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.lr_min, self.lr_max = float(lr_min), float(lr_max)
        self._layout: dict[nn.Parameter, FeatureLR] = feature_lrs(
            model, lr_min, lr_max, generator=generator
        )
        self._views: dict[Tensor, tuple[Tensor, Tensor]] = {}
        groups = list(model.parameters()) if param_groups is None else list(param_groups)
        super().__init__(groups, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters must belong to the model the optimizer was built on."""
        self._check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        foreign = [tuple(p.shape) for p in group["params"] if p not in self._layout]
        if foreign:
            self.param_groups.pop()
            raise ValueError(
                f"{len(foreign)} parameter(s) (shapes {foreign}) are not parameters of the model "
                f"given to {type(self).__name__}, so they have no Alrao rates; build the "
                "optimizer on a model that contains them."
            )
        for p in group["params"]:
            feature = self._layout[p]
            dtype = p.dtype if p.is_floating_point() else torch.float32
            self.state[p]["feature_lr"] = feature.rates.to(dtype=dtype)
            self.state[p]["feature_dim"] = feature.dim

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; the rates come from it (cast to each parameter's device/dtype)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                rates = self.state[p].get("feature_lr")
                expected = self._layout[p].rates.numel()
                if rates is None or rates.numel() != expected:
                    raise ValueError(
                        f"The state dict has no Alrao rates of length {expected} for "
                        f"'{self._layout[p].name}'; was it saved by {type(self).__name__} "
                        "on the same architecture?"
                    )

    def __getstate__(self) -> dict[str, Any]:
        extra = {"_layout": self._layout, "lr_min": self.lr_min, "lr_max": self.lr_max}
        return {**super().__getstate__(), **extra}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._views = {}

    def feature_rates(self) -> dict[str, Tensor]:
        """Parameter name -> its per-feature rates (without the group ``lr`` multiplier)."""
        return {
            self._layout[p].name: self.state[p]["feature_lr"]
            for group in self.param_groups
            for p in group["params"]
        }

    def _rate_view(self, p: Tensor, state: dict[str, Any]) -> Tensor:
        """``feature_lr`` broadcastable to ``p``, cached until the state's tensor changes."""
        rates = state.get("feature_lr")
        if rates is None:
            raise RuntimeError(
                f"No Alrao rates in the state of '{self._layout[p].name}'; load a state dict "
                f"saved by {type(self).__name__}."
            )
        cached = self._views.get(p)
        if cached is None or cached[0] is not rates:
            view = broadcast_rates(rates, state["feature_dim"], p.dim(), self._layout[p].index)
            cached = self._views[p] = (rates, view)
        return cached[1]

    def _collect(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """Parameters with a gradient, their gradients, rate views and states."""
        params, grads, rates, states = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"('{self._layout[p].name}'); use nn.Embedding(sparse=False)."
                )
            state = self.state[p]
            params.append(p)
            grads.append(p.grad)
            rates.append(self._rate_view(p, state))
            states.append(state)
        return params, grads, rates, states

    def _closure_loss(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class AlraoSGD(_AlraoOptimizer):
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
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov,
                    "weight_decay": weight_decay, "foreach": foreach}  # fmt: skip
        super().__init__(model, lr_min, lr_max, defaults, param_groups=param_groups,
                         seed=seed, generator=generator)  # fmt: skip

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            _check_nonnegative(name, group[name])
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
            kernel = _sgd_foreach if _use_foreach(group["foreach"], params) else _sgd_loop
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


def _sgd_foreach(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                 bufs: list[Tensor | None], group: dict[str, Any]) -> None:  # fmt: skip
    """The same update with ``torch._foreach_*`` kernels, one call per (device, dtype)."""
    wd, momentum = group["weight_decay"], group["momentum"]
    for idx in _by_device_and_dtype(params):
        ps, gs = _take(params, idx), _take(grads, idx)
        if wd != 0:
            gs = torch._foreach_add(gs, ps, alpha=wd)
        if momentum != 0:
            bs = _foreach_momentum(bufs, idx, gs, momentum, group["dampening"])
            gs = torch._foreach_add(gs, bs, alpha=momentum) if group["nesterov"] else bs
        torch._foreach_addcmul_(ps, _take(rates, idx), gs, value=-group["lr"])


def _foreach_momentum(bufs: list[Tensor | None], idx: list[int], grads: list[Tensor],
                      momentum: float, dampening: float) -> list[Tensor]:  # fmt: skip
    """Update ``bufs[i]`` for ``i`` in ``idx`` (a missing buffer starts as the gradient)."""
    bs = _take(bufs, idx)
    if all(b is not None for b in bs):
        torch._foreach_mul_(bs, momentum)
        torch._foreach_add_(bs, grads, alpha=1 - dampening)
        return bs
    for g, i in zip(grads, idx, strict=True):
        if bufs[i] is None:
            bufs[i] = torch.clone(g).detach()
        else:
            bufs[i].mul_(momentum).add_(g, alpha=1 - dampening)
    return _take(bufs, idx)


class AlraoAdam(_AlraoOptimizer):
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
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "foreach": foreach}  # fmt: skip
        super().__init__(model, lr_min, lr_max, defaults, param_groups=param_groups,
                         seed=seed, generator=generator)  # fmt: skip

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        for name in ("lr", "eps", "weight_decay"):
            _check_nonnegative(name, group[name])
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
            kernel = _adam_foreach if _use_foreach(group["foreach"], params) else _adam_loop
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


def _adam_foreach(params: list[Tensor], grads: list[Tensor], rates: list[Tensor],
                  states: list[dict[str, Any]], group: dict[str, Any]) -> None:  # fmt: skip
    """The same update with ``torch._foreach_*`` kernels, one call per (device, dtype)."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for idx in _by_device_and_dtype(params):
        ps, gs, sts = _take(params, idx), _take(grads, idx), _take(states, idx)
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
        torch._foreach_div_(denom, _take(rates, idx))
        torch._foreach_addcdiv_(ps, ms, denom, [-lr / (1 - beta1**t) for t in ts])
