"""Which trial checkpoint a resumed trial continues from.

Tune names, in its experiment state, the newest checkpoint of every trial; with
``CheckpointConfig(num_to_keep=N)`` it deletes the oldest checkpoint when it registers a
new one and only then saves the state (forced every N checkpoints). A SIGKILL between the
two leaves a state that names a deleted checkpoint (seen on a 5-hour comparison killed
once). The trial's folder still holds its newer checkpoints, each a complete, valid state
of the same run. Tune itself refuses to restore from a missing folder, so before a restore
:func:`restore_missing` puts a copy of the one of them with the fewest epochs in its place
(the closest to what the state names). MLflow may lack the values of its newest epochs:
the resumed trial's first report carries the records of every epoch in the checkpoint, and
the MLflow callback logs those past the run's last logged step (``schema.RESTORED_KEY``).
Nothing readable there: :class:`~alrao_tune.train.CheckpointError`.
"""

from __future__ import annotations

import io
from typing import Any

from alrao_tune.schema import CHECKPOINT_FILE


def read_state(filesystem: Any, path: str, name: str = CHECKPOINT_FILE) -> dict[str, Any]:
    """The trainer state in the checkpoint folder ``path`` (local or on a pyarrow
    filesystem), loaded with ``weights_only=True``; raises if missing or not a trainer's."""
    import torch
    from pyarrow import fs as pafs

    file = f"{path.rstrip('/')}/{name}"
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        source: Any = file
    else:
        with filesystem.open_input_stream(file) as f:
            source = io.BytesIO(f.read())
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"model", "optimizer", "loop"} <= set(state):
        raise ValueError("not a checkpoint written by alrao_tune's Trainer")
    return state


def _filesystem(checkpoint: Any) -> Any:
    from pyarrow import fs as pafs

    return getattr(checkpoint, "filesystem", None) or pafs.LocalFileSystem()


def _exists(filesystem: Any, path: str) -> bool:
    from pyarrow import fs as pafs

    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def usable_checkpoint(checkpoint: Any) -> tuple[str | None, str | None]:
    """``(replacement, note)``: ``(None, None)`` when the folder of Tune's ``checkpoint``
    exists and its file is readable; when the folder is gone, the trial's readable
    ``checkpoint_*`` folder with the fewest epochs and a note saying so (reads only;
    :func:`restore_missing` puts it in place).

    Raises:
        CheckpointError: the named folder is gone and no sibling is readable; or the named
            folder exists but its file is unreadable (a damaged file is not silently skipped).
    """
    from pyarrow import fs as pafs

    from alrao_tune.train import CheckpointError

    filesystem, path = _filesystem(checkpoint), str(checkpoint.path).rstrip("/")
    if _exists(filesystem, path):
        try:
            read_state(filesystem, path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same error
            raise CheckpointError(f"its checkpoint {path}/{CHECKPOINT_FILE} is unreadable "
                                  f"({_first_line(err)})") from err
        return None, None
    parent = path.rsplit("/", 1)[0]
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                found.append((int(read_state(filesystem, info.path)["loop"]["epoch"]),
                              info.path))
            except Exception:  # noqa: BLE001, S112 - an unreadable sibling is not a candidate
                continue
    if not found:
        raise CheckpointError(f"its checkpoint {path} is gone and no other checkpoint of "
                              f"the trial in {parent} is readable")
    epoch, chosen = min(found)
    note = (f"{path.rsplit('/', 1)[1]}, the checkpoint Tune's experiment state names, is "
            f"gone (Tune deleted it just before the process was killed); the trial "
            f"continues from a copy of {chosen.rsplit('/', 1)[1]} (epoch {epoch})")
    return chosen, note


def restore_missing(trial: Any) -> str | None:
    """Puts back what a SIGKILL took from a trial Tune will restore: the checkpoint its
    experiment state names, as a copy of :func:`usable_checkpoint`'s replacement (Tune
    refuses to restore from a missing folder), and an empty folder for every other kept
    checkpoint that is gone (Tune deletes those later and fails on a missing one).
    Returns the note, or None when nothing was missing."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is None:
        return None
    source, note = usable_checkpoint(checkpoint)
    filesystem, path = _filesystem(checkpoint), str(checkpoint.path).rstrip("/")
    if source is not None:
        filesystem.create_dir(path, recursive=True)
        filesystem.copy_file(f"{source}/{CHECKPOINT_FILE}", f"{path}/{CHECKPOINT_FILE}")
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    for result in getattr(manager, "best_checkpoint_results", None) or []:
        kept = result.checkpoint
        if kept is not None and not _exists(_filesystem(kept), kept.path):
            _filesystem(kept).create_dir(kept.path, recursive=True)
    return note


def _first_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return f"{type(err).__name__}: {first}"
