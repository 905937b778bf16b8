"""The state-dir lock: one sidecar per state dir, and a clear word about which one.

The lock is an OS file lock (flock on POSIX, msvcrt on Windows) on `sidecar.lock`, so it
dies with its process: a SIGKILLed sidecar leaves no stale lock. The file also records the
holder's pid and connection file, which a second sidecar reports when it refuses to start.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from genart_core.protocol.errors import StateDirLocked

LOCK_NAME = "sidecar.lock"


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, connection_file: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if os.name != "nt":
            os.chmod(self.path.parent, 0o700)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
        if not _try_lock(f):
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            raise StateDirLocked(
                f"another sidecar (pid {holder.get('pid', '?')}) already serves {self.path.parent};"
                f" connect to it with {holder.get('connection_file', 'its connection file')}",
                field="state_dir",
                details=holder,
            )
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "connection_file": str(connection_file)}))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None


def read_holder(state_dir: Path) -> dict[str, Any]:
    """Who holds (or last held) the lock, as recorded in the lock file."""
    try:
        return _parse((state_dir / LOCK_NAME).read_text(encoding="utf-8"))
    except OSError:
        return {}


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


if sys.platform == "win32":  # pragma: no cover - not run on Linux CI
    import msvcrt

    def _try_lock(f: IO[str]) -> bool:
        try:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(f: IO[str]) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(f: IO[str]) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(f: IO[str]) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
