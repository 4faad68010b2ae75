"""The fallback for parameters no feature rule covers: one feature per index of the channel dim.

Alrao's feature is the set of incoming weights of one unit (Blier, Wolinski & Ollivier,
arXiv:1810.01322, section 2): every weight through which one unit of a layer's output is
computed gets that unit's learning rate. So a parameter of a layer type that no rule knows
needs one fact: its *channel dimension*, the dim whose index says which output unit an element
feeds. Each index along it is one feature. For a parameter ``p`` owned by module ``m``:

1. **Vector** — ``p`` has exactly one dim of size > 1 (``[D]``, ``[D, 1, 1]``, ``[1, 1, D]``,
   ``[1, 1, 1, D]``): that dim. Such a parameter acts elementwise on a D-channel activation
   (RMSNorm gains, ConvNeXt-V2 GRN ``weight``/``bias``, layer scales, class and distillation
   tokens), so element d is the one weight of ``p`` that channel d receives. A parameter with
   no dim larger than 1 (a scalar temperature or gate) is one feature.
2. **Weight with a bias** — several dims of size > 1, and ``m`` owns a 1-D parameter whose
   length equals exactly one of ``p``'s dims: that dim. A bias holds one offset per output
   unit, so the dim of that size indexes the output units: dim 0 of an ``[out, in]`` weight
   (as ``nn.Linear``), dim 1 of Hugging Face's ``Conv1D`` weight ``[in, out]``. When the length
   equals two dims (a square ``[D, D]`` matrix) shapes cannot tell, so the fallback asks the
   module: it runs ``m`` on two random rows of width D and takes the gradient of output unit 0
   with respect to ``p``. The weights it reaches are, by definition, unit 0's incoming weights:
   row 0 (dim 0) or column 0 (dim 1). If that does not decide, the parameter is an error.
3. **Table** — several dims of size > 1 and no such bias (position embeddings ``[1, T, D]``,
   relative-position bias tables ``[(2W-1)^2, H]``): the last dim. A table is a set of learned
   vectors added to, or looked up for, a channel-last activation (tokens ``[B, T, D]``,
   attention-bias heads), like the rows of ``nn.Embedding``, whose rule is one feature per
   coordinate.

Within one module, inferred parameters with the same number of channels form one feature set:
they feed the same channels of the module's output, as a norm's gain and shift do, or
``Conv1D``'s weight columns and bias, or ViT's class token and position embeddings.
:func:`~alrao_tune.alrao.lr.describe_features` lists what was inferred; ``strict=True`` turns
inference into an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from alrao_tune.alrao.features import FeatureSet, unsupported

__all__ = ["infer_feature_sets"]


def infer_feature_sets(
    path: str, module: nn.Module, names: Sequence[str]
) -> tuple[list[FeatureSet], dict[str, str]]:
    """Feature sets of ``module``'s parameters ``names`` by the channel-dimension rule.

    Args:
        path: Dotted path of ``module`` in the model (for error messages).
        module: The module owning the parameters.
        names: Names of its direct parameters that no rule covers.

    Returns:
        ``(sets, labels)``: one :class:`FeatureSet` per distinct channel count, and for each
        parameter a short label of the case that decided it (for ``describe_features``).

    Raises:
        UnsupportedLayerError: A square weight whose output dim the probe cannot decide.
    """
    bias_lengths = {
        p.shape[0] for p in module._parameters.values() if p is not None and p.dim() == 1
    }
    dims: dict[int, dict[str, int]] = {}
    index: dict[int, dict[str, Tensor]] = {}
    labels: dict[str, str] = {}
    for name in names:
        p = module._parameters[name]
        dim, labels[name] = _channel_dim(path, module, name, p, bias_lengths)
        n = p.shape[dim] if p.dim() else 1
        dims.setdefault(n, {})[name] = dim
        if p.dim() == 0:  # a 0-d parameter: one feature, addressed by a 0-d index
            index.setdefault(n, {})[name] = torch.zeros((), dtype=torch.long, device=p.device)
    sets = [FeatureSet(n, d, index.get(n, {})) for n, d in dims.items()]
    return sets, labels


def _channel_dim(
    path: str, module: nn.Module, name: str, p: Tensor, bias_lengths: set[int]
) -> tuple[int, str]:
    """The channel dim of ``p`` and the label of the case that chose it (module docstring)."""
    big = [d for d in range(p.dim()) if p.shape[d] > 1]
    if not big:
        return max(p.dim() - 1, 0), "inferred: scalar (one feature)"
    if len(big) == 1:
        return big[0], f"inferred: vector (dim {big[0]})"
    candidates = [d for d in big if p.shape[d] in bias_lengths]
    if len(candidates) == 1:
        return candidates[0], f"inferred: matches the bias (dim {candidates[0]})"
    if not candidates:
        return p.dim() - 1, f"inferred: table (last dim {p.dim() - 1})"
    if p.dim() == 2:
        probed = _probe_output_dim(module, p)
        if probed is not None:
            return probed, f"inferred: square, probed (dim {probed})"
    raise unsupported(
        path, module, [name],
        f"its shape {tuple(p.shape)} matches a bias along dims {candidates}, so the output "
        "dim is ambiguous, and running the module could not decide it",
    )  # fmt: skip


def _probe_output_dim(module: nn.Module, p: Tensor) -> int | None:
    """Dim of the square matrix ``p`` holding output unit 0's incoming weights, or ``None``.

    Runs ``module`` on a random ``[2, D]`` input and differentiates output unit 0 with respect
    to ``p`` (``torch.autograd.grad``: ``p.grad`` is not touched). Any failure means "cannot
    tell".
    """
    n = p.shape[0]
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(device=p.device, dtype=p.dtype)
    try:
        with torch.enable_grad():
            out = module(x)
            if not isinstance(out, Tensor) or out.shape[-1] != n or not out.requires_grad:
                return None
            (grad,) = torch.autograd.grad(out[..., 0].sum(), p, allow_unused=True)
    except Exception:  # noqa: BLE001 - whatever the module raises, the probe cannot tell
        return None
    if grad is None:
        return None
    reached = grad != 0
    if reached[0].any() and not reached[1:].any():
        return 0
    if reached[:, 0].any() and not reached[:, 1:].any():
        return 1
    return None
