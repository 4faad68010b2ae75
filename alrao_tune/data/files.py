"""Datasets read from local files: CIFAR-10 (with its augmentation) and character-level text.

CIFAR-10 format (https://www.cs.toronto.edu/~kriz/cifar.html): files ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``, each a pickled dict with ``b"data"`` (``N x 3072``
uint8, channel-major 32x32 images) and ``b"labels"`` (``N`` ints in 0..9).

SECURITY: the batch files are pickles, and unpickling can run code. They are read with a
restricted unpickler that only rebuilds dicts, lists, numbers, bytes and numpy arrays
(any other global is refused), but still only point this at a trusted copy.
"""

from __future__ import annotations

import codecs
import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from alrao_tune.data.splits import DatasetError, DatasetSplits, check_int, holdout, standardize

CIFAR10_ENV = "ALRAO_TUNE_CIFAR10"


# --------------------------------------------------------------------------- cifar10
@functools.cache
def _safe_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle may reference (numpy 1.x and 2.x names)."""
    arr = np.zeros(1, np.uint8)
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 with protocol < 3
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = arr.__reduce__()[0]
        table[(f"{core}.multiarray", "scalar")] = np.int64(0).__reduce__()[0]
        table[(f"{core}.numeric", "_frombuffer")] = arr.__reduce_ex__(5)[0]
    return table


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :func:`_safe_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _safe_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return allowed[(module, name)]


def read_cifar_batch(file: Path) -> tuple[Tensor, Tensor]:
    """Read one batch file.

    Args:
        file: a ``data_batch_*`` or ``test_batch`` file.

    Returns:
        uint8 images ``[N, 3, 32, 32]`` and long labels ``[N]``.

    Raises:
        DatasetError: the file is not a safe pickle of a dict with valid data and labels.
    """
    try:
        with file.open("rb") as f:
            batch = SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"malformed CIFAR-10 batch file {str(file)!r}: {exc}") from exc
    if not isinstance(batch, dict):
        batch = {}
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"malformed CIFAR-10 batch file {str(file)!r}: expected a dict "
                           f"with b'data' (N x 3072 uint8) and b'labels'.")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DatasetError(f"malformed CIFAR-10 batch file {str(file)!r}: b'data' has shape "
                           f"{data.shape} and b'labels' {labels.shape}; expected (N, 3072), (N,).")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"malformed CIFAR-10 batch file {str(file)!r}: labels not in 0..9.")
    images = torch.from_numpy(data.astype(np.uint8)).view(-1, 3, 32, 32)
    return images, torch.from_numpy(labels.astype(np.int64))


def find_cifar10_dir(path: str | Path | None) -> Path:
    """The batch directory: ``path``, else ``$ALRAO_TUNE_CIFAR10`` (or their
    ``cifar-10-batches-py`` subfolder)."""
    if path is None:
        path = os.environ.get(CIFAR10_ENV)
    if path is None:
        raise DatasetError(f"dataset 'cifar10' needs option 'path' (or ${CIFAR10_ENV}): a "
                           f"local directory with data_batch_1..5 and test_batch.")
    folder = Path(path).expanduser()
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DatasetError(f"CIFAR-10 directory not found: {str(folder)!r} (option 'path').")
    return folder


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop (zero padding ``padding``, same size) and horizontal flip of a batch.

    Vectorised: one gather for the whole batch, no per-example loop. Random draws come from
    ``generator`` on its own device, so a seeded generator gives the same result on every
    run. Inputs are normalised, so zero padding pads with the per-channel train mean.

    Args:
        x: images ``[N, C, H, W]``.
        generator: source of the crop offsets and flips.
        padding: pixels of padding on each side.

    Returns:
        augmented images, same shape, dtype and device as ``x``.
    """
    n, c, h, w = x.shape
    dev = generator.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    oy, ox, flip = offsets[0].to(x.device), offsets[1].to(x.device), flip.to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    base = torch.arange(w, device=x.device)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - base, base)
    padded = F.pad(x, (padding, padding, padding, padding))
    n_idx = torch.arange(n, device=x.device)[:, None, None, None]
    c_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def build_cifar10(
    seed: int, *, path: str | Path | None, n_val: int, subset: int | None, augment: bool
) -> DatasetSplits:
    """CIFAR-10 splits (options as in :func:`alrao_tune.data.load_cifar10`).

    Any ``data_batch_*`` files present are concatenated (``test_batch`` is required). The
    last ``n_val`` examples of a ``seed``-permuted training set are held out (clipped to
    below half of it); ``subset`` then keeps the first ``subset`` remaining train examples.
    Pixels are scaled to [0, 1] and normalised with the per-channel train mean/std (the
    paper's normalisation); ``augment`` sets :func:`random_crop_flip`.
    """
    folder = find_cifar10_dir(path)
    files = sorted(folder.glob("data_batch_*"), key=lambda f: (len(f.name), f.name))
    if not files:
        raise DatasetError(f"no CIFAR-10 training batches (data_batch_*) in {str(folder)!r}.")
    if not (folder / "test_batch").is_file():
        raise DatasetError(f"no CIFAR-10 test_batch in {str(folder)!r}.")
    if not isinstance(augment, bool):
        raise DatasetError(f"option 'augment' must be true or false, but got {augment!r}.")
    parts = [read_cifar_batch(f) for f in files]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    x_test, y_test = read_cifar_batch(folder / "test_batch")
    n_val = min(check_int("n_val", n_val), (len(x) - 1) // 2)  # keep validation < 50%
    if n_val < 1:
        raise DatasetError(f"CIFAR-10 in {str(folder)!r} has {len(x)} training images; "
                           f"at least 3 are needed to hold out a validation set.")
    tr, va = holdout(len(x), n_val, seed)
    if subset is not None:
        tr = tr[: check_int("subset", subset)]
    x_tr, x_va, x_te = standardize(x[tr] / 255.0, x[va] / 255.0, x_test / 255.0, dims=(0, 2, 3))
    return DatasetSplits("cifar10", "classification", "image", (3, 32, 32), 10,
                         x_tr, y[tr], x_va, y[va], x_te, y_test,
                         augment=random_crop_flip if augment else None)


# --------------------------------------------------------------------------- text
def _windows(stream: Tensor, seq_len: int, split: str) -> tuple[Tensor, Tensor]:
    m = (len(stream) - 1) // seq_len
    if m < 1:
        raise DatasetError(
            f"text too short: the {split} split has {len(stream)} characters, fewer than "
            f"seq_len + 1 = {seq_len + 1}; use a longer file or a smaller 'seq_len'."
        )
    return stream[: m * seq_len].view(m, seq_len), stream[1 : m * seq_len + 1].view(m, seq_len)


def build_text(*, path: str | Path | None, seq_len: int, encoding: str) -> DatasetSplits:
    """Character-level next-character prediction on a local text file.

    The vocabulary is the sorted set of the file's characters; the character stream is
    split 80/10/10 (contiguous) into train/val/test, each cut into non-overlapping windows
    of ``seq_len``: ``x`` = characters ``[t, t + T)``, ``y`` = characters ``[t + 1, t + T]``.
    """
    seq_len = check_int("seq_len", seq_len)
    if path is None:
        raise DatasetError("dataset 'text' needs option 'path' (a local text file).")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"text file not found: {str(file)!r} (option 'path').")
    try:
        text = file.read_text(encoding=encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise DatasetError(f"cannot decode {str(file)!r} as {encoding!r} "
                           f"(option 'encoding'): {exc}") from exc
    if not text:
        raise DatasetError(f"text file {str(file)!r} is empty.")
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.from_numpy(np.fromiter((index[c] for c in text), np.int64, len(text)))
    a, b = int(0.8 * len(ids)), int(0.9 * len(ids))
    splits = [_windows(s, seq_len, n) for s, n in
              ((ids[:a], "train"), (ids[a:b], "val"), (ids[b:], "test"))]
    return DatasetSplits("text", "classification", "tokens", (seq_len,), len(vocab),
                         *splits[0], *splits[1], *splits[2], vocab_size=len(vocab))
