"""The small generated dataset the training-loop tests share."""

from __future__ import annotations

import pytest

from alrao_tune.data import load_dataset

BLOBS = {"n_train": 400, "n_features": 8, "n_classes": 3}


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs", seed=0, **BLOBS)
