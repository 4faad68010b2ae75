"""`alrao-tune train` and `alrao-tune bench` from the command line (in-process)."""

from __future__ import annotations

import json

import pytest

from alrao_tune.cli import main

BLOBS = ["--dataset", "blobs", "--data-option", "n_train=200", "--data-option", "n_features=6"]


def test_train_json_prints_summary_and_history(capsys):
    code = main(["train", *BLOBS, "--arch", '{"family": "mlp", "widths": [8]}',
                 "--method", "alrao", "--lr-min", "1e-3", "--lr-max", "1", "--heads", "3",
                 "--epochs", "2", "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["epochs"] == 2 and len(out["history"]) == 2
    assert len(out["head_rates"]) == 3
    assert out["config"]["method"] == "alrao"


def test_train_checkpoint_then_resume(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    args = ["train", *BLOBS, "--arch", "mlp", "--method", "sgd", "--lr", "0.1",
            "--device", "cpu", "--json", "--patience", "50"]
    assert main([*args, "--epochs", "2", "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--resume", str(ckpt)]) == 0
    out = json.loads(capsys.readouterr().out)
    # the resumed run continues at epoch 3 instead of starting over
    assert [r["epoch"] for r in out["history"]] == [1, 2, 3]


@pytest.mark.parametrize("dataset,family", [("digits", "cnn2d"), ("blobs", "cnn1d")])
def test_train_picks_a_default_family_by_the_input_kind(dataset, family, capsys):
    options = ["--data-option", "n_train=200"] if dataset == "blobs" else []
    code = main(["train", "--dataset", dataset, *options, "--method", "alrao", "--epochs", "1",
                 "--device", "cpu", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["config"]["arch"] == {"family": family}


def test_version(capsys):
    from alrao_tune import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"alrao-tune {__version__}"


@pytest.mark.parametrize("argv,match", [
    (["train", "--dataset", "imagenet"], "imagenet"),
    (["train", *BLOBS, "--arch", "perceiver"], "perceiver"),  # no such family
    (["train", *BLOBS, "--arch", '{"family": "mlp",'], "not valid JSON"),
    (["train", "--dataset", "cifar10", "--data-option", "path=/nonexistent/cifar"],
     "/nonexistent/cifar"),
    (["train", *BLOBS, "--lr-min", "-1"], "lr_min"),
    (["train", *BLOBS, "--data-option", "oops"], "key=value"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("alrao-tune: error:") and match in err
    assert "Traceback" not in err


def test_resume_from_a_corrupted_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["train", *BLOBS, "--arch", "mlp", "--resume", str(bad)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_bench_overhead_json(capsys):
    assert main(["bench", "overhead", "--steps", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for model in ("cnn", "mlp"):
        assert set(out[model]) == {"sgd_ms", "alrao_ms", "ratio"}
        assert out[model]["ratio"] > 0
    assert out["switch"]["update_us"] > 0


def test_bench_overhead_compile_reports_compiled_and_eager_ratios(capsys, monkeypatch):
    from alrao_tune.bench import overhead

    calls = []

    def fake(name, *, steps, compile=False):
        calls.append((name, compile))
        ratio = 1.1 if compile else 1.2
        return {"sgd_ms": 1.0, "alrao_ms": ratio, "ratio": ratio}

    monkeypatch.setattr(overhead, "step_overhead", fake)
    assert main(["bench", "overhead", "--steps", "2", "--compile"]) == 0
    out = capsys.readouterr().out
    # both the eager and the compiled ratios, for both models, in one run
    assert sorted(calls) == [("cnn", False), ("cnn", True), ("mlp", False), ("mlp", True)]
    assert "mlp_compiled: sgd 1.000 ms  alrao 1.100 ms  ratio 1.100" in out
    assert "mlp: sgd 1.000 ms  alrao 1.200 ms  ratio 1.200" in out


def test_train_compile_flag(capsys, monkeypatch):
    import functools

    import torch

    import alrao_tune.train.step as step_module

    monkeypatch.setattr(step_module.torch, "compile",
                        functools.partial(torch.compile, backend="aot_eager"))
    assert main(["train", *BLOBS, "--arch", "mlp", "--epochs", "1", "--compile", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["compile"] is True and out["summary"]["epochs"] == 1
