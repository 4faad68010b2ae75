"""alrao_tune.schema: the names light and heavy modules share are defined once, and the
registries keyed by them (datasets, zoo families, schedules) cover exactly those names."""

from __future__ import annotations

import pytest

from alrao_tune import schema


def test_registries_are_keyed_by_the_shared_names():
    from alrao_tune.data import datasets
    from alrao_tune.space import constants
    from alrao_tune.zoo import build

    # the loaders and the zoo's option schemas, in the order of the shared names
    assert tuple(datasets._LOADERS) == schema.DATASETS == datasets.DATASETS
    assert tuple(build._SCHEMAS) == schema.FAMILIES == build.FAMILIES
    # the search-space validator uses the same objects, not copies
    assert constants.DATASETS is schema.DATASETS and constants.FAMILIES is schema.FAMILIES
    assert set(schema.PATH_DATASETS) <= set(schema.DATASETS)


@pytest.mark.parametrize("name", sorted(schema.SCHEDULE_OPTIONS))
def test_every_schedule_name_builds(name):
    import torch

    from alrao_tune.train.schedule import build_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    build_schedule(opt, {"name": name}, epochs=2, steps_per_epoch=3, has_momentum=True)


@pytest.mark.parametrize("k,lo,hi", [(1, 1e-4, 1.0), (5, 1e-5, 10.0), (10, 1e-3, 1e-3)])
def test_head_rates_agree_with_the_alrao_heads(k, lo, hi):
    from alrao_tune.alrao.heads import head_learning_rates

    expected = head_learning_rates(k, lo, hi).tolist()  # float32
    assert schema.head_rates(k, lo, hi) == pytest.approx(expected, rel=1e-6)


def test_one_error_base_for_every_user_facing_error():
    from alrao_tune.dashboard.launch import UIError
    from alrao_tune.data import DatasetError
    from alrao_tune.errors import AlraoTuneError
    from alrao_tune.report.store import StoreError
    from alrao_tune.space import SpaceError
    from alrao_tune.tracking import TrackingError
    from alrao_tune.train import CheckpointError, ConfigError
    from alrao_tune.tune._ray_compat import RayVersionError
    from alrao_tune.tune.resume import ResumeError
    from alrao_tune.tune.session import ClusterError
    from alrao_tune.zoo import ArchError

    for cls in (ConfigError, DatasetError, ArchError, SpaceError, CheckpointError,
                TrackingError, ResumeError, ClusterError, UIError, StoreError,
                RayVersionError):
        assert issubclass(cls, AlraoTuneError), cls
