"""torch.compile of an Alrao training step: no graph break, no per-step recompilation, equal
to eager.

One module-scoped run per optimizer (compiling on CPU takes seconds): a compiled model and an
eager twin train side by side for 100 steps under OneCycleLR, which changes the learning rate
(and the momentum or beta1) at every step, the worst case for recompilation. The AlraoSGD run
compiles with inductor (generated C++); the AlraoAdam run with ``aot_eager``, which traces the
same graphs (dynamo's graph breaks and recompilations do not depend on the backend) without
paying a second C++ build in the test suite. Inductor compiles in this process
(``compile_threads=1``): on a two-core machine inductor's default pool of compile worker
processes (each importing torch) costs more to start than the few kernels it would build.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from alrao_tune.alrao import AlraoAdam, AlraoModel, AlraoSGD
from tests.alrao.helpers import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

STEPS, COMPARE_AT = 100, 50
# name -> (optimizer factory, compile backend)
OPTIMIZERS = {
    "sgd": (lambda m: AlraoSGD(m, 1e-3, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               seed=0), "inductor"),
    "adam": (lambda m: AlraoAdam(m, 1e-4, 1e-2, weight_decay=1e-4, seed=0), "aot_eager"),
}  # fmt: skip


def _model() -> AlraoModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    return AlraoModel(body, 32, 4, n_heads=5)


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def run(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Train a compiled model and its eager twin; record graph counts and parameters."""
    torch._dynamo.reset()
    counters.clear()
    compiled, eager = _model(), _model()
    make_opt, backend = OPTIMIZERS[request.param]
    opts = [make_opt(m) for m in (compiled, eager)]
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=2.0, total_steps=STEPS) for o in opts]
    # fullgraph=True: a graph break anywhere in the model, heads, loss, switch or optimizer
    # step raises instead of silently splitting the graph
    loss_fn = torch.compile(lambda x, y: compiled.training_loss(x, y, with_output=False),
                            fullgraph=True, backend=backend)  # fmt: skip
    # the class's step: LR schedulers wrap the instance's `step` in code dynamo skips
    # (so the scheduler's first step warns, wrongly, that it ran before optimizer.step())
    step_fn = torch.compile(type(opts[0]).step, fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(1)
    out: dict[str, Any] = {"graphs": {}}
    with inductor_config.patch(compile_threads=1):
        for step in range(1, STEPS + 1):
            x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            opts[0].zero_grad()
            loss_fn(x, y).loss.backward()
            step_fn(opts[0])
            opts[1].zero_grad()
            eager.training_loss(x, y, with_output=False).loss.backward()
            opts[1].step()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                for sched in scheds:
                    sched.step()
            if step in (3, STEPS):
                out["graphs"][step] = counters["stats"]["unique_graphs"]
            if step == COMPARE_AT:
                out["params"] = [[p.detach().clone() for p in m.parameters()]
                                 for m in (compiled, eager)]  # fmt: skip
                out["switch"] = [m.switch.logw.clone() for m in (compiled, eager)]
    out["breaks"] = sum(counters["graph_break"].values())
    return out


def test_graph_count_is_constant_over_100_steps(run: dict[str, Any]) -> None:
    graphs = run["graphs"]
    # step 1 traces the loss (one graph, forward and backward) and the first optimizer step
    # (state being created); step 2 the steady-state step; nothing after that
    assert graphs[3] <= 3
    assert graphs[STEPS] == graphs[3]
    assert run["breaks"] == 0


def test_compiled_equals_eager_over_50_steps(run: dict[str, Any]) -> None:
    compiled, eager = run["params"]
    for p, q in zip(compiled, eager, strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(*run["switch"], atol=1e-5, rtol=1e-5)
