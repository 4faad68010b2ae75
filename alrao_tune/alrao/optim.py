"""AlraoSGD and AlraoAdam: torch optimizers with one learning rate per feature.

Each parameter ``p`` carries, in ``optimizer.state[p]``, a vector ``feature_lr`` of rates
``eta_f`` (one per feature, drawn log-uniformly by :func:`~alrao_tune.alrao.lr.feature_lrs`)
and the int ``feature_dim`` along which they vary. The update of element ``i`` of feature
``f(i)`` is torch's SGD / Adam update with step size ``lr * eta_f(i)``, where the group ``lr``
(default 1.0) is a global multiplier that ``torch.optim.lr_scheduler`` schedulers drive.

Departures from the paper (Blier, Wolinski & Ollivier, arXiv:1810.01322) and from the
authors' 2018 code: momentum, Nesterov, dampening and weight decay follow torch semantics
(the original code used its own momentum variant); every layer type is per feature (the
original used per-weight rates for some layers); rates are stored as per-feature vectors and
broadcast, never as parameter-shaped copies; the state round-trips through ``state_dict``
(rates come from the loaded state, not from re-sampling).
"""

from alrao_tune.alrao.adam import AlraoAdam
from alrao_tune.alrao.sgd import AlraoSGD

__all__ = ["AlraoAdam", "AlraoSGD"]
