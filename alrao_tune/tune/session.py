"""Ray start-up shared by the screening and compare jobs.

Nothing here changes the process environment or logging: :data:`RAY_ENV_DEFAULTS` are the
settings the ``alrao-tune`` command line puts into its environment before Ray starts; a
Python program that wants the same behaviour sets them itself (see
:func:`alrao_tune.cli.configure_process`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping

from alrao_tune.errors import AlraoTuneError
from alrao_tune.tune._ray_compat import check_ray_version

WAIT_ENV = "ALRAO_TUNE_WAIT_FOR_RESOURCES"

# Quiet, lean defaults of the command line (each kept when the user set it).
RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ctrl-C raises KeyboardInterrupt out of Tuner.fit (the screening is then recorded
    # KILLED, resumable) instead of Tune's handler, which ends fit() as if the experiment
    # had finished, with the unfinished trials in the result.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


class ClusterError(AlraoTuneError, RuntimeError):
    """Ray cannot be reached at the given address, or no node can run a trial."""


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                resources: Mapping[str, float] | None = None) -> Iterator[None]:
    """Connects to ``address`` (or ``RAY_ADDRESS``) or starts a local Ray, once.

    ``address`` is a running cluster's GCS address (``HOST:6379``, what ``ray start
    --head`` prints) or ``auto`` (the cluster this machine belongs to); without one, a
    local Ray with this machine's cores is started. An already-initialised Ray (a test
    fixture, a notebook) is reused and left running; a Ray started here is shut down on
    exit. With ``resources`` (one trial's ``{"cpu": ..., "gpu": ...}``) it checks that
    some node can run a trial.

    Raises:
        ClusterError: the address does not answer (checked with a TCP connect first:
            Ray itself would wait minutes) or is not a GCS address, or no live node has
            the resources of one trial (set ``ALRAO_TUNE_WAIT_FOR_RESOURCES=1`` to wait
            for an autoscaler to add such a node instead).
    """
    import ray

    check_ray_version()

    if address:  # a bad address is an error even where a Ray is already running here
        check_address(address)
    if ray.is_initialized():
        if resources is not None:
            check_resources(resources)
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
    if address:
        check_address(address)  # again: RAY_ADDRESS
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError, SystemExit,
                ray.exceptions.RayError) as err:  # RayError: e.g. AuthenticationError
            raise ClusterError(
                f"cannot connect to the Ray cluster at {address!r}: {_first_line(err)} "
                "(a cluster with token authentication needs RAY_AUTH_MODE=token and its "
                "token in this environment; alrao-tune defaults RAY_AUTH_MODE to "
                "'disabled' only when it is unset)") from err
    else:
        # "local": a new Ray on this machine. Without it ray.init() would join the cluster
        # that `ray start` left in /tmp/ray/ray_current_cluster (and then fail on
        # object_store_memory, which only a new instance takes); --address auto joins it.
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=200 * 1024**2,
                 **kwargs)
    try:
        if resources is not None:
            check_resources(resources)
        yield
    finally:
        ray.shutdown()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Raises :class:`ClusterError` when ``address`` is no GCS address that answers.

    ``auto`` and ``local`` are left to Ray; ``HOST:PORT`` must accept a TCP connection
    within ``timeout_s`` (an unreachable address would otherwise hold ``ray.init`` for
    minutes before it exits the process).
    """
    if address in ("auto", "local"):
        return
    hint = ("start a cluster with `ray start --head --port=6379` and pass the address it "
            "prints (HOST:6379), or leave out --address and unset RAY_ADDRESS to run on "
            "this machine")
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"Ray address {address!r} is a dashboard / job-submission URL; "
                           "give the cluster's GCS address HOST:6379 (or submit the command "
                           f"with `ray job submit --address {address} -- alrao-tune ...`)")
    if address.startswith("ray://"):
        raise ClusterError(f"Ray address {address!r} is a Ray Client address, which "
                           "alrao-tune does not use (its driver must run next to the "
                           "cluster); run alrao-tune on a cluster node with --address "
                           "HOST:6379 or through `ray job submit`")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT; {hint}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({err}); "
                           f"{hint}") from err


def check_resources(resources: Mapping[str, float]) -> None:
    """Raises :class:`ClusterError` when no live node has one trial's CPUs and GPUs
    (Tune would otherwise wait forever for them), unless
    ``ALRAO_TUNE_WAIT_FOR_RESOURCES=1`` (an autoscaler will add such a node)."""
    import ray

    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    if os.environ.get(WAIT_ENV, "").lower() in ("1", "true", "yes"):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
    raise ClusterError(
        f"no Ray node can run a trial that needs resources.cpu={cpu:g}, "
        f"resources.gpu={gpu:g} (nodes: {have or 'none'}); lower `resources` in the YAML "
        f"(e.g. --set resources.gpu=0), add such a node, or set {WAIT_ENV}=1 to wait "
        "for an autoscaler to add one")
