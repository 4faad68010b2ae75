"""Tests of the training step (alrao_tune/train/step.py) and ``training.compile``.

Compiled runs use the ``aot_eager`` backend: it traces the same graphs as inductor (graph
breaks and recompilations are decided by dynamo, before the backend) without a C++ build per
test; tests/alrao/test_compile.py covers inductor.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

import alrao_tune.train.step as step_module
from alrao_tune.data import load_dataset
from alrao_tune.space import parse_space
from alrao_tune.train import TrainConfig, Trainer
from alrao_tune.tune.stages import train_config
from tests.space.helpers import minimal


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.compile with the aot_eager backend, fresh dynamo caches and counters."""
    compile_fn = functools.partial(torch.compile, backend="aot_eager")
    monkeypatch.setattr(step_module.torch, "compile", compile_fn)
    torch._dynamo.reset()
    counters.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist1d", n_train=96, n_val=32, n_test=32)


def _run(data, **options) -> tuple[list[float], Trainer]:
    cfg = TrainConfig(dataset="mnist1d", arch={"family": "mlp", "widths": [16]}, epochs=3,
                      patience=None, device="cpu", **options)  # fmt: skip
    trainer = Trainer(cfg, data)
    history = trainer.run()
    return [r["train_loss"] for r in history.records], trainer


@pytest.mark.parametrize(("method", "extra"), [
    ("alrao", {"schedule": {"name": "onecycle"}, "momentum": 0.9}),
    ("sgd", {"schedule": {"name": "onecycle"}, "momentum": 0.9}),
], ids=["alrao_sgd", "sgd"])  # fmt: skip
def test_compiled_training_equals_eager(aot_eager: None, data, method: str,
                                        extra: dict) -> None:  # fmt: skip
    eager, _ = _run(data, method=method, **extra)
    compiled, trainer = _run(data, method=method, compile=True, **extra)
    # the same losses epoch by epoch, while the schedule changed the LR every step
    assert compiled == pytest.approx(eager, rel=1e-5)
    # the loss (forward + backward) and the optimizer step were traced: a few graphs, and
    # no new one after the first steps (9 steps per epoch, 3 epochs, LR changing each step)
    assert 2 <= counters["stats"]["unique_graphs"] <= 4
    assert trainer.global_step == 9


def test_training_compile_flows_from_the_space_to_the_config() -> None:
    space = parse_space(minimal(training={"compile": True}))
    arch = space.architectures_resolved()[0]
    assert TrainConfig.from_dict(train_config(space, arch, method="alrao", seed=0)).compile
    # without it the trial config has no new key (existing trials keep their configs)
    plain = parse_space(minimal())
    assert "compile" not in train_config(plain, arch, method="sgd", seed=0)
