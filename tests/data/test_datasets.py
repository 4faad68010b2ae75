"""Tests of alrao_tune.data: every dataset's shapes, dtypes, splits, determinism and errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from alrao_tune.data import (
    DATASETS,
    DataInfo,
    DatasetError,
    DatasetSplits,
    dataset_options,
    iterate_batches,
    load_dataset,
)
from alrao_tune.data import datasets as data_mod
from alrao_tune.data.files import random_crop_flip

SMALL_MNIST1D = {"n_train": 60, "n_val": 20, "n_test": 20}


def _write_cifar(folder: Path, n_per_batch: tuple[int, ...] = (20, 20), n_test: int = 10) -> None:
    """Write CIFAR-10 batches in the real format: pickled dict, b'data' N x 3072 uint8."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(len(n_per_batch))] + ["test_batch"]
    for name, n in zip(names, [*n_per_batch, n_test], strict=True):
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    _write_cifar(tmp_path / "cifar")
    return tmp_path / "cifar"


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


def _load(name: str, tmp_path: Path, seed: int = 0, **extra: object) -> DatasetSplits:
    """Small, offline versions of every dataset."""
    options: dict[str, object] = {
        "mnist1d": SMALL_MNIST1D, "digits": {}, "synthetic": {"n_train": 50},
        "blobs": {"n_train": 30, "n_val": 9, "n_test": 9},
    }.get(name, {})
    if name == "cifar10":
        if not (tmp_path / "cifar").exists():
            _write_cifar(tmp_path / "cifar")
        options = {"path": tmp_path / "cifar"}
    if name == "text":
        options = {"path": tmp_path / "t.txt", "seq_len": 8}
        (tmp_path / "t.txt").write_text("abcdefghij" * 30)
    return load_dataset(name, seed=seed, cache_dir=tmp_path / "cache", **{**options, **extra})


# --------------------------------------------------------------------------- all datasets
@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_is_consistent_and_deterministic(name: str, tmp_path: Path) -> None:
    a, b = _load(name, tmp_path), _load(name, tmp_path)
    for split in ("train", "val", "test"):
        xa, ya = getattr(a, f"x_{split}"), getattr(a, f"y_{split}")
        # same seed -> identical tensors
        assert torch.equal(xa, getattr(b, f"x_{split}"))
        assert torch.equal(ya, getattr(b, f"y_{split}"))
        assert tuple(xa.shape[1:]) == a.input_shape and len(xa) == len(ya) > 0
        assert xa.dtype == (torch.long if a.kind == "tokens" else torch.float32)
        if a.task == "classification":
            assert ya.dtype == torch.long and int(ya.min()) >= 0 and int(ya.max()) < a.n_outputs
        else:
            assert ya.dtype == torch.float32 and ya.shape == (len(xa), a.n_outputs)
    assert a.info == DataInfo(a.kind, a.input_shape, a.n_outputs, a.vocab_size, a.task)


@pytest.mark.parametrize("name", ["mnist1d", "digits", "cifar10", "synthetic", "blobs"])
def test_seed_changes_the_split(name: str, tmp_path: Path) -> None:
    a, b = _load(name, tmp_path, seed=0), _load(name, tmp_path, seed=1)
    assert not torch.equal(a.y_train, b.y_train) or not torch.equal(a.x_train, b.x_train)


@pytest.mark.parametrize("name", ["mnist1d", "digits", "cifar10", "blobs"])
def test_inputs_standardised_with_train_statistics(name: str, tmp_path: Path) -> None:
    d = _load(name, tmp_path)
    # train inputs have mean 0 and std 1 (per channel for CIFAR-10)
    dims = (0, 2, 3) if name == "cifar10" else tuple(range(d.x_train.dim()))
    if name == "blobs":
        dims = (0,)
    torch.testing.assert_close(d.x_train.mean(dims), torch.zeros_like(d.x_train.mean(dims)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(d.x_train.std(dims), torch.ones_like(d.x_train.std(dims)),
                               atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- mnist1d
def test_mnist1d_shapes_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np_state = np.random.get_state()[1].copy()
    d = _load("mnist1d", tmp_path)
    # make_dataset seeds numpy's global RNG; the loader restores it
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert d.sizes == {"train": 60, "val": 20, "test": 20}
    assert (d.kind, d.input_shape, d.n_outputs) == ("vector", (40,), 10)
    files = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    # the second load reads the cache: generation would fail now
    import mnist1d.data

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = _load("mnist1d", tmp_path)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)


def test_mnist1d_unreadable_cache_is_regenerated(tmp_path: Path) -> None:
    d = _load("mnist1d", tmp_path)
    (cache_file,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    cache_file.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        again = _load("mnist1d", tmp_path)
    assert torch.equal(again.x_train, d.x_train)
    assert np.load(cache_file)["x"].shape[1] == 40  # rewritten


def test_mnist1d_cache_env_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALRAO_TUNE_CACHE", str(tmp_path / "env_cache"))
    load_dataset("mnist1d", **SMALL_MNIST1D)
    assert list((tmp_path / "env_cache").glob("mnist1d-*.npz"))
    # default sizes generate exactly make_dataset's default 5000 samples (4000 train / 1000 test)
    assert data_mod._mnist1d_num_samples(3000 + 1000, 1000) == 5000
    assert dataset_options("mnist1d") == {"n_train": 3000, "n_val": 1000, "n_test": 1000,
                                          "generation_seed": 42}


# --------------------------------------------------------------------------- digits
def test_digits_split_is_stratified(tmp_path: Path) -> None:
    d = _load("digits", tmp_path)
    assert d.sizes == {"train": 1077, "val": 360, "test": 360}
    assert (d.kind, d.input_shape) == ("image", (1, 8, 8))
    # each class holds ~10% of every split
    for y in (d.y_train, d.y_val, d.y_test):
        assert (torch.bincount(y, minlength=10).float() / len(y) - 0.1).abs().max() < 0.02


# --------------------------------------------------------------------------- cifar10
def test_cifar10_reads_the_batch_format(cifar_dir: Path) -> None:
    d = load_dataset("cifar10", path=cifar_dir)
    # 40 training images: the default n_val=5000 is clipped below half of them
    assert d.sizes == {"train": 21, "val": 19, "test": 10}
    assert (d.kind, d.input_shape, d.augment) == ("image", (3, 32, 32), random_crop_flip)
    with (cifar_dir / "test_batch").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert d.y_test.tolist() == raw[b"labels"]
    # channel-major layout: each channel is an affine image of its 1024 raw bytes
    for c in range(3):
        a = d.x_test[:, c].reshape(-1).double().numpy()
        b = raw[b"data"][:, c * 1024 : (c + 1) * 1024].reshape(-1).astype(float)
        assert np.corrcoef(a, b)[0, 1] > 0.9999
    # files pickled by Python 2 / numpy 1.x name numpy.core.multiarray._reconstruct
    blob = (cifar_dir / "test_batch").read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in blob
    (cifar_dir / "test_batch").write_bytes(blob.replace(b"numpy._core", b"numpy.core"))
    assert torch.equal(load_dataset("cifar10", path=cifar_dir).x_test, d.x_test)
    small = load_dataset("cifar10", path=cifar_dir, n_val=8, subset=5, augment=False)
    assert small.sizes == {"train": 5, "val": 8, "test": 10} and small.augment is None


def test_cifar10_env_var_and_parent_dir(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALRAO_TUNE_CIFAR10", str(cifar_dir))
    assert load_dataset("cifar10").sizes["test"] == 10
    os.rename(cifar_dir, cifar_dir.parent / "cifar-10-batches-py")
    # the parent of the standard cifar-10-batches-py folder works too
    assert load_dataset("cifar10", path=cifar_dir.parent).sizes["test"] == 10


def test_cifar10_errors(tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALRAO_TUNE_CIFAR10", raising=False)
    with pytest.raises(DatasetError, match="needs option 'path'"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="CIFAR-10 directory not found"):
        load_dataset("cifar10", path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no CIFAR-10 training batches \(data_batch_\*\)"):
        load_dataset("cifar10", path=tmp_path / "empty")
    with (cifar_dir / "data_batch_2").open("wb") as f:
        pickle.dump({b"labels": [1, 2]}, f)
    with pytest.raises(DatasetError, match=r"malformed CIFAR-10 batch file .*_2.*b'data'"):
        load_dataset("cifar10", path=cifar_dir)
    with (cifar_dir / "data_batch_2").open("wb") as f:
        pickle.dump({b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}, f)
    with pytest.raises(DatasetError, match=r"expected \(N, 3072\), \(N,\)"):
        load_dataset("cifar10", path=cifar_dir)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_cifar10_unpickler_refuses_code(cifar_dir: Path) -> None:
    with (cifar_dir / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
    # only numpy arrays and plain containers may be rebuilt
    with pytest.raises(DatasetError, match="forbidden global (posix|nt).system"):
        load_dataset("cifar10", path=cifar_dir)


def test_random_crop_flip() -> None:
    x = torch.randn(6, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    # a seeded generator gives the same batch
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(0)))
    # every output is one of the 9x9 crops of the zero-padded image, possibly flipped
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        crops = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], t) or torch.equal(out[i], t.flip(-1)) for t in crops)
    # without padding, only flips: about half the images are mirrored
    flips = random_crop_flip(x, torch.Generator().manual_seed(1), padding=0)
    mirrored = [torch.equal(f, xi.flip(-1)) for f, xi in zip(flips, x, strict=True)]
    assert all(m or torch.equal(f, xi) for m, f, xi in zip(mirrored, flips, x, strict=True))
    assert 0 < sum(mirrored) < len(x)


# --------------------------------------------------------------------------- text
def test_text_windows(text_file: Path) -> None:
    d = load_dataset("text", path=text_file, seq_len=16)
    text = text_file.read_text()
    assert (d.kind, d.input_shape, d.vocab_size, d.n_outputs) == ("tokens", (16,), 28, 28)
    assert d.x_train.dtype == d.y_train.dtype == torch.long
    # y is x shifted by one character, windows do not overlap
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])
    assert torch.equal(d.x_train[1:, 0], d.y_train[:-1, -1])
    assert d.sizes == {"train": (int(0.8 * len(text)) - 1) // 16, "val": 11, "test": 11}
    vocab = sorted(set(text))
    assert "".join(vocab[i] for i in d.x_train[0].tolist()) == text[:16]


def test_text_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="needs option 'path'"):
        load_dataset("text")
    with pytest.raises(DatasetError, match="text file not found"):
        load_dataset("text", path=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset("text", path=tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("abc" * 20)
    with pytest.raises(DatasetError, match="text too short: the val split has 6 characters"):
        load_dataset("text", path=tmp_path / "short.txt", seq_len=8)


# --------------------------------------------------------------------------- synthetic
def test_synthetic_regression() -> None:
    d = load_dataset("synthetic", n_train=100, n_val=30, n_test=20, n_features=5, n_outputs=3)
    assert (d.task, d.kind, d.input_shape, d.n_outputs) == ("regression", "vector", (5,), 3)
    assert d.y_train.shape == (100, 3) and d.sizes == {"train": 100, "val": 30, "test": 20}
    # the teacher signal has unit variance on train; noise 0 leaves exactly that
    clean = load_dataset("synthetic", n_train=100, noise=0.0)
    torch.testing.assert_close(clean.y_train.std(0), torch.ones(1))


def test_blobs_are_balanced() -> None:
    d = load_dataset("blobs", n_train=90, n_classes=3, n_features=4)
    assert (d.task, d.input_shape, d.n_outputs) == ("classification", (4,), 3)
    total = torch.bincount(torch.cat([d.y_train, d.y_val, d.y_test]))
    assert total.tolist() == [(90 + 400) // 3 + (1 if i < 1 else 0) for i in range(3)]


# --------------------------------------------------------------------------- errors, batches
def test_dataset_errors() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnist-1d'; known datasets: "
                                           r"mnist1d, digits, cifar10, .*Did you mean 'mnist1d'"):
        load_dataset("mnist-1d")
    with pytest.raises(DatasetError, match=r"unknown option 'n_trian' for dataset 'blobs'.*"
                                           r"Did you mean 'n_train'"):
        load_dataset("blobs", n_trian=5)
    with pytest.raises(DatasetError, match="allowed options: none"):
        load_dataset("digits", n_train=5)
    with pytest.raises(DatasetError, match=r"option 'n_train' must be an integer >= 1, but got 0"):
        load_dataset("synthetic", n_train=0)
    with pytest.raises(DatasetError, match=r"option 'noise' must be a number >= 0.0"):
        load_dataset("synthetic", noise=-1)


def test_iterate_batches() -> None:
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    plain = list(iterate_batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in plain] == [4, 4, 2] and torch.equal(plain[0][1], y[:4])
    assert [len(b[1]) for b in iterate_batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]
    runs = [list(iterate_batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(5)))
            for _ in range(2)]
    seen = torch.cat([yb for _, yb in runs[0]])
    # a shuffled epoch visits each example once, inputs stay paired with targets
    assert sorted(seen.tolist()) == list(range(10)) and not torch.equal(seen, y)
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in runs[0])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(*runs, strict=True))
    with pytest.raises(ValueError, match="differ in length"):
        list(iterate_batches(x, y[:5], 2, shuffle=False))
