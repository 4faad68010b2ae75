"""Stage 2's samplers: which learning rates an architecture's Optuna study tries next.

``stage2.sampler`` names one of :data:`SAMPLERS`:

* ``tpe``: Optuna's ``TPESampler`` (its first ``stage2.startup_trials`` trials, default 10,
  are random: with 4-8 trials per architecture TPE never leaves its random start unless
  the startup count is lowered);
* ``gp``: Optuna's ``GPSampler`` (a Gaussian process on the trials so far; random start
  the same way);
* ``random``: ``RandomSampler``;
* ``bracket``: :class:`BracketSampler`, a deterministic pattern search in log10(lr) around
  the architecture's Alrao effective rate (:func:`bracket_next`).

Every sampler is seeded with ``stage2.seed``; other searched parameters (momentum, weight
decay) are drawn by the sampler itself, or for ``bracket`` by a seeded ``RandomSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.samplers import BaseSampler

from alrao_tune.schema import STAGE2_SAMPLERS as SAMPLERS

STEP = 0.5  # bracket: the first steps are half a decade
MIN_GAP = 0.05  # bracket: a rate within this many decades of a tried one is not tried again


def make_sampler(name: str, *, seed: int, startup_trials: int | None = None,
                 anchor: float = math.nan, low: float = 1e-4, high: float = 1.0) -> Any:
    """The Optuna sampler ``name`` (one of :data:`SAMPLERS`); ``anchor`` (the Alrao effective
    rate) and ``low``/``high`` (the lr range) are used by ``bracket`` only."""
    import optuna

    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "bracket":
        return BracketSampler(anchor, low, high, seed=seed)
    raise ValueError(f"unknown stage-2 sampler {name!r}; known: {', '.join(SAMPLERS)}")


def bracket_next(anchor: float, low: float, high: float,
                 tried: Sequence[tuple[float, float | None]]) -> float:
    """The next learning rate of the bracket search.

    ``tried``: (lr, loss) of every trial so far, loss None while it runs (lower is better;
    a failed or diverged trial has loss inf). All arithmetic is on x = log10(lr), clipped
    into [log10(low), log10(high)]; an unusable ``anchor`` (nan, <= 0) is the range's
    geometric middle.

    1. Until a result is in, the ladder x0, x0 + h, x0 - h, x0 + 2h, x0 - 2h, ... (x0 =
       the anchor, h = :data:`STEP`), skipping rates already tried.
    2. Then, with b the best finished rate: if b is the highest (lowest) rate tried so far,
       step h further up (down): the search follows the loss downhill past the bracket.
    3. Otherwise zoom: the midpoint between b and its better tried neighbour, then the
       midpoint on the other side, then halve again.
    A candidate within :data:`MIN_GAP` decades of a tried rate is skipped; when every
    candidate is, the rate halfway into the widest gap between tried rates is returned.
    """
    lo, hi = math.log10(low), math.log10(high)
    x0 = (lo + hi) / 2 if not (anchor > 0 and math.isfinite(anchor)) else math.log10(anchor)
    x0 = min(max(x0, lo), hi)
    xs = [math.log10(lr) for lr, _ in tried]

    def fresh(x: float) -> bool:
        return lo - 1e-12 <= x <= hi + 1e-12 and all(abs(x - t) >= MIN_GAP for t in xs)

    def clip(x: float) -> float:
        return min(max(x, lo), hi)

    finished = [(math.log10(lr), loss) for lr, loss in tried if loss is not None]
    candidates: list[float] = []
    if not finished:
        candidates = [x0]
        for k in range(1, 1 + math.ceil((hi - lo) / STEP)):
            candidates += [clip(x0 + k * STEP), clip(x0 - k * STEP)]
    else:
        best = min(finished, key=lambda p: (_key(p[1]), p[0]))[0]
        if best >= max(xs) - 1e-12:
            candidates.append(clip(best + STEP))
        if best <= min(xs) + 1e-12:
            candidates.append(clip(best - STEP))
        loss_at = {x: _key(v) for x, v in finished}
        above = [x for x in xs if x > best + 1e-12]
        below = [x for x in xs if x < best - 1e-12]
        sides = []
        if above:
            up = min(above)
            sides.append((loss_at.get(up, math.inf), up))
        if below:
            down = max(below)
            sides.append((loss_at.get(down, math.inf), down))
        for _, neighbour in sorted(sides):  # the better neighbour first
            gap = neighbour - best
            candidates += [best + gap / 2, best + gap / 4]
    for x in candidates:
        if fresh(x):
            return 10 ** x
    # every candidate was tried: halfway into the widest gap (the range ends included)
    points = sorted({lo, hi, *xs})
    a, b = max(zip(points, points[1:]), key=lambda p: p[1] - p[0])
    return 10 ** ((a + b) / 2)


def _key(loss: float) -> float:
    return math.inf if loss is None or math.isnan(loss) else loss


class BracketSampler(BaseSampler):
    """An Optuna sampler that picks ``lr`` with :func:`bracket_next` from the study's trials
    (finished: their value, signed so that lower is better; running: pending; failed or
    pruned: inf) and draws any other parameter with a seeded ``RandomSampler``. Enqueued
    trials (Alrao's rate, first) keep their fixed parameters, as with any sampler."""

    def __init__(self, anchor: float, low: float, high: float, *, seed: int = 0,
                 param: str = "lr") -> None:
        import optuna

        self.anchor, self.low, self.high, self.param = anchor, low, high, param
        self._other = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]
                        ) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        if param_name != self.param:
            return self._other.sample_independent(study, trial, param_name,
                                                  param_distribution)
        import optuna

        states = optuna.trial.TrialState
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        tried: list[tuple[float, float | None]] = []
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or self.param not in t.params:
                continue
            if t.state == states.COMPLETE:
                ok = t.value is not None and math.isfinite(t.value)
                tried.append((float(t.params[self.param]), sign * t.value if ok else math.inf))
            elif t.state in (states.RUNNING, states.WAITING):
                tried.append((float(t.params[self.param]), None))
            else:  # FAIL, PRUNED
                tried.append((float(t.params[self.param]), math.inf))
        low = max(self.low, param_distribution.low)
        high = min(self.high, param_distribution.high)
        lr = bracket_next(self.anchor, low, high, tried)
        return float(min(max(lr, param_distribution.low), param_distribution.high))

    def reseed_rng(self) -> None:
        self._other.reseed_rng()
