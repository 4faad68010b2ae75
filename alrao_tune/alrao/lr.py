"""Per-feature learning rates for Alrao: sampling, and which parameters form one feature.

Alrao (Blier, Wolinski & Ollivier, "Learning with Random Learning Rates", ECML-PKDD 2019,
arXiv:1810.01322) gives every *feature* f of a network its own learning rate, drawn once::

    eta_f = exp(u_f),   u_f ~ Uniform(log lr_min, log lr_max)

A feature is the set of incoming weights of one output unit. The *layout* of a model says,
for every parameter, which feature each element belongs to; it is computed here by per-layer
*rules* (see :func:`register_feature_rule`) and consumed by ``AlraoSGD`` / ``AlraoAdam``.

Rules for torch's layers live in :mod:`~alrao_tune.alrao.features`; parameters no rule covers
get the channel-dimension fallback of :mod:`~alrao_tune.alrao.infer` (``strict=True`` makes
them an error instead). :func:`describe_features` shows which rule decided each parameter.

A module with an ``alrao_feature_lrs(lr_min, lr_max) -> {name: (dim, rates)}`` method gets
those fixed rates instead (the Alrao output heads use this).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from alrao_tune.alrao.features import (
    FeatureRule,
    FeatureSet,
    UnsupportedLayerError,
    find_rule,
    register_feature_rule,
    unsupported,
)
from alrao_tune.alrao.infer import infer_feature_sets

__all__ = [
    "FeatureLR",
    "FeatureRule",
    "FeatureSet",
    "UnsupportedLayerError",
    "broadcast_rates",
    "check_lr_interval",
    "FeatureRow",
    "describe",
    "describe_features",
    "feature_lrs",
    "format_features",
    "log_uniform",
    "n_features",
    "register_feature_rule",
]


@dataclass(frozen=True, eq=False)
class FeatureLR:
    """The learning rates of one parameter.

    Attributes:
        name: Qualified parameter name (first occurrence for tied parameters).
        dim: Dim along which the features vary.
        rates: 1-D rates, one per feature, on the parameter's device; float32 (float64 for
            float64 parameters). Length ``param.shape[dim]`` unless ``index`` is set.
        index: ``None``, or an integer tensor broadcastable to the parameter giving each
            element's feature (then ``len(rates)`` is the number of features it indexes).
        feature_set: Id of the feature set; parameters with equal ids share their rates.
        rule: What decided the layout: ``"<Type> rule"`` (registered), ``"alrao_feature_lrs"``
            (fixed rates) or ``"inferred: ..."`` (the fallback of :mod:`.infer`).
    """

    name: str
    dim: int
    rates: Tensor
    index: Tensor | None = None
    feature_set: int = 0
    rule: str = ""

    def broadcast(self, ndim: int) -> Tensor:
        """Rates as a tensor broadcastable to the ``ndim``-dimensional parameter."""
        return broadcast_rates(self.rates, self.dim, ndim, self.index)


def broadcast_rates(rates: Tensor, dim: int, ndim: int, index: Tensor | None = None) -> Tensor:
    """Return ``rates`` broadcastable to a parameter: ``rates.view(1, .., -1 at dim, .., 1)``.

    With an ``index`` map, return ``rates[index]`` (a small gather, shaped like ``index``).
    """
    if index is not None:
        return rates[index.to(rates.device)]
    shape = [1] * ndim
    shape[dim] = -1
    return rates.view(shape)


def check_lr_interval(lr_min: float, lr_max: float) -> None:
    """Raise ``ValueError`` unless ``0 < lr_min <= lr_max < inf``."""
    if not (math.isfinite(lr_min) and lr_min > 0):
        raise ValueError(f"lr_min must be positive and finite, but got {lr_min=}.")
    if not math.isfinite(lr_max):
        raise ValueError(f"lr_max must be finite, but got {lr_max=}.")
    if lr_min > lr_max:
        raise ValueError(f"lr_min must be ≤ lr_max, but got {lr_min=} > {lr_max=}.")


def log_uniform(
    n: int,
    lr_min: float,
    lr_max: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` rates ``exp(u)``, ``u ~ U(log lr_min, log lr_max)``, computed in float64.

    ``lr_min == lr_max`` returns exactly ``lr_min`` and consumes no random numbers.

    Args:
        n: Number of rates.
        lr_min: Lower end of the interval, > 0.
        lr_max: Upper end, >= lr_min.
        generator: CPU generator; ``None`` uses torch's global RNG.
        dtype: Dtype of the result.
    """
    check_lr_interval(lr_min, lr_max)
    if lr_min == lr_max:
        return torch.full((n,), lr_min, dtype=dtype)
    lo, hi = math.log(lr_min), math.log(lr_max)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(lo + (hi - lo) * u).clamp_(lr_min, lr_max).to(dtype)


# --- layout ------------------------------------------------------------------------------------

_Sets = list[tuple[FeatureSet, Tensor | None, dict[str, str]]]


def _protocol_sets(module: nn.Module, lr_min: float, lr_max: float) -> _Sets:
    """Sets of a module with ``alrao_feature_lrs``: parameters with equal rates share one."""
    fixed: list[tuple[dict[str, int], Tensor]] = []
    for name, (dim, rates) in module.alrao_feature_lrs(lr_min, lr_max).items():
        rates = rates.detach().to("cpu", torch.float64)
        same = [d for d, r in fixed if r.shape == rates.shape and torch.equal(r, rates)]
        if same:
            same[0][name] = dim
        else:
            fixed.append(({name: dim}, rates))
    return [(FeatureSet(len(r), d), r, dict.fromkeys(d, "alrao_feature_lrs")) for d, r in fixed]


def _module_sets(
    path: str, module: nn.Module, owned: Mapping[str, Tensor], done: Mapping[Tensor, object],
    lr_min: float, lr_max: float, strict: bool,
) -> _Sets:  # fmt: skip
    """Feature sets of one module with fixed rates (protocol) or ``None`` (to be sampled), and
    the rule label of each parameter. Parameters no rule covers are inferred unless ``strict``.
    """
    if callable(getattr(module, "alrao_feature_lrs", None)):
        sets = _protocol_sets(module, lr_min, lr_max)
    else:
        found = find_rule(type(module))
        label = f"{found[0].__name__} rule" if found else ""
        sets = [(s, None, dict.fromkeys(s.dims, label)) for s in found[1](module)] if found else []
    covered = {n for s, _, _ in sets for n in s.dims}
    missing = [n for n, p in owned.items() if n not in covered and p not in done]
    if missing and strict:
        why = "its feature rule does not cover them" if sets else "Alrao has no feature rule"
        raise unsupported(path, module, missing, f"{why} for its type (strict=True)")
    if missing:
        inferred, labels = infer_feature_sets(path, module, missing)
        sets += [(s, None, labels) for s in inferred]
    return sets


def _check_member(path: str, name: str, p: Tensor, fset: FeatureSet, dim: int) -> None:
    index = fset.index.get(name)
    if index is None:
        ok = -p.dim() <= dim < p.dim() and p.shape[dim] == fset.n
    else:
        ok = torch.broadcast_shapes(index.shape, p.shape) == p.shape and int(index.max()) < fset.n
    if not ok:
        raise ValueError(
            f"Feature rule for '{path or '<root>'}' maps parameter '{name}' of shape "
            f"{tuple(p.shape)} to {fset.n} features along dim {dim}, which does not fit."
        )


def feature_lrs(
    model: nn.Module,
    lr_min: float,
    lr_max: float,
    *,
    generator: torch.Generator | None = None,
    strict: bool = False,
) -> dict[nn.Parameter, FeatureLR]:
    """Draw the Alrao rates of every parameter of ``model``.

    Modules are visited in ``named_modules()`` order and each feature set draws its ``n`` rates
    in turn, so the result is a deterministic function of ``generator``'s state. Parameters
    sharing a feature set (a Linear row and its bias entry) share the same rate values; a
    parameter reachable twice (tied weights) gets one layout, from its first occurrence.

    Args:
        model: The network.
        lr_min: Lower end of the interval, > 0.
        lr_max: Upper end, >= lr_min.
        generator: CPU generator for the draws; ``None`` uses torch's global RNG.
        strict: Raise on parameters no rule covers instead of inferring their channel dim
            (:mod:`alrao_tune.alrao.infer`).

    Returns:
        Parameter -> its :class:`FeatureLR`.

    Raises:
        UnsupportedLayerError: ``strict`` and a module owns parameters no rule covers, or the
            fallback cannot decide a parameter's channel dim.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, but got {type(model).__name__}.")
    check_lr_interval(lr_min, lr_max)
    layout: dict[nn.Parameter, FeatureLR] = {}
    n_sets = 0
    for path, module in model.named_modules():
        owned = {n: p for n, p in module._parameters.items() if p is not None}
        protocol = hasattr(module, "alrao_feature_lrs")
        if not protocol and all(p in layout for p in owned.values()):
            continue  # no parameters, or all of them tied to earlier ones
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in owned.values()):
            raise ValueError(
                f"Module '{path}' has uninitialized (lazy) parameters; run one "
                "forward pass before building the Alrao optimizer."
            )
        for fset, fixed, labels in _module_sets(path, module, owned, layout, lr_min, lr_max,
                                                strict):  # fmt: skip
            rates = fixed
            if rates is None:
                rates = log_uniform(fset.n, lr_min, lr_max, generator, dtype=torch.float64)
            cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}
            for name, dim in fset.dims.items():
                p = module.get_parameter(name)
                if p in layout:
                    continue
                _check_member(path, name, p, fset, dim)
                dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
                key = (p.device, dtype)
                if key not in cast:  # one tensor per device/dtype, shared by the set's members
                    cast[key] = rates.to(device=p.device, dtype=dtype)
                qualified = f"{path}.{name}" if path else name
                layout[p] = FeatureLR(qualified, dim % max(p.dim(), 1), cast[key],
                                      fset.index.get(name), n_sets, labels[name])  # fmt: skip
            n_sets += 1
    return layout


def describe(layout: Mapping[nn.Parameter, FeatureLR]) -> list[tuple[str, int, int]]:
    """``(parameter name, dim, number of rates)`` for each parameter, for logging."""
    return [(f.name, f.dim, f.rates.numel()) for f in layout.values()]


def n_features(layout: Mapping[nn.Parameter, FeatureLR]) -> int:
    """Number of distinct features (parameters sharing a feature set count once)."""
    sizes = {f.feature_set: f.rates.numel() for f in layout.values()}
    return sum(sizes.values())


class FeatureRow(NamedTuple):
    """One row of :func:`describe_features`: how one parameter is split into features."""

    module: str
    type: str
    parameter: str
    shape: tuple[int, ...]
    rule: str
    dim: int
    n_features: int


def describe_features(model: nn.Module, *, strict: bool = False) -> list[FeatureRow]:
    """The feature layout of ``model`` as a table: one row per parameter (tied ones once).

    Each row names the module path and type, the parameter, the rule that decided its layout
    (``"Linear rule"``, ``"alrao_feature_lrs"``, ``"inferred: vector (dim 2)"``, ...), the dim
    along which its features vary and their number. Draws no random numbers. Print it with
    :func:`format_features`.

    Raises:
        UnsupportedLayerError: as :func:`feature_lrs` (``strict=True``: on any inference).
    """
    rows = []
    for p, f in feature_lrs(model, 1.0, 1.0, strict=strict).items():
        path, _, name = f.name.rpartition(".")
        module = model.get_submodule(path)
        rows.append(FeatureRow(path, type(module).__name__, name, tuple(p.shape), f.rule, f.dim,
                               f.rates.numel()))  # fmt: skip
    return rows


def format_features(rows: list[FeatureRow]) -> str:
    """``describe_features`` rows as an aligned text table."""
    header = FeatureRow._fields
    cells = [header] + [tuple(str(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
