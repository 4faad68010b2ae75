"""Tests of alrao_tune.space: search-space YAML -> validated SearchSpace (shipped files,
defaults, grids, --set overrides); its errors are in test_space_errors.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from alrao_tune.space import (
    FAMILIES,
    PAPER_LR_GRID,
    Compare,
    SearchRange,
    SpaceError,
    apply_overrides,
    load_space,
    parse_space,
)
from tests.space.helpers import minimal, two_archs, write

SPACES = Path(__file__).resolve().parents[2] / "searchspaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


# ----------------------------------------------------------------------------- shipped files
def shipped_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the shipped spaces read: a CIFAR-10 folder, a text file."""
    monkeypatch.setenv("ALRAO_TUNE_CIFAR10", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    monkeypatch.setenv("ALRAO_TUNE_TEXT", str(tmp_path / "corpus.txt"))


def test_shipped_files_exist() -> None:
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "mnist1d.yaml", "digits.yaml", "cifar10.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_parse(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped_env(tmp_path, monkeypatch)
    space = load_space(path)
    archs = space.architectures_resolved()
    # every architecture has a unique name and a known family (or a builder)
    assert len({a["name"] for a in archs}) == len(archs)
    assert all(a.get("family") in FAMILIES or ":" in a.get("builder", "") for a in archs)
    assert 1 <= space.stage1.top_k <= len(archs)


def test_quickstart_and_mnist1d_contents() -> None:
    quick = load_space(SPACES / "quickstart.yaml")
    assert quick.name == "quickstart"
    assert quick.dataset.options == {"n_train": 2000, "n_val": 500}
    assert len(quick.architectures_resolved()) == 6
    # early stopping may fire, but never before min_epochs (GRUs start on a plateau)
    assert quick.training.min_epochs <= quick.training.epochs
    assert quick.training.patience is not None
    zoo = load_space(SPACES / "mnist1d.yaml")
    families = [a["family"] for a in zoo.architectures_resolved()]
    assert len(families) >= 12
    assert (families.count("mlp"), families.count("cnn1d"), families.count("gru")) == (4, 5, 3)
    assert not zoo.compare.half_decades and zoo.compare.seeds == [0, 1, 2]
    assert tuple(zoo.compare.lr_grid) == PAPER_LR_GRID


def test_cifar10_env_var_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALRAO_TUNE_CIFAR10", str(tmp_path))
    space = load_space(SPACES / "cifar10.yaml")
    assert space.dataset.options["path"] == str(tmp_path.resolve())
    assert (space.resources.cpu, space.resources.gpu) == (2.0, 1.0)


def test_cifar10_env_var_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALRAO_TUNE_CIFAR10", raising=False)
    with pytest.raises(SpaceError, match="ALRAO_TUNE_CIFAR10 is not set") as err:
        load_space(SPACES / "cifar10.yaml")
    assert err.value.key == "dataset.options.path"


# ----------------------------------------------------------------------------- defaults
def test_defaults() -> None:
    space = parse_space(two_archs())
    assert space.name == "space"
    assert space.dataset.options == {} and space.dataset.seed == 0
    t = space.training
    assert (t.epochs, t.batch_size, t.patience, t.min_epochs) == (20, 32, 5, 0)
    assert (t.time_budget_s, t.device, t.schedule) == (None, "auto", {"name": "constant"})
    a = space.alrao
    assert (a.lr_min, a.lr_max, a.n_heads, a.theta) == (1e-4, 1.0, 10, 0.999)
    assert (a.optimizer, a.momentum, a.weight_decay) == ("sgd", 0.0, 0.0)
    s1 = space.stage1
    assert (s1.seeds, s1.metric, s1.top_k, s1.asha) == ([0], "val_loss", 2, None)
    s2 = space.stage2
    assert (s2.enabled, s2.optimizer, s2.lr.low, s2.lr.high) == (True, "sgd", 1e-4, 1.0)
    assert (s2.momentum, s2.weight_decay, s2.trials_per_arch) == (0.0, 0.0, 6)
    assert (s2.sampler, s2.startup_trials, s2.scheduler) == ("bracket", None, "none")
    assert (s2.seed, s2.seed_with_alrao, s2.metric) == (0, True, "val_loss")
    c = space.compare
    assert (tuple(c.lr_grid), c.half_decades, c.momentum) == (PAPER_LR_GRID, False, [0.0])
    assert (c.adam, c.seeds, c.min_epochs) == (True, [0, 1, 2], None)
    assert (space.resources.cpu, space.resources.gpu) == (1.0, 0.0)
    assert (space.stage1_mode, space.stage2_mode) == ("min", "min")


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    assert load_space(write(tmp_path, minimal(), "my-job.yaml")).name == "my-job"


def test_default_top_k_clamped_to_a_single_architecture() -> None:
    # top_k defaults to 2; a one-architecture space is not an error unless top_k is set
    assert parse_space(minimal()).stage1.top_k == 1


def test_seed_count_and_modes() -> None:
    raw = two_archs(
        stage1={"seeds": 3, "metric": "val_acc"},
        stage2={"metric": "val_acc"},
        compare={"seeds": 2},
    )
    space = parse_space(raw)
    assert space.stage1.seeds == [0, 1, 2] and space.compare.seeds == [0, 1]
    assert (space.stage1_mode, space.stage2_mode) == ("max", "max")
    raw = two_archs(stage1={"metric": "best_head_val_loss"})
    assert parse_space(raw).stage1_mode == "min"


def test_stage2_ranges() -> None:
    s2 = {
        "momentum": {"low": 0.5, "high": 0.99},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    }
    space = parse_space(two_archs(stage2=s2))
    assert space.stage2.momentum == SearchRange(low=0.5, high=0.99)
    assert space.stage2.weight_decay == SearchRange(low=1e-6, high=1e-2, log=True)


def test_half_decade_grid() -> None:
    grid = Compare(lr_grid=[1e-2, 1e-1, 1.0], half_decades=True).lr_values()
    # x * sqrt(10) between consecutive points, rounded to 3 significant digits
    assert grid == [1e-2, 0.0316, 0.1, 0.316, 1.0]
    assert math.isclose(grid[1], 1e-2 * math.sqrt(10), rel_tol=1e-3)
    assert Compare(lr_grid=[1.0, 0.1]).lr_values() == [0.1, 1.0]


def test_space_is_frozen() -> None:
    space = parse_space(minimal())
    with pytest.raises(ValueError, match="frozen"):
        space.training.epochs = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- grids
def test_grid_expansion_count_and_names() -> None:
    grid = {
        "family": "cnn1d",
        "base": {"kernel_size": 5},
        "grid": {"channels": [[16, 32], [32, 64]], "norm": ["batch", "none"]},
    }
    space = parse_space(minimal(grids=[grid]))
    archs = space.architectures_resolved()
    # 1 explicit + 2 x 2 grid combinations, explicit first, grid in product order
    assert [a["name"] for a in archs] == [
        "mlp-widths=8",
        "cnn1d-channels=16x32-norm=batch",
        "cnn1d-channels=16x32-norm=none",
        "cnn1d-channels=32x64-norm=batch",
        "cnn1d-channels=32x64-norm=none",
    ]
    assert archs[2] == {
        "name": "cnn1d-channels=16x32-norm=none",
        "family": "cnn1d",
        "kernel_size": 5,
        "channels": [16, 32],
        "norm": "none",
    }
    assert space.stage1.top_k == 2


def test_grid_name_template_and_builder() -> None:
    grids = [
        {"family": "gru", "grid": {"hidden": [6, 32]}, "name": "{family}-h{hidden}"},
        {"builder": "my.pkg:net", "base": {"depth": 2}, "grid": {"width": [0.5]}},
    ]
    names = [a["name"] for a in parse_space(minimal(grids=grids)).architectures_resolved()]
    assert names == ["mlp-widths=8", "gru-h6", "gru-h32", "net-width=0.5"]


def test_resolved_architectures_are_copies() -> None:
    space = parse_space(minimal())
    space.architectures_resolved()[0]["widths"].append(99)
    assert space.architectures_resolved()[0]["widths"] == [8]


# ----------------------------------------------------------------------------- round trip
def test_to_dict_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped_env(tmp_path, monkeypatch)
    for path in SHIPPED:
        space = load_space(path)
        assert parse_space(space.to_dict()) == space
        expanded = parse_space(space.to_dict(expand_grids=True))
        assert expanded.architectures_resolved() == space.architectures_resolved()
        assert parse_space(yaml.safe_load(space.to_yaml(expand_grids=False))) == space


# ----------------------------------------------------------------------------- overrides
def test_overrides_typed_values_and_list_indices() -> None:
    raw = minimal()
    out = apply_overrides(
        raw,
        [
            "training.epochs=3",
            "alrao.lr_min=1e-4",
            "stage1.seeds=[1,2]",
            "training.patience=null",
            "architectures.0.widths=[32, 16]",
            "architectures.1={family: gru, hidden: 6}",  # index == length appends
            "dataset.name=digits",
        ],
        source="x.yaml",
    )
    assert out["training"] == {"epochs": 3, "patience": None}
    assert out["alrao"] == {"lr_min": 1e-4}
    assert out["stage1"] == {"seeds": [1, 2]}
    assert out["architectures"] == [
        {"family": "mlp", "widths": [32, 16]},
        {"family": "gru", "hidden": 6},
    ]
    assert out["dataset"]["name"] == "digits"
    assert raw == minimal()  # the input is not modified


def test_overrides_create_missing_sections() -> None:
    raw = minimal(stage1={"asha": None})
    out = apply_overrides(raw, ["stage1.asha.grace_period=2", "compare.adam=false"])
    assert out["stage1"]["asha"] == {"grace_period": 2}
    assert out["compare"] == {"adam": False}


def test_load_space_with_overrides(tmp_path: Path) -> None:
    space = load_space(SPACES / "quickstart.yaml", ["training.epochs=2", "training.min_epochs=1"])
    assert (space.training.epochs, space.training.min_epochs) == (2, 1)


@pytest.mark.parametrize(
    ("item", "key", "match"),
    [
        ("training.epochs", "--set", r"'training.epochs': expected KEY=VALUE"),
        ("=3", "--set", "expected KEY=VALUE"),
        ("architectures.5.widths=[1]", "architectures.5", "not a list index"),
        ("architectures.x=1", "architectures.x", "not a list index"),
        ("training.epochs.x=1", "training.epochs", "cannot set a key inside 20"),
        ("training.epochs=[1", "training.epochs", "bad --set value"),
    ],
)
def test_bad_overrides(item: str, key: str, match: str) -> None:
    raw = minimal(training={"epochs": 20})
    with pytest.raises(SpaceError, match=match) as err:
        apply_overrides(raw, [item], source="x.yaml")
    assert err.value.key == key and err.value.file == "x.yaml"


def test_invalid_override_names_the_set_item() -> None:
    with pytest.raises(SpaceError, match=r"did you mean 'top_k'.*from --set stage1.topk=1") as err:
        load_space(SPACES / "quickstart.yaml", ["stage1.topk=1"])
    assert err.value.key == "stage1.topk"
    with pytest.raises(SpaceError) as err:
        load_space(SPACES / "quickstart.yaml", ["stage2.momentum={low: 0.1}"])
    assert str(err.value).endswith(
        "stage2.momentum.high: required key is missing (from --set stage2.momentum={low: 0.1})"
    )
    assert not err.value.has_value and err.value.value is None
