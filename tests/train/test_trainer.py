"""The one training loop: determinism, exact resume, divergence, schedules, lr_find."""

from __future__ import annotations

import math

import pytest
import torch

from alrao_tune.data import load_dataset
from alrao_tune.train import ConfigError, TrainConfig, Trainer, fit, lr_find
from tests.train.conftest import BLOBS


def config(**changes) -> TrainConfig:
    base = TrainConfig(
        dataset="blobs", dataset_options=BLOBS, arch={"family": "mlp", "widths": [16]},
        method="alrao", lr_min=1e-3, lr_max=1.0, n_heads=4, epochs=4, batch_size=32,
        patience=None, device="cpu")
    return base.replace(**changes)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("method,lr", [("alrao", 0.01), ("sgd", 0.1), ("adam", 0.01)])
def test_every_method_reduces_the_loss(blobs, method, lr):
    history = fit(config(method=method, lr=lr, epochs=5), data=blobs)
    losses = history.curve("train_loss")
    # training makes progress with each optimizer, through the same loop
    assert losses[-1] < losses[0]
    assert history.status == "completed" and history.best_epoch is not None
    assert 0.0 <= history.test_acc <= 1.0


def test_same_seed_gives_identical_history(blobs):
    a = fit(config(seed=3), data=blobs)
    b = fit(config(seed=3), data=blobs)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h.records]
    assert strip(a) == strip(b)
    c = fit(config(seed=4), data=blobs)
    assert strip(a) != strip(c)


@pytest.mark.parametrize("changes", [
    {},
    {"momentum": 0.9, "schedule": {"name": "onecycle"}},
    {"method": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": {"name": "cosine"}},
    {"alrao_optimizer": "adam", "arch": {"family": "mlp", "widths": [16], "norm": "batch"}},
])
def test_checkpoint_and_resume_is_exact(blobs, tmp_path, changes):
    cfg = config(epochs=4, **changes)
    straight = Trainer(cfg, blobs)
    straight.run()
    first = Trainer(cfg, blobs)
    for _ in range(2):
        first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg, blobs)
    resumed.restore(tmp_path / "ckpt.pt")
    resumed.run()
    # the resumed run ends with bit-identical weights (switch buffers included)
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[key]), key
    assert resumed.optimizer.state_dict()["state"].keys() == straight.optimizer.state_dict()[
        "state"].keys()
    assert [r["val_loss"] for r in resumed.records] == [r["val_loss"] for r in straight.records]


def test_sgd_with_lr_10_diverges_and_is_reported(blobs):
    data = load_dataset("synthetic", seed=0, n_train=256)
    history = fit(TrainConfig(dataset="synthetic", arch={"family": "mlp", "widths": [32]},
                              method="sgd", lr=10.0, epochs=5, device="cpu"), data=data)
    # divergence is a result, not an exception
    assert history.status == "diverged"
    assert history.diverged and len(history.records) < 5
    assert history.summary()["val_loss"] == math.inf or not math.isfinite(
        history.records[-1]["train_loss"])


def test_alrao_records_posterior_and_effective_rate(blobs):
    history = fit(config(posterior_every=5, epochs=2), data=blobs)
    record = history.records[-1]
    assert config().lr_min <= record["lr_eff"] <= config().lr_max
    assert 0.0 <= record["share_in_decade"] <= 1.0
    assert {f"head_loss/head_{k:02d}" for k in range(4)} <= record.keys()
    series = record["step_metrics"]
    steps = [s for s, _ in series["posterior/head_00"]]
    # recorded every 5 steps plus the epoch's last step
    assert steps[0] % 5 == 0 and steps == sorted(steps)
    for i in range(len(steps)):
        total = sum(series[f"posterior/head_{k:02d}"][i][1] for k in range(4))
        assert total == pytest.approx(1.0, abs=1e-5)
    assert history.head_rates[0] == pytest.approx(1e-3) and history.head_rates[-1] == (
        pytest.approx(1.0))


def test_step_schedule_scales_alrao_rates(blobs):
    history = fit(config(epochs=3, schedule={"name": "step", "step_size": 1, "gamma": 0.5}),
                  data=blobs)
    # the group multiplier halves every epoch: every Alrao rate is scaled at once
    assert history.curve("lr_scale") == [0.5, 0.25, 0.125]


def test_early_stopping_respects_min_epochs(blobs):
    cfg = config(epochs=30, patience=1, min_epochs=6, lr_min=1e-5, lr_max=1e-5)
    history = fit(cfg, data=blobs)
    assert len(history.records) >= 6
    assert history.status in ("early_stopped", "completed")


def test_time_budget_stops_the_run(blobs):
    history = fit(config(epochs=50, time_budget_s=1e-6), data=blobs)
    assert history.status == "time_budget" and len(history.records) == 1


def test_step_hooks_see_every_step(blobs):
    trainer = Trainer(config(epochs=1), blobs)
    seen = []
    trainer.step_hooks.append(lambda tr, step, loss: seen.append(step))
    trainer.run()
    assert seen == list(range(1, trainer.steps_per_epoch + 1))


def test_lr_find_suggests_a_rate_inside_the_range(blobs):
    result = lr_find(config(method="sgd"), data=blobs, num_iter=60, start_lr=1e-5, end_lr=10)
    assert 1e-5 <= result.lr_steepest <= 10 and 1e-5 <= result.lr_min_loss <= 10
    assert result.suggested == pytest.approx(math.sqrt(result.lr_steepest * result.lr_min_div10))
    assert len(result.lrs) == len(result.losses) <= 60


@pytest.mark.parametrize("changes,match", [
    ({"method": "rmsprop"}, "method must be one of"),
    ({"lr_min": 0.0}, "lr_min must be a positive number"),
    ({"lr_min": 1.0, "lr_max": 0.1}, "lr_max must be"),
    ({"schedule": {"name": "warmup"}}, "schedule.name must be one of"),
    ({"nesterov": True}, "nesterov=True needs momentum"),
])
def test_bad_config_values_raise_clear_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        config(**changes)


def test_unknown_config_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean 'lr_max'"):
        TrainConfig.from_dict({"lr_maxx": 1.0})


FAMILIES = [
    ("mnist1d", {"family": "mlp", "widths": [16]}),
    ("mnist1d", {"family": "cnn1d", "channels": [4, 8]}),
    ("mnist1d", {"family": "gru", "hidden": 8}),
    ("mnist1d", {"family": "lstm", "hidden": 8}),
    ("mnist1d", {"family": "cnn_gru", "channels": [4], "hidden": 8}),
    ("digits", {"family": "cnn2d", "channels": [4, 8]}),
    ("digits", {"family": "mobilenet", "widths": [4, 8], "stem_channels": 4}),
    ("digits", {"family": "inception", "widths": [8], "stem_channels": 4}),
    ("digits", {"family": "resnet", "widths": [4, 8], "stem_channels": 4}),
    ("text", {"family": "gru", "hidden": 8, "embedding_dim": 8}),
    ("text", {"family": "lstm", "hidden": 8, "embedding_dim": 8}),
    ("mnist1d", {"family": "transformer", "dim": 8, "depth": 1, "heads": 2, "patch_size": 8}),
    ("text", {"family": "transformer", "dim": 8, "depth": 1, "heads": 2}),
]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    text = tmp_path_factory.mktemp("text") / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    return {
        "mnist1d": load_dataset("mnist1d", n_train=128, n_val=64, n_test=64),
        "digits": load_dataset("digits"),
        "text": load_dataset("text", path=str(text), seq_len=16),
    }


@pytest.mark.parametrize("method", ["alrao", "sgd", "adam"])
@pytest.mark.parametrize("dataset,arch", FAMILIES, ids=lambda v: v if isinstance(v, str) else
                         v.get("family"))
def test_every_family_trains_with_every_method(small_data, dataset, arch, method):
    data = small_data[dataset]
    cfg = TrainConfig(dataset=dataset, arch=arch, method=method, lr=0.05, lr_min=1e-3,
                      lr_max=1.0, n_heads=3, epochs=1, batch_size=64, patience=None,
                      device="cpu")
    history = fit(cfg, data=data)
    # one epoch through the same loop: finite losses and a test evaluation
    assert history.status == "completed"
    assert math.isfinite(history.records[0]["train_loss"])
    assert math.isfinite(history.test_loss)


def test_a_deleted_checkpoint_is_replaced_by_the_trials_newest_complete_one(blobs, tmp_path):
    """Tune's experiment state can name a checkpoint that Tune deleted just before a
    SIGKILL: before the restore, a copy of the complete ``checkpoint_*`` beside it with the
    most epochs is put in its place (issue 18: the newest complete state of the run); a
    sibling without a readable file is skipped and said; a damaged named checkpoint is an
    error, not skipped."""
    from types import SimpleNamespace

    from ray import tune

    from alrao_tune.train import CheckpointError
    from alrao_tune.tune.checkpoints import restore_missing, usable_checkpoint

    trainer = Trainer(config(), blobs)
    for index in (2, 3, 4):
        trainer.train_epoch()
        (tmp_path / f"checkpoint_00000{index}").mkdir()
        trainer.save(tmp_path / f"checkpoint_00000{index}" / "trainer.pt")
    (tmp_path / "checkpoint_000003" / "trainer.pt").write_bytes(b"cut short by the kill")

    named = tune.Checkpoint(str(tmp_path / "checkpoint_000004"))
    source, note = usable_checkpoint(named)  # present: used as it is, 000003 skipped
    assert source is None and note.startswith("skipped incomplete checkpoint folder(s) "
                                              "checkpoint_000003")
    gone = tune.Checkpoint(str(tmp_path / "checkpoint_000001"))
    source, note = usable_checkpoint(gone)
    # 000003 is unreadable, so 000004 (epoch 3) is the newest complete one
    assert source == str(tmp_path / "checkpoint_000004")
    assert "checkpoint_000001" in note and "checkpoint_000004 (epoch 3)" in note
    assert restore_missing(SimpleNamespace(checkpoint=gone)) == note
    restored = Trainer(config(), blobs)
    restored.restore(tmp_path / "checkpoint_000001" / "trainer.pt")
    assert restored.epoch == 3 and usable_checkpoint(gone)[0] is None
    with pytest.raises(CheckpointError, match=r"checkpoint_000003/trainer.pt is unreadable"):
        usable_checkpoint(tune.Checkpoint(str(tmp_path / "checkpoint_000003")))
    for index in (1, 2, 4):
        (tmp_path / f"checkpoint_00000{index}" / "trainer.pt").unlink()
        (tmp_path / f"checkpoint_00000{index}").rmdir()
    with pytest.raises(CheckpointError, match="no other checkpoint of the trial"):
        usable_checkpoint(tune.Checkpoint(str(tmp_path / "checkpoint_000001")))
