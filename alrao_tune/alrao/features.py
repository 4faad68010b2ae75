"""Feature rules: which elements of a layer's parameters form one Alrao *feature*.

A feature is the set of incoming weights of one unit (Blier, Wolinski & Ollivier,
arXiv:1810.01322, section 2); all of its elements share one learning rate. A *rule* maps a
module to :class:`FeatureSet` entries, each saying along which dim of which parameters the
features vary. Rules are registered per module type and looked up along the MRO, so subclasses
match. Parameters no rule covers are handled by the documented fallback in
:mod:`alrao_tune.alrao.infer`.

Built-in rules:

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureRule",
    "FeatureSet",
    "UnsupportedLayerError",
    "find_rule",
    "register_feature_rule",
    "unsupported",
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


def unsupported(
    path: str, module: nn.Module, names: Sequence[str], why: str
) -> UnsupportedLayerError:
    """The error for parameters of ``module`` (at ``path``) that have no feature layout."""
    kind = type(module).__name__
    return UnsupportedLayerError(
        f"Module '{path or '<root>'}' ({type(module).__qualname__}) owns parameters "
        f"{list(names)}, but {why}. Register a rule with "
        f"`alrao_tune.alrao.lr.register_feature_rule({kind}, rule)` (a rule returns "
        "FeatureSet(n, {param_name: dim}) entries), give the module an "
        "`alrao_feature_lrs(lr_min, lr_max)` method, or move the parameters into supported "
        "layers (e.g. an nn.Linear)."
    )


FeatureRule = Callable[[nn.Module], Sequence[FeatureSet]]
"""A rule maps a module to the feature sets covering all of its direct parameters."""


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


def find_rule(module_type: type[nn.Module]) -> tuple[type[nn.Module], FeatureRule] | None:
    """The registered type nearest in ``module_type``'s MRO and its rule, or ``None``."""
    for cls in module_type.__mro__:
        if cls in _RULES:
            return cls, _RULES[cls]
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
