"""Datasets as in-memory tensors; none needs internet (see :mod:`.datasets`).

Modules: ``splits`` (:class:`DatasetSplits`, :class:`DataInfo`, :class:`DatasetError` and
the loaders' helpers), ``datasets`` (the generated and bundled datasets, the registry
:func:`load_dataset`, :func:`iterate_batches`) and ``files`` (CIFAR-10 and text read from
local files).
"""

from __future__ import annotations

from alrao_tune.data.datasets import (
    CACHE_ENV,
    DATASETS,
    dataset_options,
    default_cache_dir,
    iterate_batches,
    load_dataset,
)
from alrao_tune.data.splits import Augment, DataInfo, DatasetError, DatasetSplits

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "Augment",
    "DataInfo",
    "DatasetError",
    "DatasetSplits",
    "dataset_options",
    "default_cache_dir",
    "iterate_batches",
    "load_dataset",
]
