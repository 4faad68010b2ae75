"""Which trial checkpoint a resumed trial continues from.

Tune names, in its experiment state, the newest checkpoint of every trial; with
``CheckpointConfig(num_to_keep=N)`` it deletes the oldest checkpoint when it registers a
new one and only then saves the state (forced every N checkpoints). A SIGKILL between the
two leaves a state that names a deleted checkpoint (seen on a 5-hour comparison killed
once). The trial's folder still holds its newer checkpoints, each a complete, valid state
of the same run. Tune itself refuses to restore from a missing folder, so before a restore
:func:`restore_missing` puts a copy of the newest of them in its place. A kill can also
land while Tune writes a checkpoint folder or deletes one: the folder is there without its
``trainer.pt`` (*incomplete*). An incomplete folder is never restored from: the named one
counts as gone, an incomplete sibling is skipped, and the resume says so. MLflow may lack
the values of the epochs in the checkpoint the trial continues from: the resumed trial's
first report carries the records of every epoch in the checkpoint, and the MLflow callback
logs those past the run's last logged step (``schema.RESTORED_KEY``). Nothing readable
there: :class:`~alrao_tune.train.CheckpointError`.
"""

from __future__ import annotations

import io
from typing import Any

from alrao_tune.schema import CHECKPOINT_FILE
from alrao_tune.tune._ray_compat import kept_checkpoints


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


def _has_file(filesystem: Any, path: str) -> bool:
    return _exists(filesystem, f"{path.rstrip('/')}/{CHECKPOINT_FILE}")


def _siblings(filesystem: Any, parent: str) -> tuple[list[tuple[int, str]], list[str]]:
    """``([(epoch, path)] of the complete, [path] of the incomplete)`` ``checkpoint_*``
    folders in the trial folder ``parent``. Incomplete: no ``trainer.pt``, or one that
    does not load (a kill landed while Tune wrote the folder or deleted it)."""
    from pyarrow import fs as pafs

    complete, incomplete = [], []
    for info in filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            complete.append((int(read_state(filesystem, info.path)["loop"]["epoch"]),
                             info.path))
        except Exception:  # noqa: BLE001 - missing or unreadable: not a candidate
            incomplete.append(info.path)
    return complete, sorted(incomplete)


def usable_checkpoint(checkpoint: Any) -> tuple[str | None, str | None]:
    """``(replacement, note)`` for the checkpoint Tune's experiment state names.

    - Its folder holds a readable ``trainer.pt``: ``replacement`` is None (Tune restores
      from it, the newest complete checkpoint Tune knows of).
    - Its folder is gone, or incomplete (no ``trainer.pt``: the kill landed while Tune
      deleted it): the trial's readable ``checkpoint_*`` folder with the most epochs, the
      newest complete state of the run (:func:`restore_missing` puts a copy in place; the
      epochs MLflow may lack come from its records).

    ``note`` says what the resume does differently from Tune's plan and which incomplete
    folders it skipped (``None`` when nothing is off). Reads only.

    Raises:
        CheckpointError: the named folder is gone or incomplete and no sibling is readable;
            or the named ``trainer.pt`` exists but does not load (a damaged file is not
            silently skipped).
    """
    from alrao_tune.train import CheckpointError

    filesystem, path = _filesystem(checkpoint), str(checkpoint.path).rstrip("/")
    parent, name = path.rsplit("/", 1)
    complete, incomplete = _siblings(filesystem, parent)
    skipped = [p for p in incomplete if p != path]
    if _has_file(filesystem, path):
        try:
            read_state(filesystem, path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same error
            raise CheckpointError(f"its checkpoint {path}/{CHECKPOINT_FILE} is unreadable "
                                  f"({_first_line(err)})") from err
        return None, _skipped_note(skipped)
    state = "incomplete (no trainer.pt)" if _exists(filesystem, path) else "gone"
    candidates = [(epoch, p) for epoch, p in complete if p != path]
    if not candidates:
        raise CheckpointError(f"its checkpoint {path} is {state} and no other checkpoint "
                              f"of the trial in {parent} is readable")
    epoch, chosen = max(candidates)
    note = (f"{name}, the checkpoint Tune's experiment state names, is {state} (the "
            f"process was killed while Tune deleted it); the trial continues from a copy "
            f"of {chosen.rsplit('/', 1)[1]} (epoch {epoch}), its newest complete checkpoint")
    return chosen, "; ".join(filter(None, [note, _skipped_note(skipped)]))


def _skipped_note(incomplete: list[str]) -> str | None:
    if not incomplete:
        return None
    names = ", ".join(p.rsplit("/", 1)[1] for p in incomplete)
    return (f"skipped incomplete checkpoint folder(s) {names} (no readable "
            f"{CHECKPOINT_FILE}: the process was killed while Tune wrote or deleted them)")


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
    for kept in kept_checkpoints(trial):
        if not _exists(_filesystem(kept), kept.path):
            _filesystem(kept).create_dir(kept.path, recursive=True)
    return note


def _first_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return f"{type(err).__name__}: {first}"
