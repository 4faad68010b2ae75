"""The winner of a screening as an MLflow model: logged, registered, loaded back.

:func:`log_model` logs a trained ``torch.nn.Module`` with ``mlflow.pytorch.log_model``
(a signature inferred from an input example and the model's output on it, the example
itself, explicit pip requirements so that nothing is inferred in a subprocess) under an
existing run, with the winner's metrics linked to it; ``registered_name`` also registers
it in MLflow's model registry. :func:`load_best` returns the newest winner of an
experiment, a pipeline run's winner, or a registered version, as a module in eval mode.

The pipeline run carries the tag ``alrao_tune.model_uri`` (``models:/<model id>``) so a
reader finds the winner without listing models.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from alrao_tune.errors import AlraoTuneError
from alrao_tune.logs import quiet_logger
from alrao_tune.schema import KIND_TAG, MODEL_NAME, MODEL_TAG, WINNER_PREFIX
from alrao_tune.tracking.runs import default_tracking_uri, mlflow_client


class ModelNotFoundError(AlraoTuneError, LookupError):
    """No logged winner where :func:`load_best` looked."""


@dataclass(frozen=True)
class LoggedModel:
    """What :func:`log_model` logged: ``uri`` loads it (``mlflow.pytorch.load_model``)."""

    uri: str
    model_id: str
    registered_name: str | None = None
    version: int | None = None


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` inside, restored after (the fluent
    ``log_model`` / ``load_model`` read it)."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before or "")


def log_model(uri: str, run_id: str, model: Any, example: Any,
              metrics: Mapping[str, float], *, registered_name: str | None = None,
              params: Mapping[str, Any] | None = None) -> LoggedModel:
    """Logs ``model`` (an ``nn.Module``) as the artifact ``model`` of run ``run_id``.

    Args:
        uri: the tracking URI.
        run_id: the run the model belongs to (the screening's pipeline run).
        model: the trained module; logged in eval mode, on CPU.
        example: a small input batch (a tensor); its numpy form is the input example and,
            with the model's output on it, gives the signature.
        metrics: the winner's numbers, logged on the run as ``winner/<key>`` at step 0
            (MLflow links a run's step-0 metrics to a model logged at step 0).
        registered_name: also register the model under this name (a new version).
        params: stored on the logged model (e.g. the architecture and learning rate).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.to("cpu").eval()
    with torch.no_grad():
        out = model(example)
    x, y = example.numpy(), getattr(out, "logits", out).numpy()
    client = mlflow_client(uri)
    finite = {f"{WINNER_PREFIX}{k}": float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and math.isfinite(v)}
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in finite.items()])
    with _tracking_uri(uri), quiet_logger("mlflow.pytorch"):  # its pickle-format warning
        info = mlflow.pytorch.log_model(
            model, name=MODEL_NAME, signature=infer_signature(x, y), input_example=x,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=registered_name, run_id=run_id,
            serialization_format="pickle",  # load_model gives the nn.Module back
            params={k: str(v) for k, v in (params or {}).items()})
    client.set_tag(run_id, MODEL_TAG, info.model_uri)
    version = getattr(info, "registered_model_version", None)
    return LoggedModel(info.model_uri, info.model_id, registered_name,
                       int(version) if version is not None else None)


def load_best(experiment: str | None = None, *, run_id: str | None = None,
              registered_name: str | None = None, version: int | str = "latest",
              tracking_uri: str | None = None) -> Any:
    """The winner of a screening as a ``torch.nn.Module`` in eval mode.

    Exactly one of: ``experiment`` (the search space's name: its newest screening that
    logged a winner), ``run_id`` (a pipeline run), ``registered_name`` (a registered
    model, ``version`` a number or ``"latest"``). ``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``.

    Raises:
        ModelNotFoundError: nothing was logged there (the message says what to run).
    """
    import mlflow

    chosen = [v for v in (experiment, run_id, registered_name) if v is not None]
    if len(chosen) != 1:
        raise ValueError("load_best takes exactly one of experiment=, run_id=, "
                         f"registered_name=; got {len(chosen)}.")
    uri = tracking_uri or default_tracking_uri()
    if registered_name is not None:
        model_uri = f"models:/{registered_name}/{version}"
    else:
        model_uri = _winner_uri(mlflow_client(uri), experiment, run_id)
    with _tracking_uri(uri):
        try:
            return mlflow.pytorch.load_model(model_uri).eval()
        except mlflow.exceptions.MlflowException as err:
            raise ModelNotFoundError(f"cannot load {model_uri} from {uri}: "
                                     f"{str(err).splitlines()[0]}") from err


def _winner_uri(client: Any, experiment: str | None, run_id: str | None) -> str:
    if run_id is not None:
        tags = client.get_run(run_id).data.tags
        if MODEL_TAG not in tags:
            raise ModelNotFoundError(f"pipeline run {run_id} logged no model (stage 2 did not "
                                     "finish, or it predates model logging)")
        return tags[MODEL_TAG]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ModelNotFoundError(f"no experiment {experiment!r} in this MLflow store: run "
                                 f"`alrao-tune screen` on a space named {experiment!r} first")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`{KIND_TAG}` = 'pipeline' and tags.`{MODEL_TAG}` != ''",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ModelNotFoundError(f"no screening of {experiment!r} logged a model yet: run "
                                 f"`alrao-tune screen` on it")
    return runs[0].data.tags[MODEL_TAG]
