"""The tensors of a dataset: :class:`DatasetSplits`, what models see of it
(:class:`DataInfo`), and the helpers every loader uses (option checks, standardisation,
seeded hold-out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alrao_tune.errors import AlraoTuneError

Augment = Callable[[Tensor, torch.Generator], Tensor]


class DatasetError(AlraoTuneError, ValueError):
    """Unknown dataset, bad option, missing path or malformed file; the message says which."""


@dataclass(frozen=True)
class DataInfo:
    """What a model builder needs to know about a dataset (no tensors).

    Attributes:
        kind: ``vector`` ([N, L] floats), ``image`` ([N, C, H, W] floats) or ``tokens``
            ([N, T] longs).
        input_shape: shape of one example, e.g. ``(40,)``, ``(3, 32, 32)``, ``(T,)``.
        n_outputs: number of classes (classification) or output dimension (regression).
        vocab_size: vocabulary size (``tokens`` only).
        task: ``classification`` or ``regression``.
    """

    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int
    vocab_size: int | None = None
    task: str = "classification"


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class DatasetSplits:
    """Train / validation / test tensors of one dataset plus what models need to know.

    Inputs are float32 (long for ``tokens``); targets are long class indices
    (classification; ``[N]``, or ``[N, T]`` for tokens) or float32 ``[N, n_outputs]``
    (regression). ``augment(x_batch, generator)``, when set, is applied by the training loop
    to every training batch.
    """

    name: str
    task: str
    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_val: Tensor = field(repr=False)
    y_val: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    vocab_size: int | None = None
    augment: Augment | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y) or tuple(x.shape[1:]) != self.input_shape:
                raise DatasetError(
                    f"{self.name}: {split} split has inputs {tuple(x.shape)} and targets "
                    f"{tuple(y.shape)}; expected [N, *{self.input_shape}] and N targets."
                )

    @property
    def info(self) -> DataInfo:
        """The tensor-free description used by :func:`alrao_tune.zoo.build_model`."""
        return DataInfo(self.kind, self.input_shape, self.n_outputs, self.vocab_size, self.task)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise :class:`DatasetError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DatasetError(f"option {name!r} must be an integer >= {minimum}, but got {value!r}.")
    return int(value)


def check_float(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise DatasetError(f"option {name!r} must be a number >= {minimum}, but got {value!r}.")
    return float(value)


def standardize(train: Tensor, *others: Tensor, dims: tuple[int, ...]) -> list[Tensor]:
    """Subtract the train mean and divide by the train std, reduced over ``dims``.

    Args:
        train: training inputs (floating point); their statistics are used for every split.
        others: further splits, normalised with the same statistics.
        dims: dimensions to reduce (``(0,)``: per feature; all dims: one scalar).

    Returns:
        ``[train, *others]`` normalised, float32.
    """
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return [((t - mean) / std).to(torch.float32) for t in (train, *others)]


def holdout(n: int, n_val: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded permutation of ``range(n)`` split into (train indices, last ``n_val`` = val)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n_val], perm[n - n_val :]
