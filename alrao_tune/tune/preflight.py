"""Checks done in the driver before anything is written or any trial starts.

The dataset is loaded once (a missing path or a malformed file fails here, and generated
data lands in the on-disk cache the workers then read), every architecture is built on
that data (an unknown family or a bad option fails here), and every trial's training
config is validated. Each failure raises the module's own clear error.
"""

from __future__ import annotations

from typing import Any

from alrao_tune.data import DatasetSplits, load_dataset
from alrao_tune.space import SearchSpace
from alrao_tune.train.config import TrainConfig
from alrao_tune.tune import stages
from alrao_tune.zoo import ArchError, build_model, count_parameters


def preflight(space: SearchSpace, archs: list[dict[str, Any]]) -> dict[str, int]:
    """Validates data, architectures and configs; returns each architecture's size."""
    data: DatasetSplits = load_dataset(
        space.dataset.name, seed=space.dataset.seed, **dict(space.dataset.options))
    sizes: dict[str, int] = {}
    for i, arch in enumerate(archs):
        try:
            sizes[arch["name"]] = count_parameters(build_model(arch, data))
        except ArchError as err:
            raise ArchError(f"architectures[{i}] ({arch['name']}): {err}") from err
        TrainConfig.from_dict(stages.train_config(space, arch, method="alrao", seed=0))
        if space.stage2.enabled:
            TrainConfig.from_dict(stages.stage2_param_space(space, arch)["train"])
    return sizes
