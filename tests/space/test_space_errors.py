"""Tests of alrao_tune.space's errors: bad files and bad values give one clear line that
names the file, the key, the value and the fix."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from alrao_tune.space import (
    _MISSING,  # the 'no value' marker of SpaceError
    DATASETS,
    FAMILIES,
    SearchSpace,
    SpaceError,
    load_space,
    parse_space,
)
from tests.space.helpers import minimal, two_archs, write


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
    ({"alrao": {"lr_min": 1.0}}, "alrao.lr_min", r"must be < lr_max \(1.0\)"),
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
    ({"stage2": {"sampler": "grid"}}, "stage2.sampler", "'random' or 'bracket'"),
    ({"stage2": {"startup_trials": 0}}, "stage2.startup_trials", "greater than or equal to 1"),
    ({"compare": {"stage2_methods": ["tpe", "cmaes"]}}, "compare.stage2_methods[1]",
     r"unknown sampler 'cmaes'; a stage-2 method is <sampler>"),
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
