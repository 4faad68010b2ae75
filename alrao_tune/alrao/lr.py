"""Per-feature learning rates for Alrao: sampling, and which parameters form one feature.

Alrao (Blier, Wolinski & Ollivier, "Learning with Random Learning Rates", ECML-PKDD 2019,
arXiv:1810.01322) gives every *feature* f of a network its own learning rate, drawn once::

    eta_f = exp(u_f),   u_f ~ Uniform(log lr_min, log lr_max)

A feature is the set of incoming weights of one output unit. The *layout* of a model says,
for every parameter, which feature each element belongs to; it is computed here by per-layer
*rules* (see :func:`register_feature_rule`) and consumed by ``AlraoSGD`` / ``AlraoAdam``.

Built-in rules (rule lookup walks the MRO, so subclasses of these types match):

* ``Linear``, ``Bilinear``, ``Conv{1,2,3}d`` (incl. grouped / depthwise): dim 0 of ``weight``;
  ``bias`` shares the rates.
* ``ConvTranspose{1,2,3}d``: the output channel. Weight is ``[in, out/groups, *k]``; with
  ``groups == 1`` that is dim 1; with ``groups > 1`` output channel ``g * out/groups + j``
  owns ``weight[g*in/groups:(g+1)*in/groups, j]``, expressed by an index map of shape
  ``[in, out/groups, 1, ...]`` (O(in * out / groups) integers, no parameter-shaped copy).
* ``BatchNorm``, ``InstanceNorm``, ``GroupNorm``, ``PReLU``: one rate per channel (weight and
  bias share). ``LayerNorm``, ``RMSNorm``: one rate per normalized element.
* ``Embedding``, ``EmbeddingBag``: one rate per embedding coordinate (dim 1).
* ``RNN``, ``GRU``, ``LSTM`` and their cells: one rate per hidden unit, shared by all gates of
  the unit and by ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (row ``r`` belongs to
  unit ``r % hidden_size``); an independent set per layer and direction. ``weight_hr`` (LSTM
  with ``proj_size > 0``) gets its own per-row rates.
* ``MultiheadAttention``: one rate per row of the (packed or separate) q/k/v projections,
  shared with ``in_proj_bias`` and ``bias_k`` / ``bias_v``; ``out_proj`` is a ``Linear``.

A module with an ``alrao_feature_lrs(lr_min, lr_max) -> {name: (dim, rates)}`` method gets
those fixed rates instead (the Alrao output heads use this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureLR",
    "FeatureRule",
    "FeatureSet",
    "UnsupportedLayerError",
    "broadcast_rates",
    "check_lr_interval",
    "describe",
    "feature_lrs",
    "log_uniform",
    "n_features",
    "register_feature_rule",
]


class UnsupportedLayerError(ValueError):
    """A module owns parameters but no rule says which of them form one feature."""


@dataclass(frozen=True)
class FeatureSet:
    """``n`` features whose rates are shared by some parameters of one module (a rule's output).

    Attributes:
        n: Number of features, i.e. of rates to draw.
        dims: Direct parameter name -> the dim along which its features vary: element ``i``
            along that dim belongs to feature ``i``.
        index: Optional parameter name -> integer tensor broadcastable to the parameter that
            gives the feature of each element, for layouts that are not one feature per slice
            (RNN gate rows, grouped transposed convolutions, multi-dim LayerNorm).
    """

    n: int
    dims: Mapping[str, int]
    index: Mapping[str, Tensor] = field(default_factory=dict)


FeatureRule = Callable[[nn.Module], Sequence[FeatureSet]]
"""A rule maps a module to the feature sets covering all of its direct parameters."""


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
    """

    name: str
    dim: int
    rates: Tensor
    index: Tensor | None = None
    feature_set: int = 0

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


# --- rules -------------------------------------------------------------------------------------

_RULES: dict[type[nn.Module], FeatureRule] = {}


def register_feature_rule(module_type: type[nn.Module], rule: FeatureRule) -> None:
    """Register (or replace) the feature rule of ``module_type`` and its subclasses.

    Example, for a layer scaling each of its ``c`` channels by ``self.gain`` (shape ``[c]``)::

        register_feature_rule(Scale, lambda m: [FeatureSet(m.gain.shape[0], {"gain": 0})])
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, but got {module_type!r}.")
    if not callable(rule):
        raise TypeError(f"rule must be callable, but got {rule!r}.")
    _RULES[module_type] = rule


def _find_rule(module_type: type[nn.Module]) -> FeatureRule | None:
    for cls in module_type.__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _present(module: nn.Module, dims: Mapping[str, int]) -> dict[str, int]:
    return {k: d for k, d in dims.items() if module._parameters.get(k) is not None}


def _rows_rule(module: nn.Module) -> list[FeatureSet]:
    weight = module._parameters.get("weight")
    if weight is None:
        return []
    return [FeatureSet(weight.shape[0], _present(module, {"weight": 0, "bias": 0}))]


def _elementwise_rule(module: nn.Module) -> list[FeatureSet]:
    weight = module._parameters.get("weight")
    if weight is None:
        return []
    dims = _present(module, {"weight": 0, "bias": 0})
    if weight.dim() == 1:
        return [FeatureSet(weight.numel(), dims)]
    index = torch.arange(weight.numel(), device=weight.device).view(weight.shape)
    return [FeatureSet(weight.numel(), dims, dict.fromkeys(dims, index))]


def _embedding_rule(module: nn.Module) -> list[FeatureSet]:
    return [FeatureSet(module.weight.shape[1], {"weight": 1})]


def _conv_transpose_rule(module: nn.Module) -> list[FeatureSet]:
    weight, groups = module.weight, module.groups
    per_group = weight.shape[1]
    dims = _present(module, {"weight": 1, "bias": 0})
    if groups == 1:
        return [FeatureSet(per_group, dims)]
    group_of_row = torch.arange(groups, device=weight.device).repeat_interleave(
        weight.shape[0] // groups
    )
    index = group_of_row[:, None] * per_group + torch.arange(per_group, device=weight.device)
    index = index.view(*index.shape, *[1] * (weight.dim() - 2))
    return [FeatureSet(groups * per_group, dims, {"weight": index})]


def _gated_units(module: nn.Module, hidden: int, suffix: str = "") -> FeatureSet:
    names = [f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    params = {n: module._parameters[n] for n in names if module._parameters.get(n) is not None}
    index = {}
    for name, p in params.items():
        if p.shape[0] != hidden:  # rows are [gate_0 units, gate_1 units, ...]
            unit = torch.arange(p.shape[0], device=p.device) % hidden
            index[name] = unit.view(-1, *[1] * (p.dim() - 1))
    return FeatureSet(hidden, dict.fromkeys(params, 0), index)


def _rnn_rule(module: nn.Module) -> list[FeatureSet]:
    sets = []
    for layer in range(module.num_layers):
        for direction in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            suffix = f"_l{layer}{direction}"
            sets.append(_gated_units(module, module.hidden_size, suffix))
            if module._parameters.get(f"weight_hr{suffix}") is not None:
                sets.append(FeatureSet(module.proj_size, {f"weight_hr{suffix}": 0}))
    return sets


def _rnn_cell_rule(module: nn.Module) -> list[FeatureSet]:
    return [_gated_units(module, module.hidden_size)]


# parameter -> dim of its features; parameter -> block (q=0, k=1, v=2) of the 3e features
_ATTENTION_DIMS = {
    "in_proj_weight": 0,
    "in_proj_bias": 0,
    "q_proj_weight": 0,
    "k_proj_weight": 0,
    "v_proj_weight": 0,
    "bias_k": 2,
    "bias_v": 2,
}
_ATTENTION_BLOCKS = {
    "q_proj_weight": 0,
    "k_proj_weight": 1,
    "v_proj_weight": 2,
    "bias_k": 1,
    "bias_v": 2,
}


def _attention_rule(module: nn.Module) -> list[FeatureSet]:
    e = module.embed_dim
    dims = _present(module, _ATTENTION_DIMS)
    index = {}
    for name, block in _ATTENTION_BLOCKS.items():
        offset = block * e
        if name in dims:
            p = module._parameters[name]
            shape = [1] * p.dim()
            shape[dims[name]] = e
            index[name] = torch.arange(offset, offset + e, device=p.device).view(shape)
    return [FeatureSet(3 * e, dims, index)]


_BUILTIN: list[tuple[tuple[type[nn.Module], ...], FeatureRule]] = [
    ((nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.PReLU), _rows_rule),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm), _rows_rule),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm), _rows_rule),
    ((nn.LayerNorm, nn.RMSNorm), _elementwise_rule),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _conv_transpose_rule),
    ((nn.Embedding, nn.EmbeddingBag), _embedding_rule),
    ((nn.RNN, nn.GRU, nn.LSTM), _rnn_rule),
    ((nn.RNNCell, nn.GRUCell, nn.LSTMCell), _rnn_cell_rule),
    ((nn.MultiheadAttention,), _attention_rule),
]
for _types, _rule in _BUILTIN:
    for _type in _types:
        register_feature_rule(_type, _rule)


# --- layout ------------------------------------------------------------------------------------


def _unsupported(path: str, module: nn.Module, names: Sequence[str], why: str) -> Exception:
    kind = type(module).__name__
    return UnsupportedLayerError(
        f"Module '{path or '<root>'}' ({type(module).__qualname__}) owns parameters "
        f"{list(names)}, but {why}. Register a rule with "
        f"`alrao_tune.alrao.lr.register_feature_rule({kind}, rule)` (a rule returns "
        "FeatureSet(n, {param_name: dim}) entries), give the module an "
        "`alrao_feature_lrs(lr_min, lr_max)` method, or move the parameters into supported "
        "layers (e.g. an nn.Linear)."
    )


def _module_sets(
    path: str, module: nn.Module, owned: Mapping[str, Tensor], lr_min: float, lr_max: float
) -> list[tuple[FeatureSet, Tensor | None]]:
    """Feature sets of one module, with fixed rates (protocol) or ``None`` (to be sampled)."""
    protocol = getattr(module, "alrao_feature_lrs", None)
    if callable(protocol):  # fixed rates; parameters with equal rates share one feature set
        fixed: list[tuple[dict[str, int], Tensor]] = []
        for name, (dim, rates) in protocol(lr_min, lr_max).items():
            rates = rates.detach().to("cpu", torch.float64)
            same = [d for d, r in fixed if r.shape == rates.shape and torch.equal(r, rates)]
            if same:
                same[0][name] = dim
            else:
                fixed.append(({name: dim}, rates))
        sets = [(FeatureSet(len(r), dims), r) for dims, r in fixed]
    else:
        rule = _find_rule(type(module))
        if rule is None:
            raise _unsupported(path, module, list(owned), "Alrao has no feature rule for its type")
        sets = [(s, None) for s in rule(module)]
    missing = set(owned) - {n for s, _ in sets for n in s.dims}
    if missing:
        raise _unsupported(path, module, sorted(missing), "its feature rule does not cover them")
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

    Returns:
        Parameter -> its :class:`FeatureLR`.

    Raises:
        UnsupportedLayerError: A module owns parameters and no rule covers them.
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
        for fset, fixed in _module_sets(path, module, owned, lr_min, lr_max):
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
                layout[p] = FeatureLR(
                    qualified, dim % max(p.dim(), 1), cast[key], fset.index.get(name), n_sets
                )
            n_sets += 1
    return layout


def describe(layout: Mapping[nn.Parameter, FeatureLR]) -> list[tuple[str, int, int]]:
    """``(parameter name, dim, number of rates)`` for each parameter, for logging."""
    return [(f.name, f.dim, f.rates.numel()) for f in layout.values()]


def n_features(layout: Mapping[nn.Parameter, FeatureLR]) -> int:
    """Number of distinct features (parameters sharing a feature set count once)."""
    sizes = {f.feature_set: f.rates.numel() for f in layout.values()}
    return sum(sizes.values())
