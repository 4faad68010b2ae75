"""AlraoModel: a pre-classifier, K output heads and the switch that averages them.

Alrao (Blier, Wolinski & Ollivier, "Learning with random learning rates",
arXiv:1810.01322) trains

* the pre-classifier (every layer but the last) on the loss of the switch-averaged
  model ``p(y|x) = sum_k posterior_k * p_k(y|x)``, and
* each head k (a clone of the last layer, learning rate eta_k) on its own loss only,

and updates the switch posterior (van Erven, Grünwald & de Rooij, NeurIPS 2007) with
each head's log-loss on the current mini-batch. :meth:`AlraoModel.training_loss` does
all three from one forward pass: the returned ``loss`` is

    L = mean_i -log sum_k post_k p_k(y_i | f(x_i); sg(W_k))      (pre-classifier only)
      + sum_k mean_i -log p_k(y_i | sg(f(x_i)); W_k)              (head k only)

where ``sg`` is stop-gradient, so one ``backward`` gives each part exactly its gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from alrao_tune.alrao.convert import OutputFn, select_features, strip_classifier
from alrao_tune.alrao.heads import TASKS, AlraoHeads
from alrao_tune.alrao.loss import fused_heads_loss
from alrao_tune.alrao.switch import Switch

__all__ = ["AlraoLoss", "AlraoModel"]


class AlraoLoss(NamedTuple):
    """Result of :meth:`AlraoModel.training_loss` (no host synchronisation happens).

    Attributes:
        loss: scalar to call ``backward()`` on (averaged-model loss + sum of head losses).
        model_loss: detached scalar, mean NLL of the switch-averaged model on the batch
            (pre-update posterior): the training loss to log and compare across methods.
        head_losses: detached [K], each head's batch-mean NLL (what the switch saw).
        output: detached averaged prediction [..., C]: log-probabilities for
            classification, the posterior-weighted mean for regression; ``None`` when
            ``with_output=False``.
    """

    loss: Tensor
    model_loss: Tensor
    head_losses: Tensor
    output: Tensor | None


class AlraoModel(nn.Module):
    """Pre-classifier + K heads (``AlraoHeads``) + switch model averaging (``Switch``).

    Args:
        preclassifier: module mapping the input to features of shape [..., D].
        in_features: D.
        n_classes: number of classes C (regression: output dimension).
        n_heads: number of heads K.
        task: ``"classification"`` or ``"regression"`` (unit-variance Gaussian heads).
        theta: switch prior parameter in (0, 1).
        output: optional callable mapping the pre-classifier's raw output to the features;
            default :func:`~alrao_tune.alrao.convert.select_features` (a tensor, ``.logits``
            of a ``ModelOutput`` or dict, or the first element of a tuple).
        head_interval: ``(lr_min, lr_max)`` of the heads when it should differ from the
            optimizer's (the body's) interval; None: the same interval as the body.

    Inputs: ``x`` is passed to the pre-classifier as is, or as keyword arguments when it is
    a mapping (``{"input_ids": ..., "attention_mask": ...}`` for Hugging Face models).

    NaN safety: a head whose batch loss is not finite gets zero weight in the averaged
    model for that batch (the posterior is renormalised over the finite heads) and no
    gradient at all, so no NaN reaches the pre-classifier's gradient; the switch then
    drops its posterior to ~0.
    """

    def __init__(
        self,
        preclassifier: nn.Module,
        in_features: int,
        n_classes: int,
        n_heads: int = 10,
        task: str = "classification",
        theta: float = 0.999,
        output: OutputFn | None = None,
        head_interval: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be an integer >= 1, but got {n_heads=}.")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, but got {task=}.")
        self.task = task
        self.preclassifier = preclassifier
        self.output = output
        self.replaced: str | None = None  # set by from_model: the classifier it replaced
        param = next(preclassifier.parameters(), None)
        factory = {} if param is None else {"device": param.device, "dtype": param.dtype}
        self.heads = AlraoHeads(in_features, n_classes, n_heads, task, interval=head_interval,
                                **factory)
        self.switch = Switch(n_heads, theta, device=factory.get("device"))

    @property
    def n_heads(self) -> int:
        """Number of heads K."""
        return self.heads.n_heads

    @property
    def posterior(self) -> Tensor:
        """Switch posterior over the heads (predictive weights), shape [K]."""
        return self.switch.posterior

    @property
    def log_posterior(self) -> Tensor:
        """Log of :attr:`posterior`, shape [K]."""
        return self.switch.log_posterior

    def forward(self, x: Tensor) -> Tensor:
        """Switch-averaged prediction: log-probabilities [..., C] or the mean [..., C].

        Classification: ``log sum_k post_k exp(head_logp_k)``; regression:
        ``sum_k post_k mu_k``. Heads with non-finite outputs on an example are left out
        of that example's average (posterior renormalised over the others).
        """
        head_out = self.heads(self.features(x))
        return self._average(head_out, self.switch.log_posterior)

    def features(self, x: Any) -> Tensor:
        """The pre-classifier's features [..., D] of input ``x`` (a tensor or a mapping)."""
        out = self.preclassifier(**x) if isinstance(x, Mapping) else self.preclassifier(x)
        return select_features(out) if self.output is None else self.output(out)

    def training_loss(self, x: Tensor, y: Tensor, *, with_output: bool = True) -> AlraoLoss:
        """Loss of one training step; advances the switch by one step.

        Computes the features once and all heads in one batched op. Per-head NLL is
        the batch mean over examples (as in the authors' code): the switch treats each
        mini-batch as one observation with log-likelihood ``-mean NLL``. The update
        uses the heads' current (pre-optimizer-step) predictions, as Algorithm 1
        requires; the averaged-model loss uses the posterior from before this batch.

        Args:
            x: input batch.
            y: targets: class indices with the features' leading shape (e.g. [N] or
                [B, T]); regression: [..., C].
            with_output: also return the averaged prediction (for accuracy).

        Returns:
            :class:`AlraoLoss`.
        """
        feats = self.features(x)
        lead = feats.shape[:-1]
        flat = feats.reshape(-1, feats.shape[-1])
        target = y.reshape(flat.shape[0], *y.shape[len(lead) :])
        heads, classification = self.heads, self.task == "classification"
        # One autograd node: the heads learn from their own losses, the features from the
        # averaged model's, with the posterior from before this batch (see loss.py).
        res = fused_heads_loss(flat, heads.weight, heads.bias, target, self.switch.log_posterior,
                               classification)  # fmt: skip
        # Advance the switch with the pre-update per-head losses.
        self.switch.update(res.head_nll)
        output = None
        if with_output:
            with torch.no_grad():
                output = self._average(res.head_out, res.log_post).reshape(*lead, -1)
        return AlraoLoss(res.loss, res.model_loss, res.head_nll, output)

    def average(self, head_out: Tensor) -> Tensor:
        """The switch-averaged prediction from the heads' outputs ``[..., K, C]`` (what
        :meth:`forward` returns from the same features), non-finite heads left out."""
        return self._average(head_out, self.switch.log_posterior)

    def _average(self, head_out: Tensor, logpost: Tensor) -> Tensor:
        """Average head predictions [..., K, C] with log weights [K], per example skipping
        heads whose output is not finite."""
        logpost = logpost.to(head_out.dtype)
        good = torch.isfinite(head_out).all(-1)  # [..., K]
        logw = torch.where(good, logpost, -math.inf)
        logw = logw - torch.logsumexp(logw, dim=-1, keepdim=True)
        head_out = torch.where(good.unsqueeze(-1), head_out, 0.0)
        if self.task == "classification":
            return torch.logsumexp(logw.unsqueeze(-1) + head_out, dim=-2)
        return (logw.exp().unsqueeze(-1) * head_out).sum(-2)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        n_heads: int = 10,
        task: str = "classification",
        theta: float = 0.999,
        classifier: str | None = None,
        output: OutputFn | None = None,
    ) -> AlraoModel:
        """Turn a model whose forward ends with an ``nn.Linear`` into an :class:`AlraoModel`.

        The model is deep-copied (the original is untouched); in the copy, the
        classifier submodule is replaced by ``nn.Identity`` and the copy becomes the
        pre-classifier. The K heads take the classifier's ``in_features`` /
        ``out_features``, device and dtype and are initialised from scratch, each like a
        fresh ``nn.Linear`` (the original classifier's weights are not reused: Alrao's
        heads start independent). ``replaced`` holds the classifier's path (also logged at
        INFO level on the ``alrao_tune.alrao`` logger). Works for models returning a tensor,
        a Hugging Face ``ModelOutput``, a dict or a tuple (see :mod:`.convert`).

        Args:
            model: the network; its ``forward`` must end with the classifier.
            n_heads: number of heads K.
            task: ``"classification"`` or ``"regression"``.
            theta: switch prior parameter.
            classifier: dotted path of the final ``nn.Linear`` (e.g. ``"fc"``,
                ``"head.2"``), or of a container ending with it; default: the common
                attribute names (``classifier``, ``score``, ``head``, ``fc``, ...), then the
                last ``nn.Linear`` in ``named_modules()``.
            output: optional callable picking the features out of the model's output.

        Raises:
            ValueError: no ``nn.Linear`` is found, or ``classifier`` names a module that
                does not exist or holds no ``nn.Linear``.
        """
        body, name, linear = strip_classifier(model, classifier)
        alrao = cls(body, linear.in_features, linear.out_features, n_heads, task, theta, output)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        alrao.heads.to(**factory)
        alrao.switch.to(device=factory["device"])
        alrao.replaced = name
        return alrao

    def extra_repr(self) -> str:
        return f"task={self.task!r}" + (f", replaced={self.replaced!r}" if self.replaced else "")
