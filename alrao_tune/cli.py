"""The ``alrao-tune`` command line: ``train``, ``screen``, ``compare``, ``bench``, ``ui``.

Bad input (YAML, flags, specs, paths, an unreachable tracking server) prints one line
``alrao-tune: error: ...`` naming the problem and the fix, and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from alrao_tune.errors import EXIT_USAGE, AlraoTuneError
from alrao_tune.schema import LR_FREE_METHODS

EXIT_INTERRUPTED = 130  # as a shell reports a SIGINT


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so the printed JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_clean(obj), default=_json_default))


# ----------------------------------------------------------------------------- train
def _parse_arch(text: str) -> dict[str, Any]:
    from alrao_tune.zoo.build import ArchError

    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError(f"--arch is not valid JSON ({err.msg} at column {err.colno}): "
                            f"{text!r}; give a family name like 'cnn1d' or a JSON object "
                            "like '{\"family\": \"mlp\", \"widths\": [64]}'.") from err
        if not isinstance(spec, dict):
            raise ArchError(f"--arch JSON must be an object, got {type(spec).__name__}.")
        return spec
    if ":" in text:
        return {"builder": text}
    return {"family": text}


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    from alrao_tune.train.config import ConfigError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--data-option {item!r} must look like key=value (e.g. n_train=1000).")
        options[key] = yaml.safe_load(value)
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from alrao_tune.data import load_dataset
    from alrao_tune.train import TrainConfig, Trainer
    from alrao_tune.zoo import default_family

    options = _parse_options(args.data_option)
    data = load_dataset(args.dataset, seed=0, **options)
    arch = _parse_arch(args.arch) if args.arch else {"family": default_family(data.kind)}
    raw: dict[str, Any] = {
        "dataset": args.dataset, "dataset_options": options,
        "arch": arch, "method": args.method, "epochs": args.epochs,
        "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
        "momentum": args.momentum, "patience": args.patience, "min_epochs": args.min_epochs,
        "compile": args.compile,
    }
    for key in ("lr", "lr_min", "lr_max", "n_heads", "weight_decay"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    if args.schedule:
        raw["schedule"] = {"name": args.schedule}
    cfg = TrainConfig.from_dict(raw)
    trainer = Trainer(cfg, data)
    if args.resume:
        trainer.restore(args.resume)
    bar = _progress_bar(cfg.epochs, enabled=not args.json and sys.stderr.isatty())

    def on_epoch(record: dict[str, Any], tr: Trainer) -> None:
        if args.checkpoint:
            tr.save(args.checkpoint)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val_loss=f"{record['val_loss']:.4f}",
                            val_acc=f"{record.get('val_acc', math.nan):.3f}")
        elif not args.json:
            acc = record.get("val_acc", math.nan)
            print(f"epoch {record['epoch']:>3}  train_loss {record['train_loss']:.4f}  "
                  f"val_loss {record['val_loss']:.4f}  val_acc {acc:.3f}"
                  + (f"  lr_eff {record['lr_eff']:.3g}" if "lr_eff" in record else ""))

    history = trainer.run(on_epoch)
    if bar is not None:
        bar.close()
    summary = history.summary()
    if args.json:
        records = [{k: v for k, v in r.items() if k != "step_metrics"} for r in history.records]
        _print_json({"summary": summary, "config": cfg.to_dict(), "history": records,
                     "head_rates": history.head_rates})
    else:
        print(f"{history.status} after {summary['epochs']} epochs; best epoch "
              f"{summary['best_epoch']}: val_loss {summary['val_loss']:.4f}, test_loss "
              f"{summary['test_loss'] or math.nan:.4f}, test_acc "
              f"{summary['test_acc'] if summary['test_acc'] is not None else math.nan:.4f}; "
              f"{summary['n_params']} parameters, {summary['train_time_s']:.1f}s")
    return 0


def _progress_bar(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="epoch", file=sys.stderr)


# ---------------------------------------------------------------------------- screen
def cmd_screen(args: argparse.Namespace) -> int:
    from alrao_tune.tune.screen import screen

    result = screen(
        args.space, overrides=args.set, tracking_uri=args.tracking_uri, storage=args.storage,
        address=args.address, output=args.output, resume=args.resume,
        progress=None if args.json else print, register_model=args.register_model)
    if args.json:
        _print_json(result.to_json())
        return 0
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20,
                           "display.float_format", "{:.4g}".format):
        print("\nleaderboard:")
        print(result.leaderboard.to_string(index=False))
    if args.output:
        print(f"\nwrote {args.output}/leaderboard.csv and {args.output}/results.json")
    print(f"\nbrowse the runs: mlflow ui --backend-store-uri {result.tracking_uri} "
          "--host 127.0.0.1 --port 5000  (experiment "
          f"{result.space!r}, pipeline run {result.run_ids.get('pipeline')})")
    return 0


# --------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from alrao_tune.tune.compare import compare, markdown

    result = compare(
        args.space, overrides=args.set, seeds=args.seeds, tracking_uri=args.tracking_uri,
        storage=args.storage, address=args.address, output=args.output,
        progress=None if args.json else print, resume=args.resume)
    if args.json:
        _print_json(result.to_json())
        return 0
    for momentum, rep in result.reports.items():
        print(f"\n## ground truth: SGD with momentum {momentum} over the grid\n")
        print(markdown(rep))
    if args.output:
        print(f"wrote {args.output}/ (report-*.md, trials.csv, compare.json, scatter-*.png)")
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from alrao_tune.bench import overhead as bench

    if args.what == "overhead":
        figures = bench.overhead(steps=args.steps, compile=args.compile)
        if args.json:
            _print_json(figures)
        else:
            names = [*bench.MODELS, *(f"{n}_compiled" for n in bench.MODELS if args.compile)]
            for name in names:
                f = figures[name]
                print(f"{name:>12}: sgd {f['sgd_ms']:.3f} ms  alrao {f['alrao_ms']:.3f} ms  "
                      f"ratio {f['ratio']:.3f}")
            print(f"switch update (K=10): {figures['switch']['update_us']:.1f} µs")
            st = figures["state"]
            print(f"optimizer state (mlp, no momentum): {st['state_numel']:.0f} values for "
                  f"{st['param_numel']:.0f} parameters")
    elif args.what == "loop":
        figures = {m: bench.loop_overhead(epochs=args.epochs, method=m)
                   for m in ("alrao", "sgd")}
        if args.json:
            _print_json(figures)
        else:
            for m, f in figures.items():
                print(f"{m:>5}: bare epoch {f['bare_epoch_s']:.3f} s, trainer epoch "
                      f"{f['trainer_epoch_s']:.3f} s; step overhead "
                      f"{100 * f['step_overhead']:+.1f}%, loop bookkeeping "
                      f"{100 * f['loop_share']:.1f}% of an epoch, validation "
                      f"{100 * f['eval_share']:.1f}%")
    elif args.what == "soak":
        from alrao_tune.bench.soak import soak

        out = soak(n_trials=args.trials, failure_rate=args.failure_rate, seed=args.seed,
                   tracking_uri=args.tracking_uri, storage=args.storage,
                   progress=None if args.json else print)
        if args.json:
            _print_json(out)
        return 0 if out["ok"] else 1
    return 0


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    """The ``alrao-tune`` parser: one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="alrao-tune",
        description="Screen architectures cheaply with Alrao, then tune only the best.")
    from alrao_tune import __version__

    parser.add_argument("--version", action="version", version=f"alrao-tune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_screen(sub)
    _add_compare(sub)
    _add_bench(sub)
    from alrao_tune.dashboard.launch import add_ui_parser

    add_ui_parser(sub)
    return parser


SPACE_HELP = ("a search-space YAML file, or the name of a shipped space (quickstart, digits, "
              "mnist1d, mnist1d-nonrecurrent, cifar10)")


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train one architecture with alrao, sgd or adam")
    t.add_argument("--dataset", default="mnist1d")
    t.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. n_train=1000 or path=/data/cifar-10-batches-py")
    t.add_argument("--arch", help="a family name (cnn1d), a JSON spec, or a builder "
                   "module:function (default: by the dataset's inputs: cnn1d for vectors, "
                   "cnn2d for images, gru for tokens)")
    t.add_argument("--method", choices=("alrao", "sgd", "adam", *LR_FREE_METHODS),
                   default="alrao")
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-min", dest="lr_min", type=float)
    t.add_argument("--lr-max", dest="lr_max", type=float)
    t.add_argument("--heads", dest="n_heads", type=int)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--weight-decay", dest="weight_decay", type=float)
    t.add_argument("--schedule", choices=("constant", "step", "cosine", "cyclic", "onecycle"))
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    t.add_argument("--patience", type=int, default=5)
    t.add_argument("--min-epochs", dest="min_epochs", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    t.add_argument("--resume", help="continue from a checkpoint written by --checkpoint")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (forward, backward, optimizer step)")
    t.set_defaults(func=cmd_train)


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """The options screen and compare share: overrides, stores, cluster, resume."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a YAML key, e.g. --set stage1.top_k=3")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite:///./mlflow.db)")
    p.add_argument("--storage", help="Ray Tune storage: a directory (shared by all nodes on "
                   "a cluster) or a URI such as s3://bucket/prefix, gs://..., file:///abs "
                   "(default ./alrao_runs)")
    p.add_argument("--address", help="Ray cluster address HOST:6379 or auto (default: "
                   "RAY_ADDRESS, else a local Ray)")


def _add_screen(sub: Any) -> None:
    s = sub.add_parser("screen", help="two-stage screening of a search space")
    s.add_argument("space", help=SPACE_HELP)
    _add_job_options(s)
    s.add_argument("--output", help="write leaderboard.csv, stage1/2.csv, results.json here")
    s.add_argument("--resume", action="store_true", help="finish the newest interrupted run")
    s.add_argument("--register-model", metavar="NAME", help="register the winner's model "
                   "in MLflow's model registry under NAME (it is logged in any case)")
    s.add_argument("--json", action="store_true", help="print results.json to stdout")
    s.set_defaults(func=cmd_screen)


def _add_compare(sub: Any) -> None:
    c = sub.add_parser("compare", help="measure the Alrao proxy against grid-searched SGD")
    c.add_argument("space", help=SPACE_HELP + "; its `compare` section is used")
    c.add_argument("--seeds", type=int, help="number of seeds (default: compare.seeds)")
    _add_job_options(c)
    c.add_argument("--output", help="write report-*.md, trials.csv, compare.json, PNGs here")
    c.add_argument("--resume", action="store_true",
                   help="finish the newest interrupted comparison (same --storage)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmarks that print figures")
    b.add_argument("what", choices=("overhead", "loop", "soak"),
                   help="overhead: Alrao vs SGD step time; loop: the training loop's own "
                        "cost; soak: many tiny trials with injected faults, then an audit "
                        "that no MLflow run or value was lost (exit 1 if one was)")
    b.add_argument("--steps", type=int, default=200, help="overhead: timed steps per model")
    b.add_argument("--compile", action="store_true",
                   help="overhead: also time both steps compiled with torch.compile")
    b.add_argument("--epochs", type=int, default=3, help="loop: timed epochs")
    b.add_argument("--trials", type=int, default=50, help="soak: tiny trials in one experiment")
    b.add_argument("--failure-rate", type=float, default=0.2,
                   help="soak: share of trials given a fault (half crash once, half raise)")
    b.add_argument("--seed", type=int, default=0, help="soak: seeds the fault plan")
    b.add_argument("--tracking-uri", help="soak: MLflow store (default: a temporary SQLite)")
    b.add_argument("--storage", help="soak: Tune storage (default: a temporary folder)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)


def configure_process() -> None:
    """What the command line sets up for its own process, and library functions never do:
    the environment defaults of Ray (:data:`~alrao_tune.tune.session.RAY_ENV_DEFAULTS`:
    quiet Tune, Ctrl-C raising ``KeyboardInterrupt``) and MLflow
    (:data:`~alrao_tune.tracking.MLFLOW_ENV_DEFAULTS`), each kept when already set, and
    logging: the progress lines are alrao_tune's own; MLflow's and Alembic's database
    set-up chatter, Ray Tune's and Optuna's INFO messages are hidden."""
    from alrao_tune.tracking.runs import MLFLOW_ENV_DEFAULTS
    from alrao_tune.tune.session import RAY_ENV_DEFAULTS

    for key, value in {**RAY_ENV_DEFAULTS, **MLFLOW_ENV_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    levels = {"mlflow": logging.WARNING, "alembic": logging.WARNING, "optuna": logging.WARNING,
              "ray.tune": logging.ERROR, "ray.train": logging.ERROR, "ray.air": logging.ERROR}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alrao-tune`` console script."""
    args = build_parser().parse_args(argv)
    configure_process()
    try:
        return int(args.func(args))
    except AlraoTuneError as err:
        print(f"alrao-tune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        detail = f" ({err})" if str(err) else ""
        resumable = args.command in ("screen", "compare")
        print(f"alrao-tune: interrupted{detail}" + (
            "; what finished is kept: run the same command with --resume to continue"
            if resumable else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
