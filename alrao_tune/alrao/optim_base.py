"""Shared machinery of AlraoSGD and AlraoAdam: the layout, per-parameter rate state, helpers.

Each parameter ``p`` carries, in ``optimizer.state[p]``, a vector ``feature_lr`` of rates
``eta_f`` (one per feature, drawn log-uniformly by :func:`~alrao_tune.alrao.lr.feature_lrs`)
and the int ``feature_dim`` along which they vary; a step reads them as a cached view
broadcastable to ``p`` (no parameter-shaped copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from alrao_tune.alrao.lr import FeatureLR, broadcast_rates, check_lr_interval, feature_lrs

__all__ = ["AlraoOptimizer", "by_device_and_dtype", "check_nonnegative", "take", "use_foreach"]


def check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be non-negative, but got {name}={value!r}.")


def by_device_and_dtype(params: Sequence[Tensor]) -> list[list[int]]:
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return list(buckets.values())


def take(xs: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    return [xs[i] for i in idx] if xs else []


def use_foreach(flag: bool | None, params: Sequence[Tensor]) -> bool:
    if flag is None:
        return all(p.device.type == "cuda" for p in params)
    return flag


class AlraoOptimizer(Optimizer):
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
        strict: bool = False,
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
            model, lr_min, lr_max, generator=generator, strict=strict
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
