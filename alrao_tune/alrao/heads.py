"""The K output-layer clones of Alrao ("heads") as one batched module.

Alrao (Blier, Wolinski & Ollivier, arXiv:1810.01322, section 3) replaces the last
layer of a network by K copies trained in parallel, copy k with the fixed learning
rate

    eta_k = exp(log lr_min + (k / (K - 1)) * (log lr_max - log lr_min)),  k = 0 .. K-1,

i.e. log-uniformly spaced over [lr_min, lr_max]; their predictions are averaged by the
switch (``switch.py``). Here the K copies of an ``nn.Linear(D, C)`` are stored as one
``weight`` of shape [K, C, D] and one ``bias`` of shape [K, C], so all heads run in a
single matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["TASKS", "AlraoHeads", "head_learning_rates"]

TASKS = ("classification", "regression")
_LOG_2PI = math.log(2.0 * math.pi)


def head_learning_rates(n_heads: int, lr_min: float, lr_max: float) -> Tensor:
    """Fixed learning rates of the heads: ``exp(linspace(log lr_min, log lr_max, K))``.

    With a single head the rate is the geometric mean ``sqrt(lr_min * lr_max)`` (the
    centre of the interval on the log scale, where Alrao's body rates are centred too).

    Args:
        n_heads: number of heads K (>= 1).
        lr_min: smallest rate (> 0).
        lr_max: largest rate (>= lr_min).

    Returns:
        float32 tensor of shape [K], increasing.
    """
    if not 0.0 < lr_min <= lr_max:
        raise ValueError(f"need 0 < lr_min <= lr_max, but got {lr_min=} and {lr_max=}.")
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, but got {n_heads=}.")
    log_min, log_max = math.log(lr_min), math.log(lr_max)
    if n_heads == 1:
        return torch.tensor([math.exp(0.5 * (log_min + log_max))], dtype=torch.float32)
    grid = torch.linspace(log_min, log_max, n_heads, dtype=torch.float64)
    return grid.exp().to(torch.float32)


class AlraoHeads(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` heads, run as one matmul.

    ``classification``: each head outputs log-probabilities (``log_softmax`` over C);
    the per-example loss is the negative log-likelihood of the target class.
    ``regression``: each head outputs the mean ``mu_k`` of a unit-variance Gaussian over
    R^C; the per-example loss is ``0.5 * ||y - mu_k||^2 + 0.5 * C * log(2 pi)``, a
    proper log-loss (so the switch compares heads by likelihood), equal to half the
    summed squared error plus a constant.

    The module implements ``alrao_feature_lrs`` so that Alrao's optimizers give head k
    the fixed rate ``eta_k`` (dim 0 of ``weight`` and ``bias``).

    Args:
        in_features: feature dimension D of the pre-classifier output.
        out_features: number of classes (or regression output dimension) C.
        n_heads: number of heads K.
        task: ``"classification"`` or ``"regression"``.
        interval: ``(lr_min, lr_max)`` of the heads' rates when they should differ from the
            body's interval (the one the optimizer passes); None: the optimizer's.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_heads: int = 10,
        task: str = "classification",
        *,
        interval: tuple[float, float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}.")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be an integer >= 1, but got {n_heads=}.")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, but got {task=}.")
        if interval is not None:
            head_learning_rates(1, *interval)  # checks 0 < lr_min <= lr_max
            interval = (float(interval[0]), float(interval[1]))
        self.in_features, self.out_features = in_features, out_features
        self.n_heads, self.task, self.interval = n_heads, task, interval
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(n_heads, out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(n_heads, out_features, **factory))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every head independently, exactly like ``nn.Linear``."""
        bound = 1.0 / math.sqrt(self.in_features)
        for k in range(self.n_heads):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
            nn.init.uniform_(self.bias[k], -bound, bound)

    def linear(
        self, features: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Raw outputs ``features @ weight[k].T + bias[k]`` of every head, in one matmul.

        Args:
            features: shape [..., D].
            weight: optional replacement for ``self.weight`` (e.g. detached), [K, C, D].
            bias: optional replacement for ``self.bias``, [K, C].

        Returns:
            Shape [..., K, C].
        """
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        k, c = self.n_heads, self.out_features
        out = F.linear(features, weight.reshape(k * c, self.in_features), bias.reshape(k * c))
        return out.unflatten(-1, (k, c))

    def forward(
        self, features: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Per-head predictions: log-probabilities (classification) or means (regression).

        Args:
            features: shape [..., D].
            weight: optional replacement for ``self.weight``, [K, C, D].
            bias: optional replacement for ``self.bias``, [K, C].

        Returns:
            Shape [..., K, C], float32 or wider (also under bf16/fp16 autocast).
        """
        out = self.linear(features, weight, bias)
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # float32 under autocast
        return out.log_softmax(-1) if self.task == "classification" else out

    def nll(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Per-example, per-head negative log-likelihood.

        Args:
            outputs: ``forward`` output, shape [..., K, C].
            target: class indices [...] (long) for classification; [..., C] (or [...]
                when C == 1) for regression.

        Returns:
            Shape [..., K].
        """
        if self.task == "classification":
            index = target.unsqueeze(-1).unsqueeze(-1).expand(*target.shape, self.n_heads, 1)
            return -outputs.gather(-1, index).squeeze(-1)
        if target.dim() == outputs.dim() - 2:
            target = target.unsqueeze(-1)
        sq = (outputs - target.unsqueeze(-2).to(outputs.dtype)).square().sum(-1)
        return 0.5 * sq + 0.5 * self.out_features * _LOG_2PI

    def head_rates(self, lr_min: float, lr_max: float) -> Tensor:
        """The fixed learning rate of each head, see :func:`head_learning_rates`, over
        ``[lr_min, lr_max]`` or, when set, the heads' own ``interval``; shape [K]."""
        return head_learning_rates(self.n_heads, *(self.interval or (lr_min, lr_max)))

    def alrao_feature_lrs(self, lr_min: float, lr_max: float) -> dict[str, tuple[int, Tensor]]:
        """Per-parameter learning-rate vectors for Alrao's optimizers.

        Returns:
            ``{param_name: (dim, rates)}``: the optimizer scales ``param`` by ``rates``
            broadcast along ``dim``; here head k gets ``eta_k`` along dim 0. ``rates``
            (float32, on the parameter's device) is one tensor shared by ``weight`` and
            ``bias``: head k is one feature, with one rate.
        """
        rates = self.head_rates(lr_min, lr_max).to(self.weight.device)
        return {"weight": (0, rates), "bias": (0, rates)}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_heads={self.n_heads}, task={self.task!r}"
            + (f", interval={self.interval}" if self.interval else "")
        )
