"""User-builder fixtures for tests/zoo/test_build.py (referenced as
``tests.helpers_zoo:<name>``)."""

from __future__ import annotations

import math

from torch import nn

from alrao_tune.data import DataInfo
from alrao_tune.zoo import ZooModel


def tiny(info: DataInfo, width: int = 8) -> tuple[nn.Module, int]:
    """Flatten + one hidden layer; returns ``(preclassifier, feature_dim)``."""
    d = math.prod(info.input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU()), width


def tiny_zoo(info: DataInfo) -> ZooModel:
    """Returns a complete :class:`ZooModel`."""
    pre, dim = tiny(info, width=4)
    return ZooModel(pre, dim, info.n_outputs, name="tiny-zoo")


def bad_return(info: DataInfo) -> nn.Module:
    """Returns a bare module, which build_model must reject."""
    return nn.Linear(3, 3)
