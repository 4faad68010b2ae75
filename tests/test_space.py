"""Tests of alrao_tune.space: search-space YAML -> validated SearchSpace, with clear errors."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from alrao_tune.space import (
    _MISSING,  # the 'no value' marker of SpaceError
    DATASETS,
    FAMILIES,
    PAPER_LR_GRID,
    Compare,
    SearchRange,
    SearchSpace,
    SpaceError,
    apply_overrides,
    load_space,
    parse_space,
)

SPACES = Path(__file__).resolve().parents[1] / "searchspaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid space: one MLP on MNIST-1D, plus ``sections``."""
    raw: dict[str, Any] = {
        "dataset": {"name": "mnist1d"},
        "architectures": [{"family": "mlp", "widths": [8]}],
    }
    raw.update(sections)
    return raw


def two_archs(**sections: Any) -> dict[str, Any]:
    archs = [{"family": "mlp", "widths": [8]}, {"family": "gru", "hidden": 6}]
    return minimal(**{"architectures": archs, **sections})


def write(tmp_path: Path, raw: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- shipped files
def test_shipped_files_exist() -> None:
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "mnist1d.yaml", "digits.yaml", "cifar10.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_parse(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALRAO_TUNE_CIFAR10", str(tmp_path))
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
    assert (a.lr_min, a.lr_max, a.n_heads, a.theta) == (1e-5, 10.0, 10, 0.999)
    assert (a.optimizer, a.momentum, a.weight_decay) == ("sgd", 0.0, 0.0)
    s1 = space.stage1
    assert (s1.seeds, s1.metric, s1.top_k, s1.asha) == ([0], "val_loss", 2, None)
    s2 = space.stage2
    assert (s2.enabled, s2.optimizer, s2.lr.low, s2.lr.high) == (True, "sgd", 1e-4, 1.0)
    assert (s2.momentum, s2.weight_decay, s2.trials_per_arch, s2.sampler) == (0.0, 0.0, 6, "tpe")
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
    monkeypatch.setenv("ALRAO_TUNE_CIFAR10", str(tmp_path))
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


# ----------------------------------------------------------------------------- file errors
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no such file: .*nope.yaml") as err:
        load_space(tmp_path / "nope.yaml")
    assert err.value.key == ""


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset:\n  name: mnist1d\n  bad: [1, 2\n")
    with pytest.raises(SpaceError, match=r"space.yaml: line \d+, column \d+: invalid YAML"):
        load_space(path)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="top level must be a mapping.*got list"):
        load_space(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(SpaceError, match="top level must be a mapping.*got int"):
        parse_space(3)  # type: ignore[arg-type]


def test_empty_file_needs_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="dataset: required key is missing") as err:
        load_space(write(tmp_path, ""))
    assert err.value.key == "dataset"


def test_error_message_is_one_line_with_file_key_value_hint(tmp_path: Path) -> None:
    archs = [{"family": "mlp", "widths": [w]} for w in range(6)]
    path = write(tmp_path, minimal(architectures=archs, stage1={"top_k": 7}), "quickstart.yaml")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(err.value) == (
        f"{path}: stage1.top_k = 7: larger than the number of architectures (6); "
        "set 1 <= top_k <= 6"
    )
    e = err.value
    assert (e.file, e.key, e.value) == (str(path), "stage1.top_k", 7)
    assert "\n" not in str(e)


def test_space_error_pickles() -> None:
    err = SpaceError("a.yaml", "stage1.top_k", 7, "too large", ["x: y"])
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.key, back.value, back.more) == (str(err), err.key, 7, ("x: y",))
    missing = SpaceError("a.yaml", "dataset", _MISSING, "required key is missing")
    assert str(pickle.loads(pickle.dumps(missing))) == "a.yaml: dataset: required key is missing"


def test_dataset_path_relative_to_yaml_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "book.txt").write_text("hello world", encoding="utf-8")
    raw = minimal(dataset={"name": "text", "options": {"path": "data/book.txt"}})
    space = load_space(write(tmp_path, raw))
    assert space.dataset.options["path"] == str((tmp_path / "data" / "book.txt").resolve())
    raw["dataset"]["options"]["path"] = "data/missing.txt"
    with pytest.raises(SpaceError, match="does not exist") as err:
        load_space(write(tmp_path, raw))
    assert str((tmp_path / "data" / "missing.txt").resolve()) in str(err.value)
    assert err.value.key == "dataset.options.path"


# ----------------------------------------------------------------------------- value errors
ERRORS = [
    # (changes to the two-architecture space, key, match)
    ({"stage1": {"top_k": 3}}, "stage1.top_k", r"larger than the number of architectures \(2\)"),
    ({"stage1": {"top_k": 0}}, "stage1.top_k", "greater than or equal to 1"),
    ({"stage1": {"topk": 1}}, "stage1.topk", "unknown key; did you mean 'top_k'"),
    ({"trainig": {}}, "trainig", "unknown key; did you mean 'training'"),
    ({"stage1": {"seeds": []}}, "stage1.seeds", "at least 1 item"),
    ({"stage1": {"seeds": 0}}, "stage1.seeds", "seed count must be >= 1"),
    ({"stage1": {"metric": "acc"}}, "stage1.metric", "'val_loss', 'val_acc'"),
    (
        {"stage1": {"asha": {"grace_period": 30}}},
        "stage1.asha.grace_period",
        r"<= training.epochs \(20\)",
    ),
    ({"alrao": {"lr_min": 0.0}}, "alrao.lr_min", "greater than 0"),
    ({"alrao": {"lr_min": 10.0}}, "alrao.lr_min", r"must be < lr_max \(10.0\)"),
    ({"alrao": {"theta": 1.0}}, "alrao.theta", "less than 1"),
    ({"alrao": {"optimizer": "rmsprop"}}, "alrao.optimizer", "'sgd' or 'adam'"),
    ({"alrao": {"n_heads": "10"}}, "alrao.n_heads", "valid integer"),
    ({"training": {"epochs": 2.5}}, "training.epochs", "valid integer"),
    ({"training": {"epochs": True}}, "training.epochs", "valid integer"),
    (
        {"training": {"epochs": 5, "min_epochs": 6}},
        "training.min_epochs",
        r"must be <= epochs \(5\)",
    ),
    ({"training": {"patience": 0}}, "training.patience", "greater than or equal to 1"),
    ({"training": {"device": "gpu"}}, "training.device", "auto, cpu, cuda or cuda:N"),
    (
        {"training": {"schedule": {"name": "cosin"}}},
        "training.schedule.name",
        "did you mean 'cosine'",
    ),
    (
        {"training": {"schedule": {"name": "step", "gama": 0.5}}},
        "training.schedule.gama",
        "did you mean 'gamma'",
    ),
    ({"training": {"schedule": {"step_size": 3}}}, "training.schedule.name", "required"),
    ({"stage2": {"lr": {"low": 1.0, "high": 0.1}}}, "stage2.lr.low", r"must be < high \(0.1\)"),
    ({"stage2": {"lr": {"low": 0.0, "high": 0.1}}}, "stage2.lr.low", "greater than 0"),
    ({"stage2": {"momentum": 1.0}}, "stage2.momentum", r"must be in \[0, 1\)"),
    ({"stage2": {"momentum": {"low": 0.5, "high": 1.5}}}, "stage2.momentum", r"in \[0, 1\)"),
    (
        {"stage2": {"momentum": {"low": 0.5, "hi": 0.9}}},
        "stage2.momentum.hi",
        "did you mean 'high'",
    ),
    ({"stage2": {"weight_decay": -0.1}}, "stage2.weight_decay", "must be >= 0"),
    (
        {"stage2": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
        "stage2.weight_decay.low",
        "must be > 0 for a log-scale range",
    ),
    ({"stage2": {"sampler": "grid"}}, "stage2.sampler", "'tpe' or 'random'"),
    ({"compare": {"lr_grid": [0.1, -1.0]}}, "compare.lr_grid[1]", "learning rates must be > 0"),
    ({"compare": {"momentum": [0.0, 1.0]}}, "compare.momentum[1]", r"in \[0, 1\)"),
    ({"compare": {"alrao_momentum": [-0.5]}}, "compare.alrao_momentum[0]", r"in \[0, 1\)"),
    ({"compare": {"alrao_ranges": [[1.0, 0.1]]}}, "compare.alrao_ranges[0]",
     "0 < lr_min < lr_max"),
    ({"compare": {"min_epochs": 21}}, "compare.min_epochs", r"<= training.epochs \(20\)"),
    ({"resources": {"cpu": 0}}, "resources.cpu", "greater than 0"),
    ({"resources": {"gpu": -1}}, "resources.gpu", "greater than or equal to 0"),
    (
        {"dataset": {"name": "mnist"}},
        "dataset.name",
        "unknown dataset; known: mnist1d, digits.*did you mean 'mnist1d'",
    ),
    ({"dataset": {"name": "cifar10"}}, "dataset.options.path", "required for dataset 'cifar10'"),
    ({"dataset": {"name": "mnist1d", "seed": "0"}}, "dataset.seed", "valid integer"),
    ({"architectures": []}, "architectures", "no architectures"),
    (
        {"architectures": [{"family": "mpl"}]},
        "architectures[0].family",
        "unknown family; known: mlp, cnn1d.*did you mean 'mlp'",
    ),
    ({"architectures": [{"widths": [8]}]}, "architectures[0].family", "exactly one of"),
    (
        {"architectures": [{"family": "mlp", "builder": "a:b"}]},
        "architectures[0].family",
        "exactly one of",
    ),
    (
        {"architectures": [{"builder": "mypkg.nets"}]},
        "architectures[0].builder",
        "'package.module:function'",
    ),
    ({"architectures": [{"family": "mlp", "name": ""}]}, "architectures[0].name", "non-empty"),
    ({"architectures": ["mlp"]}, "architectures[0]", "valid dictionary"),
    (
        {"architectures": [{"family": "mlp"}, {"family": "mlp"}]},
        "architectures[1].name",
        "duplicate architecture name: architectures\\[0\\] and architectures\\[1\\]",
    ),
    ({"grids": [{"family": "gru", "grid": {"hidden": 6}}]}, "grids[0].grid.hidden", "valid list"),
    (
        {"grids": [{"family": "gru", "grid": {"hidden": []}}]},
        "grids[0].grid.hidden",
        "at least one value",
    ),
    (
        {"grids": [{"family": "gru", "grid": {"family": ["mlp"]}}]},
        "grids[0].grid.family",
        "reserved",
    ),
    (
        {"grids": [{"family": "gru", "grid": {"hidden": [6]}, "name": "g-{hiden}"}]},
        "grids[0].name",
        "bad template .*use family, hidden",
    ),
    (
        {"grids": [{"family": "gru", "grid": {"hidden": [6, 8]}, "name": "g"}]},
        "grids[0].name",
        r"duplicate architecture name: grids\[0\] combination #0 and grids\[0\] combination #1",
    ),
    ({"grids": [{"famly": "gru"}]}, "grids[0].famly", "did you mean 'family'"),
]


@pytest.mark.parametrize(("changes", "key", "match"), ERRORS, ids=[e[1] for e in ERRORS])
def test_value_errors(changes: dict[str, Any], key: str, match: str) -> None:
    with pytest.raises(SpaceError, match=match) as err:
        parse_space(two_archs(**changes), source="bad.yaml")
    # the exception names the YAML path of the bad key, and the message starts with file: key
    assert err.value.key == key
    assert str(err.value).startswith(f"bad.yaml: {key}")
    assert "\n" not in str(err.value)


def test_grid_counts_toward_top_k() -> None:
    grid = {"family": "gru", "grid": {"hidden": [6, 32]}}
    assert parse_space(minimal(grids=[grid], stage1={"top_k": 3})).stage1.top_k == 3
    with pytest.raises(SpaceError, match=r"number of architectures \(3\)"):
        parse_space(minimal(grids=[grid], stage1={"top_k": 4}))


def test_env_var_expansion_in_nested_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TAG", "v1")
    raw = minimal(dataset={"name": "synthetic", "options": {"note": "a-${MY_TAG}", "x": [1]}})
    assert parse_space(raw).dataset.options == {"note": "a-v1", "x": [1]}


def test_more_problems_are_counted() -> None:
    with pytest.raises(SpaceError, match=r"\(\+1 more problem\(s\)\)$") as err:
        parse_space(two_archs(training={"epochs": 0, "batch_size": 0}))
    assert len(err.value.more) == 1 and "training.batch_size" in err.value.more[0]


def test_known_names_cover_the_shipped_files() -> None:
    # the constants the lead's sync test compares against alrao_tune.data / alrao_tune.zoo
    assert {"mnist1d", "digits", "cifar10", "text", "synthetic", "blobs"} == set(DATASETS)
    assert "cnn_gru" in FAMILIES and isinstance(parse_space(minimal()), SearchSpace)
