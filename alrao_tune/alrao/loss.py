"""Alrao's training loss for all K heads as one autograd function (the fast path).

For features ``f_i`` (N rows), head ``k`` with weight ``W_k`` [C, D] and bias ``b_k``, the
per-head log-likelihood ``l_ik = log p_k(y_i | f_i)`` (log-softmax for classification, a
unit-variance Gaussian for regression) gives

    nll_k = -mean_i l_ik                                    (what the switch sees)
    L     = -mean_i log sum_k post_k exp(l_ik)              (averaged model; f only)
          + sum_k nll_k                                     (each head; W_k, b_k only)

with ``post`` the switch posterior renormalised over the heads whose ``nll_k`` is finite (the
others get weight 0 and no gradient). Writing ``z_ik = W_k f_i + b_k``, ``g`` the incoming
gradient and ``e_ik = softmax(z_ik) - onehot(y_i)`` (classification) or ``z_ik - y_i``
(regression), the gradients are

    dL/dW_k = g / N * sum_i e_ik f_i^T,    dL/db_k = g / N * sum_i e_ik     (finite heads)
    dL/df_i = g / N * sum_k r_ik W_k^T e_ik,   r_ik = post_k exp(l_ik) / sum_j post_j exp(l_ij)

(``r`` is the responsibility of head k for example i). :class:`AlraoModel` computes exactly
this; :func:`reference_loss` spells it out with autograd on separate, detached copies, and a
test checks that the two agree. The fused form runs one matmul forward and two backward, and
about twenty small kernels in all, instead of a graph of some forty autograd nodes.

Mixed precision: under ``torch.autocast`` the head matmul runs in the autocast dtype; the
log-softmax, the losses and every reduction run in float32 (float64 stays float64).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["HeadsLoss", "fused_heads_loss", "reference_loss"]

_LOG_2PI = math.log(2.0 * math.pi)


class HeadsLoss(NamedTuple):
    """Outputs of :func:`fused_heads_loss` (only ``loss`` carries gradients).

    Attributes:
        loss: scalar ``L`` above.
        model_loss: averaged model's mean NLL (detached).
        head_nll: [K] batch-mean NLL of each head (detached).
        head_out: [N, K, C] per-head log-probabilities or means (detached).
        log_post: [K] the log posterior used (bad heads at ``-inf``), detached.
    """

    loss: Tensor
    model_loss: Tensor
    head_nll: Tensor
    head_out: Tensor
    log_post: Tensor


def _log_likelihood(out: Tensor, target: Tensor, classification: bool) -> Tensor:
    """``l_ik`` [N, K] from per-head outputs [N, K, C]."""
    if classification:
        k = out.shape[1]
        return out.gather(-1, target.view(-1, 1, 1).expand(-1, k, 1)).squeeze(-1)
    sq = (out - target.unsqueeze(1).to(out.dtype)).square().sum(-1)
    return -(0.5 * sq + 0.5 * out.shape[-1] * _LOG_2PI)


def finite_heads_posterior(log_post: Tensor, bad: Tensor) -> Tensor:
    """``log_post`` with the ``bad`` heads at ``-inf`` and the rest renormalised.

    If every head is bad, the plain posterior is returned (the pre-classifier then gets no
    gradient, see :func:`fused_heads_loss`).
    """
    masked = log_post.masked_fill(bad, -math.inf)
    norm = torch.logsumexp(masked, dim=0)
    return torch.where(torch.isfinite(norm), masked - norm, log_post)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _HeadsLoss(torch.autograd.Function):
    """Forward: the loss of the module docstring. Backward: its closed-form gradients."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, bias: Tensor, target: Tensor,
                log_post: Tensor, classification: bool) -> tuple[Tensor, ...]:  # fmt: skip
        k, c, d = weight.shape
        z = torch.addmm(bias.reshape(k * c), features, weight.reshape(k * c, d).t())
        z = z.view(-1, k, c).to(_compute_dtype(z.dtype))
        out = z.log_softmax(-1) if classification else z
        ll = _log_likelihood(out, target, classification)  # [N, K]
        head_nll = -ll.mean(0)
        bad = ~torch.isfinite(head_nll)
        post = finite_heads_posterior(log_post.to(ll.dtype), bad)
        s = post + ll.masked_fill(bad, 0.0)  # log of post_k p_k(y_i): [N, K]
        lse = torch.logsumexp(s, dim=-1)
        model_loss = -lse.mean()
        loss = model_loss + head_nll.masked_fill(bad, 0.0).sum()
        ctx.classification = classification
        ctx.save_for_backward(features, weight, out, target, bad, s, lse)
        ctx.mark_non_differentiable(model_loss, head_nll, out, post)
        return loss, model_loss, head_nll, out, post

    @staticmethod
    def backward(ctx: Any, g: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        features, weight, out, target, bad, s, lse = ctx.saved_tensors
        n, k, c = out.shape
        if ctx.classification:  # e = softmax - onehot
            e = out.exp()
            index = target.view(-1, 1, 1).expand(-1, k, 1)
            e.scatter_add_(-1, index, e.new_full((1, 1, 1), -1.0).expand(n, k, 1))
        else:
            e = out - target.unsqueeze(1).to(out.dtype)
        e = torch.where(bad.view(1, k, 1), 0.0, e) * (g / n)  # bad heads: no gradient
        grad_f = grad_w = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            flat = e.reshape(n, k * c)
            grad_w = (flat.t() @ features.to(e.dtype)).view(k, c, -1).to(weight.dtype)
            grad_b = flat.sum(0).view(k, c).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            resp = (s - lse.unsqueeze(-1)).exp()  # r_ik
            w = torch.where(bad.view(k, 1, 1), 0.0, weight).reshape(k * c, -1)
            mix = (e * resp.unsqueeze(-1)).reshape(n, k * c)
            grad_f = (mix @ w.to(e.dtype)).to(features.dtype)
        return grad_f, grad_w, grad_b, None, None, None


def fused_heads_loss(features: Tensor, weight: Tensor, bias: Tensor, target: Tensor,
                     log_post: Tensor, classification: bool) -> HeadsLoss:  # fmt: skip
    """The Alrao loss of all heads on features [N, D] (module docstring), fused.

    Args:
        features: [N, D] pre-classifier output.
        weight: [K, C, D] head weights.
        bias: [K, C] head biases.
        target: [N] class indices, or [N, C] regression targets.
        log_post: [K] the switch's log posterior before this batch.
        classification: log-softmax heads (else unit-variance Gaussian means).
    """
    if not classification and target.dim() == 1:  # [N] targets of a one-output regression
        target = target.unsqueeze(-1)
    return HeadsLoss(*_HeadsLoss.apply(features, weight, bias, target, log_post, classification))


def reference_loss(features: Tensor, weight: Tensor, bias: Tensor, target: Tensor,
                   log_post: Tensor, classification: bool) -> Tensor:  # fmt: skip
    """The same scalar ``L`` with plain autograd: detached weights for the averaged model,
    detached features for the heads (the readable reference for :func:`fused_heads_loss`;
    unlike it, a head with non-finite weights makes the features' gradient NaN)."""
    if not classification and target.dim() == 1:
        target = target.unsqueeze(-1)
    def head_ll(f: Tensor, w: Tensor, b: Tensor) -> Tensor:
        z = (f @ w.flatten(0, 1).t() + b.flatten()).unflatten(-1, w.shape[:2])
        z = z.to(_compute_dtype(z.dtype))
        return _log_likelihood(z.log_softmax(-1) if classification else z, target,
                               classification)  # fmt: skip

    own = head_ll(features.detach(), weight, bias)
    head_nll = -own.mean(0)
    bad = ~torch.isfinite(head_nll.detach())
    mix = head_ll(features, weight.detach(), bias.detach()).masked_fill(bad, 0.0)
    post = finite_heads_posterior(log_post.to(mix.dtype), bad)
    model_loss = -torch.logsumexp(post + mix, dim=-1).mean()
    return model_loss + head_nll.masked_fill(bad, 0.0).sum()
