"""Atomic file writes: a temp file beside the target, fsync, rename, fsync of the folder.

A reader (or a crash at any moment) sees the old file or the new one, never a torn one.
Stdlib only: the sidecar, its worker and the Blender add-on all write this way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Makes a rename in `path` durable (a no-op where folders cannot be opened: Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    chunks: Iterable[Any] | bytes,
    mode: int | None = None,
    sync: bool = True,
) -> None:
    """Writes `chunks` (bytes-like objects) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts: Iterable[Any] = (
        [chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in parts:
                f.write(chunk)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        fsync_dir(path.parent)
