"""Datasets as in-memory tensors; none needs internet.

``load_dataset(name, seed=..., **options)`` returns a :class:`DatasetSplits` with train /
validation / test tensors already standardised with train statistics:

* ``mnist1d``: MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (Greydanus,
  2020), cached on disk; validation is held out of the generated training set.
* ``digits``: scikit-learn's bundled 8x8 digits as ``[1, 8, 8]`` images.
* ``cifar10``: CIFAR-10 read from a local copy in its python-pickle batch format.
* ``text``: next-character prediction on a local text file.
* ``synthetic`` (regression, random teacher MLP) and ``blobs`` (Gaussian clusters).

``seed`` seeds every random choice the loader makes (which examples are held out,
generated synthetic data); the same name, seed and options give identical tensors.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import random
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alrao_tune import schema
from alrao_tune.data.files import build_cifar10, build_text
from alrao_tune.data.splits import (
    DatasetError,
    DatasetSplits,
    check_float,
    check_int,
    holdout,
    standardize,
)

CACHE_ENV = "ALRAO_TUNE_CACHE"
_MNIST1D_TRAIN_SPLIT = 0.8  # mnist1d's default train/test split of the generated samples


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ALRAO_TUNE_CACHE``, else ``~/.cache/alrao_tune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alrao_tune"


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file and ``os.replace`` (concurrency safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- mnist1d
def _mnist1d_arrays(num_samples: int, generation_seed: int, cache: Path) -> dict[str, np.ndarray]:
    """Generated MNIST-1D arrays (x, y, x_test, y_test), read from or written to the cache."""
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib)

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=generation_seed)
    args.pop("url", None)
    args["version"] = importlib.metadata.version("mnist1d")  # only for the cache key
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"mnist1d-{num_samples}-{generation_seed}-{key}.npz"
    names = ("x", "y", "x_test", "y_test")
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in names}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset seeds the global RNGs; leave them as they were
        made = make_dataset(_ObjectView({k: v for k, v in args.items() if k != "version"}))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {k: np.asarray(made[k]) for k in names}
    try:
        _atomic_save_npz(path, arrays)
    except OSError as exc:
        warnings.warn(f"could not cache MNIST-1D at {path}: {exc}", stacklevel=3)
    return arrays


class _ObjectView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__ = d


def _mnist1d_num_samples(n_pool: int, n_test: int) -> int:
    """Smallest multiple of 10 whose train/test split holds ``n_pool`` and ``n_test``."""
    split = _MNIST1D_TRAIN_SPLIT
    num = 10 * max(1, math.floor(max(n_pool / split, n_test / (1 - split)) / 10) - 1)
    while int(num * split) < n_pool or num - int(num * split) < n_test:
        num += 10
    return num


def load_mnist1d(
    seed: int, cache_dir: str | Path | None, *, n_train: int = 3000, n_val: int = 1000,
    n_test: int = 1000, generation_seed: int = 42,
) -> DatasetSplits:
    """MNIST-1D; the defaults generate exactly ``make_dataset``'s default 5,000 samples.

    ``make_dataset`` is called with its default arguments except ``num_samples`` (the
    smallest count whose 80/20 split holds ``n_train + n_val`` and ``n_test``) and
    ``seed = generation_seed``. ``n_val`` examples of the generated training set are held
    out (chosen by ``seed``); the test set is the first ``n_test`` generated test examples.
    Inputs are standardised with the scalar mean/std of the train split.
    """
    n_train, n_val = check_int("n_train", n_train), check_int("n_val", n_val)
    n_test = check_int("n_test", n_test)
    generation_seed = check_int("generation_seed", generation_seed, 0)
    num = _mnist1d_num_samples(n_train + n_val, n_test)
    arrays = _mnist1d_arrays(num, generation_seed, default_cache_dir(cache_dir))
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]).long()
    pool = holdout(len(x), len(x) - n_train - n_val, seed)[0]  # drop unused examples
    tr, va = pool[:n_train], pool[n_train:]
    x_test = torch.from_numpy(arrays["x_test"][:n_test])
    y_test = torch.from_numpy(arrays["y_test"][:n_test]).long()
    x_tr, x_va, x_te = standardize(x[tr], x[va], x_test, dims=(0, 1))
    return DatasetSplits("mnist1d", "classification", "vector", (x.shape[1],), 10,
                         x_tr, y[tr], x_va, y[va], x_te, y_test)


# --------------------------------------------------------------------------- digits
def load_digits(seed: int, cache_dir: str | Path | None) -> DatasetSplits:
    """sklearn's 1,797 bundled 8x8 digits; stratified 60/20/20 split seeded by ``seed``.

    Pixels are scaled to [0, 1] and standardised with the scalar train mean/std.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    idx = np.arange(len(y))
    rest, te = train_test_split(idx, test_size=0.2, stratify=y, random_state=seed)
    tr, va = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=seed)
    xt = torch.from_numpy(x / 16.0).reshape(-1, 1, 8, 8)
    yt = torch.from_numpy(y).long()
    x_tr, x_va, x_te = standardize(xt[tr], xt[va], xt[te], dims=(0, 1, 2, 3))
    return DatasetSplits("digits", "classification", "image", (1, 8, 8), 10,
                         x_tr, yt[tr], x_va, yt[va], x_te, yt[te])


# --------------------------------------------------------------------------- cifar10
def load_cifar10(
    seed: int, cache_dir: str | Path | None, *, path: str | Path | None = None,
    n_val: int = 5000, subset: int | None = None, augment: bool = True,
) -> DatasetSplits:
    """CIFAR-10 from a trusted local copy (python-pickle batches); see :mod:`alrao_tune.data.files`.

    ``path`` (or ``$ALRAO_TUNE_CIFAR10``) is the batch directory or its parent; ``n_val``
    training examples are held out, ``subset`` keeps the first train examples, ``augment``
    sets random crop (padding 4) + horizontal flip.
    """
    return build_cifar10(seed, path=path, n_val=n_val, subset=subset, augment=augment)


# --------------------------------------------------------------------------- text
def load_text(
    seed: int, cache_dir: str | Path | None, *, path: str | Path | None = None,
    seq_len: int = 32, encoding: str = "utf-8",
) -> DatasetSplits:
    """Next-character prediction on a local text file; see :mod:`alrao_tune.data.files`.

    Vocabulary = the file's characters; the stream is split 80/10/10 into train/val/test,
    each cut into non-overlapping windows: ``x`` = ``seq_len`` characters, ``y`` = the next.
    """
    return build_text(path=path, seq_len=seq_len, encoding=encoding)


# --------------------------------------------------------------------------- synthetic
def load_synthetic(
    seed: int, cache_dir: str | Path | None, *, n_train: int = 2000, n_val: int = 500,
    n_test: int = 500, n_features: int = 20, n_outputs: int = 1, noise: float = 0.1,
    hidden: int = 32,
) -> DatasetSplits:
    """Regression: ``y = f(x) + noise * eps`` with ``x, eps ~ N(0, I)`` and a random teacher.

    The teacher is a one-hidden-layer tanh MLP with ``hidden`` units, scaled so that ``f(x)``
    has unit variance per output on the train split; the noise-free best MSE is ``noise**2``.
    """
    sizes = [check_int(k, v) for k, v in (("n_train", n_train), ("n_val", n_val),
                                          ("n_test", n_test))]
    n_features, n_outputs = check_int("n_features", n_features), check_int("n_outputs", n_outputs)
    hidden, noise = check_int("hidden", hidden), check_float("noise", noise)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), n_features, generator=g)
    w1 = torch.randn(n_features, hidden, generator=g) / math.sqrt(n_features)
    w2 = torch.randn(hidden, n_outputs, generator=g) / math.sqrt(hidden)
    f = torch.tanh(x @ w1 + 0.1 * torch.randn(hidden, generator=g)) @ w2
    f = f / f[: sizes[0]].std(dim=0, keepdim=True).clamp_min(1e-8)
    y = f + noise * torch.randn(f.shape, generator=g)
    xs, ys = x.split(sizes), y.split(sizes)
    return DatasetSplits("synthetic", "regression", "vector", (n_features,), n_outputs,
                         xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])


def load_blobs(
    seed: int, cache_dir: str | Path | None, *, n_train: int = 600, n_val: int = 200,
    n_test: int = 200, n_features: int = 10, n_classes: int = 3, cluster_std: float = 1.0,
) -> DatasetSplits:
    """Classification of Gaussian clusters: centres ``~ N(0, I)``, points ``centre + std * eps``.

    Classes are balanced; inputs are standardised per feature with train statistics.
    """
    sizes = [check_int(k, v) for k, v in (("n_train", n_train), ("n_val", n_val),
                                          ("n_test", n_test))]
    n_features = check_int("n_features", n_features)
    n_classes = check_int("n_classes", n_classes, 2)
    cluster_std = check_float("cluster_std", cluster_std)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, n_features, generator=g)
    y = torch.arange(sum(sizes)) % n_classes
    y = y[torch.randperm(len(y), generator=g)]
    x = centres[y] + cluster_std * torch.randn(len(y), n_features, generator=g)
    xs, ys = x.split(sizes), y.split(sizes)
    x_tr, x_va, x_te = standardize(*xs, dims=(0,))
    return DatasetSplits("blobs", "classification", "vector", (n_features,), n_classes,
                         x_tr, ys[0], x_va, ys[1], x_te, ys[2])


# --------------------------------------------------------------------------- public API
_LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "text": load_text,
    "synthetic": load_synthetic,
    "blobs": load_blobs,
}
DATASETS: tuple[str, ...] = schema.DATASETS  # the keys of _LOADERS, in this order


def dataset_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults (``None``: no default / optional)."""
    loader = _get_loader(name)
    params = inspect.signature(loader).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _get_loader(name: str) -> Callable[..., DatasetSplits]:
    if name not in _LOADERS:
        close = difflib.get_close_matches(str(name).lower(), DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = ", ".join(DATASETS)
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {known}.{hint}")
    return _LOADERS[name]


def load_dataset(
    name: str, *, seed: int = 0, cache_dir: str | Path | None = None, **options: Any
) -> DatasetSplits:
    """Load dataset ``name`` as tensors split into train / validation / test.

    Args:
        name: one of :data:`DATASETS`.
        seed: seeds the loader's random choices (held-out examples, generated data).
        cache_dir: where generated data is cached (``mnist1d``); defaults to
            ``$ALRAO_TUNE_CACHE`` or ``~/.cache/alrao_tune``.
        **options: dataset options, see :func:`dataset_options` and each loader.

    Returns:
        the splits, deterministic for a given ``(name, seed, options)``.

    Raises:
        DatasetError: unknown dataset or option, bad option value, missing or malformed file.
    """
    loader = _get_loader(name)
    allowed = dataset_options(name)
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(allowed) or "none"
            raise DatasetError(
                f"unknown option {key!r} for dataset {name!r}; allowed options: {listed}.{hint}"
            )
    return loader(check_int("seed", seed, 0), cache_dir, **options)


def iterate_batches(
    x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool,
    generator: torch.Generator | None = None, drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, y_batch)`` by slicing tensors (no DataLoader).

    Args:
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        batch_size: examples per batch.
        shuffle: draw a fresh permutation (from ``generator``, on its device) per call.
        generator: source of the permutation; the default torch RNG when ``None``.
        drop_last: skip the final batch when it is smaller than ``batch_size``.

    Yields:
        batches on the device of ``x``: views when not shuffled, gathered copies otherwise.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size=}.")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    order = None
    if shuffle:
        device = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]
            yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))
