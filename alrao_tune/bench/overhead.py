"""Benchmarks that print figures (``alrao-tune bench ...``); never timed unit tests.

``overhead``: the time of one training step (zero_grad, forward, loss, backward, step) of
plain ``torch.optim.SGD`` vs Alrao (K heads, AlraoSGD) on the same architecture,
interleaved step by step in one run so machine noise hits both alike; medians of many
steps. Models: "cnn" (conv32-BN-ReLU-maxpool, conv64-BN-ReLU-maxpool, conv128-BN-ReLU,
global average pool, 10 classes, input 3x32x32) and "mlp" (784-512-512-10), batch 32.
Both steps go through the training loop's :func:`~alrao_tune.train.step.make_step`; with
``compile`` both are compiled (``torch.compile`` of the loss and of the optimizer step), so
the ratio compares compiled Alrao with compiled SGD.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from alrao_tune.alrao import AlraoModel, AlraoSGD
from alrao_tune.alrao.switch import Switch
from alrao_tune.train.step import make_step


def _cnn_body() -> tuple[nn.Module, int, tuple[int, ...]]:
    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    body = nn.Sequential(*block(3, 32, True), *block(32, 64, True), *block(64, 128, False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, 128, (3, 32, 32)


def _mlp_body() -> tuple[nn.Module, int, tuple[int, ...]]:
    body = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    return body, 512, (784,)


MODELS: dict[str, Callable[[], tuple[nn.Module, int, tuple[int, ...]]]] = {
    "cnn": _cnn_body, "mlp": _mlp_body}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def step_overhead(name: str, *, batch: int = 32, steps: int = 200, warmup: int = 20,
                  n_heads: int = 10, seed: int = 0, compile: bool = False) -> dict[str, float]:
    """Median step time of SGD and Alrao on model ``name``, interleaved; and their ratio.

    With ``compile`` the warm-up steps include the compilation (not timed).
    """
    torch.manual_seed(seed)
    body, width, in_shape = MODELS[name]()
    plain = nn.Sequential(copy.deepcopy(body), nn.Linear(width, 10))
    alrao = AlraoModel(copy.deepcopy(body), width, 10, n_heads=n_heads)
    x = torch.randn(batch, *in_shape)
    y = torch.randint(0, 10, (batch,))

    def plain_loss(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(plain(xb), yb)
        return loss, loss.detach()

    def alrao_loss(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = alrao.training_loss(xb, yb, with_output=False)
        return out.loss, out.model_loss

    fns = {"sgd": make_step(plain_loss, torch.optim.SGD(plain.parameters(), lr=0.01),
                            compile=compile),
           "alrao": make_step(alrao_loss, AlraoSGD(alrao, 1e-5, 10.0, seed=seed),
                              compile=compile)}  # fmt: skip
    times: dict[str, list[float]] = {"sgd": [], "alrao": []}
    for i in range(warmup + steps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn(x, y)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    sgd_ms, alrao_ms = _median_ms(times["sgd"]), _median_ms(times["alrao"])
    return {"sgd_ms": sgd_ms, "alrao_ms": alrao_ms, "ratio": alrao_ms / sgd_ms}


def switch_update_us(n_models: int = 10, n: int = 2000) -> float:
    """Median time of one ``Switch.update`` in microseconds."""
    switch = Switch(n_models)
    nll = torch.rand(n_models)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        switch.update(nll)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def optimizer_state_numel(name: str = "mlp") -> dict[str, int]:
    """Optimizer-state size of AlraoSGD without momentum vs the number of weights."""
    body, width, _ = MODELS[name]()
    model = AlraoModel(body, width, 10)
    opt = AlraoSGD(model, 1e-5, 10.0, seed=0)
    state = sum(t.numel() for s in opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"state_numel": state, "param_numel": sum(p.numel() for p in model.parameters())}


def overhead(steps: int = 200, *, compile: bool = False) -> dict[str, dict[str, float]]:
    """The ``bench overhead`` figures: eager step ratios for both models, the switch update
    time, the optimizer state size, and with ``compile`` the compiled ratios
    (``"<model>_compiled"``)."""
    out: dict[str, dict[str, float]] = {name: step_overhead(name, steps=steps) for name in MODELS}
    if compile:
        for name in MODELS:
            out[f"{name}_compiled"] = step_overhead(name, steps=steps, compile=True)
    out["switch"] = {"update_us": switch_update_us()}
    out["state"] = {k: float(v) for k, v in optimizer_state_numel().items()}
    return out


def loop_overhead(epochs: int = 3, method: str = "alrao") -> dict[str, float]:
    """The training loop's own cost, on MNIST-1D with the default 1-D CNN.

    Interleaves, epoch by epoch, (a) a bare loop over the same batches (zero_grad,
    loss, backward, step; nothing else) on one model and (b) :class:`Trainer` epochs on
    an identical model. ``step_overhead`` = Trainer's training-steps time / bare time - 1
    (batching, loss bookkeeping, divergence checks, posterior recording, hooks);
    ``loop_share`` = the part of a Trainer epoch that is neither training steps nor the
    validation pass (metrics, records, best-state bookkeeping); ``eval_share`` = the
    validation pass's part of an epoch.
    """
    from alrao_tune.data import iterate_batches, load_dataset
    from alrao_tune.train import TrainConfig, Trainer

    cfg = TrainConfig(dataset="mnist1d", arch={"family": "cnn1d"}, method=method,
                      epochs=epochs, patience=None, device="cpu", posterior_every=10)
    data = load_dataset("mnist1d")
    trainer, bare = Trainer(cfg, data), Trainer(cfg, data)
    gen = torch.Generator().manual_seed(0)
    totals = {"bare": 0.0, "train": 0.0, "eval": 0.0, "epoch": 0.0}
    for _ in range(epochs):
        t0 = time.perf_counter()
        bare.model.train()
        for xb, yb in iterate_batches(data.x_train, data.y_train, cfg.batch_size,
                                      shuffle=True, generator=gen):
            bare.train_step(xb, yb)
        totals["bare"] += time.perf_counter() - t0
        rec = trainer.train_epoch()
        totals["train"] += rec["train_time_s"]
        totals["eval"] += rec["eval_time_s"]
        totals["epoch"] += rec["epoch_time_s"]
    return {
        "bare_epoch_s": totals["bare"] / epochs,
        "trainer_epoch_s": totals["epoch"] / epochs,
        "step_overhead": totals["train"] / totals["bare"] - 1,
        "loop_share": (totals["epoch"] - totals["train"] - totals["eval"]) / totals["epoch"],
        "eval_share": totals["eval"] / totals["epoch"],
    }
