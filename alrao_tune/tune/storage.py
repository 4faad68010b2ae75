"""Where Tune experiments and alrao_tune's small state files live: a folder or a URI.

``--storage`` is either a local path (relative paths are made absolute, ``~`` expanded,
as Ray Tune requires an absolute ``storage_path``) or a URI that Ray Tune accepts
(``s3://``, ``gs://``, ``file://``, ``hdfs://``, ...). A URI goes to Tune's
``storage_path`` untouched; alrao_tune's own state files (``LATEST``, ``pipeline.json``,
``compare.json``) are read and written through ``pyarrow.fs`` (the filesystem layer Ray
Tune itself uses), so they land next to the Tune experiments on the same storage.

:class:`Location` is the one type for both: ``/`` joins a child name, ``str()`` is what
Tune gets, ``local`` is the ``Path`` of a local location (None for a URI).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alrao_tune.train.config import ConfigError


def is_uri(text: str | Path) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in str(text)


@dataclass(frozen=True)
class Location:
    """A folder on local disk (``path`` absolute) or on a pyarrow filesystem (``uri``)."""

    path: str  # the absolute local path, or the path inside ``fs`` for a URI
    uri: str | None = None  # the URI as the user gave it (joined with children), or None
    fs: Any = None  # pyarrow.fs.FileSystem for a URI

    @classmethod
    def parse(cls, storage: str | Path | None, default: str = "alrao_runs") -> Location:
        """A location from ``--storage`` (default ``./alrao_runs``).

        Raises:
            ConfigError: a URI whose filesystem pyarrow cannot open (unknown scheme,
                missing credentials or libraries).
        """
        text = str(storage) if storage not in (None, "") else default
        if not is_uri(text):
            return cls(str(Path(text).expanduser().resolve()))
        from pyarrow import fs as pafs

        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError (auth, no libjvm) ...
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise ConfigError(
                f"--storage {text!r}: pyarrow cannot open this URI ({type(err).__name__}: "
                f"{first}); give a local or shared-filesystem path, or a URI Ray Tune "
                "accepts (s3://bucket/prefix, gs://bucket/prefix, file:///abs/path) with "
                "its credentials set up") from err
        return cls(path.rstrip("/") or "/", text.rstrip("/"), filesystem)

    @property
    def local(self) -> Path | None:
        """The local ``Path`` (None for a URI)."""
        return Path(self.path) if self.uri is None else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __truediv__(self, child: str) -> Location:
        if self.uri is None:
            return Location(str(Path(self.path) / child))
        return Location(posixpath.join(self.path, child), f"{self.uri}/{child}", self.fs)

    def __str__(self) -> str:
        return self.uri if self.uri is not None else self.path

    # -------------------------------------------------------------------- file access
    def exists(self) -> bool:
        if self.local is not None:
            return self.local.exists()
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def mkdir(self) -> None:
        """Creates the folder (and its parents); no error if it exists."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.path, recursive=True)

    def children(self) -> list[str]:
        """The names directly inside this folder (empty if it does not exist)."""
        if self.local is not None:
            return sorted(p.name for p in self.local.iterdir()) if self.local.is_dir() else []
        from pyarrow import fs as pafs

        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def read_text(self) -> str:
        if self.local is not None:
            return self.local.read_text()
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode()

    def read_bytes(self) -> bytes:
        if self.local is not None:
            return self.local.read_bytes()
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_text(self, text: str) -> None:
        """Writes the file whole (a reader, or a resume after SIGKILL, never sees half of
        it): through a temporary file and a rename, except on an object store (s3, gs),
        where a single PUT is atomic by itself and a "rename" would be a copy."""
        if self.local is not None:
            tmp = self.local.with_name(self.local.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.local)
            return
        parent = posixpath.dirname(self.path)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        object_store = self.fs.type_name in ("s3", "gcs")
        target = self.path if object_store else self.path + ".tmp"
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode())
        if not object_store:
            self.fs.move(target, self.path)
