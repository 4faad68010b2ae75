"""Alrao on a CUDA device: rates follow the parameters' device and dtype, and a training step
never synchronises with the host (checked by torch.cuda.set_sync_debug_mode("error")).

Skipped without CUDA; run them on a machine with a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from alrao_tune.alrao import AlraoAdam, AlraoModel, AlraoSGD

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(dtype: torch.dtype = torch.float32) -> AlraoModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6, 16), nn.LayerNorm(16), nn.ReLU())  # fmt: skip
    return AlraoModel(body, 16, 3, n_heads=4).to("cuda", dtype)


@pytest.fixture
def no_sync() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [AlraoSGD, AlraoAdam])
def test_rates_follow_the_parameters_device_and_dtype(make: type, dtype: torch.dtype) -> None:
    model = _model(dtype)
    opt = make(model, 1e-3, 1.0, seed=0)
    for p in model.parameters():
        rates = opt.state[p]["feature_lr"]
        assert rates.device == p.device and rates.dtype == p.dtype
    assert model.switch.logw.is_cuda and model.switch.t.is_cuda


@pytest.mark.parametrize("make", [
    lambda m: AlraoSGD(m, 1e-3, 1.0, momentum=0.9, seed=0, foreach=True),
    lambda m: AlraoSGD(m, 1e-3, 1.0, seed=0, foreach=False),
    lambda m: AlraoAdam(m, 1e-4, 1e-2, seed=0),
], ids=["sgd_foreach", "sgd_loop", "adam"])  # fmt: skip
def test_a_training_step_never_syncs_with_the_host(make, no_sync: None) -> None:  # noqa: ANN001
    model = _model()
    opt = make(model)
    x = torch.randn(32, 2, 6, device="cuda")
    y = torch.randint(0, 3, (32,), device="cuda")
    for _ in range(3):  # the first steps create optimizer state; later ones are steady
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            result = model.training_loss(x, y)
        result.loss.backward()
        opt.step()
    torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(result.loss).item()
