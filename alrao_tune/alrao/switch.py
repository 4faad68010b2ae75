"""Switch model averaging (van Erven, Grünwald & de Rooij), exact, in log space.

The switch distribution averages K predictors ("experts") while allowing the best one
to change over time. Alrao uses it to combine its K output-layer clones (Blier,
Wolinski & Ollivier, "Learning with random learning rates", arXiv:1810.01322,
appendix A). The update below is Algorithm 1 of van Erven, Grünwald & de Rooij,
"Catching up faster in Bayesian model selection and model averaging", NeurIPS 2007,
as implemented in the Alrao authors' reference code.

Hidden Markov model. The hidden state at time t is a pair (k, s): expert k predicts
observation t, and s = a ("may still switch") or s = b ("final segment, never
switches again"). With prior parameter theta and the switching prior
pi_t = pi_T(Z = t | Z >= t) = 1 / (t + 1):

* initial distribution: P(k, a) = theta / K, P(k, b) = (1 - theta) / K;
* after emitting observation t, state (k, a) stays at (k, a) with probability
  1 - pi_t; with probability pi_t it goes to a *pool* and restarts at (k', a) with
  probability theta / K or at (k', b) with probability (1 - theta) / K (k' may be k);
* state (k, b) stays at (k, b) forever.

Forward algorithm, with w[s, k] the joint probability of state (k, s) and the
observations so far (``logw`` holds log w, normalised after every step)::

    w        <- w * p_k(x_t)                          (both rows)
    pool      = pi_t * sum_k w[a, k]
    w[a, k]  <- (1 - pi_t) * w[a, k] + theta * pool / K
    w[b, k]  <- w[b, k] + (1 - theta) * pool / K
    w        <- w / sum(w)

after which ``posterior[k] = w[a, k] + w[b, k]`` is the predictive weight of expert k
for observation t + 1.

Implementation: the state is kept in log space; each update takes one softmax of
``log w + log p_k(x_t)`` over the 2K states (the log-sum-exp shift), applies the linear
switching step with a precomputed [2K, 2K] matrix (a broadcast product and a sum rather than a
matmul, which autocast would run in bf16), and takes the log.
Terms more than ~87 nats (float32) below the largest are flushed to 0 by the softmax;
this is below float32 resolution of the result, because every entry also receives a
share of the switching pool, roughly pi_t^2 (1 - theta) / K of the total or more (far
above exp(-87) for any realistic t and K). Unlike the authors' code, a NaN loss does not
raise (see :class:`Switch`).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor, nn

__all__ = ["Switch", "benchmark_update"]


class Switch(nn.Module):
    """Exact switch posterior over ``n_models`` experts, updated online.

    All state lives in buffers (``logw`` of shape [2, K] and the step counter ``t``),
    so ``state_dict`` round trips continue identically, and ``.to(device/dtype)``
    moves everything. ``update`` runs without host synchronisation: no ``.item()``
    and no Python branching on tensor values.

    Non-finite losses are results, not errors: a NaN, +inf or -inf entry of ``nll``
    counts as an NLL of +inf, so that expert's weight becomes exactly 0 for this step
    (it may come back later through the switching pool, with predictive weight at most
    pi_t / K). If no expert has a finite likelihood (all weights would vanish) the
    weights are left unchanged; the step counter still advances (pi_t follows time).

    Args:
        n_models: number of experts K (>= 1).
        theta: prior probability of the "may still switch" chain, in (0, 1); the
            Alrao paper uses 0.999.
        device: device of the buffers.
        dtype: floating dtype of the weights (default: torch's default dtype).

    Example:
        >>> sw = Switch(3)
        >>> sw.update(torch.tensor([0.5, 2.0, 1.0]))
        >>> sw.posterior.argmax().item()
        0
    """

    logw: Tensor
    t: Tensor
    _transition: Tensor

    def __init__(
        self,
        n_models: int,
        theta: float = 0.999,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1:
            raise ValueError(f"n_models must be an integer >= 1, but got {n_models=}.")
        if not 0.0 < float(theta) < 1.0:
            raise ValueError(f"theta must lie strictly between 0 and 1, but got {theta=}.")
        self.n_models = n_models
        self.theta = float(theta)
        k = n_models
        dtype = dtype or torch.get_default_dtype()
        # Restart law of the pool over the flattened states [(1, a) .. (K, a), (1, b) .. (K, b)],
        # computed in float64 and then cast, so a float64 switch is exact to float64.
        f64 = torch.float64
        restart = torch.cat(
            [
                torch.full((k,), self.theta / k, dtype=f64),
                torch.full((k,), (1.0 - self.theta) / k, dtype=f64),
            ]
        )
        row_a = torch.cat([torch.ones(k, dtype=f64), torch.zeros(k, dtype=f64)])
        # w_new = w + pi_t * (w @ B) with B = outer(row_a, restart) - diag(row_a).
        transition = torch.outer(row_a, restart) - torch.diag(row_a)
        logw = restart.log().view(2, k)
        self.register_buffer("logw", logw.to(device=device, dtype=dtype))
        self.register_buffer("t", torch.ones((), dtype=torch.long, device=device))
        self.register_buffer(
            "_transition", transition.to(device=device, dtype=dtype), persistent=False
        )

    @property
    def log_posterior(self) -> Tensor:
        """Log predictive weights of the experts for the next observation, shape [K]."""
        return torch.logsumexp(self.logw, dim=0)

    @property
    def posterior(self) -> Tensor:
        """Predictive weights of the experts for the next observation, shape [K]; sums to 1."""
        return self.log_posterior.exp()

    def update(self, nll: Tensor) -> None:
        """Condition on one observation (a mini-batch) and advance one step.

        About ten small kernels, no device read and no Python number that changes per step
        (so ``torch.compile`` traces it once): the switching rate pi_t = 1 / (t + 1) is
        computed from the step-counter buffer on the device. The mixing step is done on
        exp(log w - max) (the log-sum-exp shift, here a softmax over the 2K states); it
        conserves total mass, so no separate normalisation is needed. Under autocast the
        arithmetic stays in the buffers' dtype (no matmul, which autocast would downcast).

        Args:
            nll: shape [K], each expert's negative log-likelihood of the new
                observation (Alrao: the batch-mean log-loss of each head). Non-finite
                entries count as +inf. Gradients are not tracked.
        """
        logw = self.logw
        clean = torch.nan_to_num(nll.detach(), nan=math.inf, posinf=math.inf, neginf=math.inf)
        # p = w * p_k(x_t), normalised: one softmax over the 2K states does the
        # log-sum-exp shift. It is NaN everywhere iff every likelihood is 0.
        p = torch.softmax((logw - clean.to(logw.dtype)).view(-1, 1), dim=0)
        # Switching is linear and keeps the total mass: w <- w + pi_t * (w @ B), written as
        # a broadcast product and a sum over the 2K x 2K matrix B (tiny; no autocast).
        pi = self.t.add(1).to(logw.dtype).reciprocal()
        new = torch.addcmul(p.view(-1), (p * self._transition).sum(0), pi)
        new_logw = new.log_().view_as(logw)
        logw.copy_(torch.where(new_logw.isnan(), logw, new_logw))  # elementwise, in place
        self.t.add_(1)

    def forward(self, head_log_probs: Tensor, dim: int = -2) -> Tensor:
        """Switch-averaged log-probabilities ``log sum_k posterior_k * p_k``.

        Args:
            head_log_probs: per-expert log-probabilities with the expert axis at ``dim``
                (e.g. [..., K, C]).
            dim: the expert axis.

        Returns:
            The averaged log-probabilities, ``head_log_probs`` with ``dim`` reduced.
        """
        if dim < 0:
            dim += head_log_probs.dim()
        shape = [1] * head_log_probs.dim()
        shape[dim] = self.n_models
        logpost = self.log_posterior.to(head_log_probs.dtype).view(shape)
        return torch.logsumexp(head_log_probs + logpost, dim=dim)

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, theta={self.theta}"


def benchmark_update(n_models: int = 10, n: int = 2000) -> float:
    """Median wall time of one :meth:`Switch.update` on CPU, in microseconds.

    Args:
        n_models: number of experts K.
        n: number of timed updates (after a short warm-up).

    Returns:
        The median time per update in µs.
    """
    switch = Switch(n_models)
    gen = torch.Generator().manual_seed(0)
    nlls = torch.rand(n + 50, n_models, generator=gen) * 3.0
    for row in nlls[:50]:
        switch.update(row)
    times = []
    for row in nlls[50:]:
        start = time.perf_counter()
        switch.update(row)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6
