"""The sidecar's durable job store: SQLite (WAL) for jobs, frames and events; files on disk
for inputs and outputs.

Everything a client was told is in here before it was told: a job id is committed before
`submit` answers, an event row before its notification goes out, a frame's output file
before the frame is marked committed. After a crash, `recover()` puts unfinished work back
in the queue. One connection, guarded by one lock: the server's threads take turns.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from genart_core.protocol.messages import TERMINAL_STATES

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    task TEXT NOT NULL,
    params TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    frames_expected INTEGER,
    input_closed INTEGER NOT NULL,
    state TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    client TEXT,
    error TEXT,
    expired INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS frames (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    params TEXT,
    inputs TEXT NOT NULL,
    outputs TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (job, idx)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job, seq);
CREATE INDEX IF NOT EXISTS frames_state ON frames (state);
"""


def loads(text: str | None) -> Any:
    """A JSON column's value (None stays None)."""
    return json.loads(text) if text else None


def _row(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.jobs_dir = state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            state_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None
        )
        self.db.row_factory = _row
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives any process crash (SIGKILL); only power loss can drop the
        # last commits, and output files are fsynced themselves.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self)

    # -- paths -----------------------------------------------------------------------
    def job_dir(self, job: str) -> Path:
        return self.jobs_dir / job

    def input_dir(self, job: str, frame: int) -> Path:
        return self.job_dir(job) / "inputs" / f"{frame:06d}"

    def output_dir(self, job: str) -> Path:
        return self.job_dir(job) / "outputs"

    # -- jobs ------------------------------------------------------------------------
    def find_by_key(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            return self.db.execute("SELECT * FROM jobs WHERE idempotency_key=?", (key,)).fetchone()

    @staticmethod
    def new_job_id() -> str:
        return uuid.uuid4().hex[:16]

    def create_job(
        self,
        job: str,
        *,
        engine: str,
        task: str,
        params: dict[str, Any],
        sequence: bool,
        frames_expected: int | None,
        idempotency_key: str | None,
        client: str | None,
        first_frame: dict[str, Any] | None,
    ) -> bool:
        """Creates a job (and, for a still, its one frame, input closed) in one transaction.

        Returns False when another job already holds the idempotency key.
        """
        now = time.time()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO jobs (id, engine, task, params, sequence, frames_expected,"
                    " input_closed, state, idempotency_key, client, created, updated)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job,
                        engine,
                        task,
                        json.dumps(params),
                        int(sequence),
                        frames_expected,
                        int(first_frame is not None),
                        "queued",
                        idempotency_key,
                        client,
                        now,
                        now,
                    ),
                )
                if first_frame is not None:
                    db.execute(
                        "INSERT INTO frames (job, idx, state, inputs) VALUES (?,?,?,?)",
                        (job, 0, "pending", json.dumps(first_frame)),
                    )
        except sqlite3.IntegrityError:
            return False
        return True

    def get_job(self, job: str) -> dict[str, Any] | None:
        with self.lock:
            return self.db.execute("SELECT * FROM jobs WHERE id=?", (job,)).fetchone()

    def list_jobs(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            if state:
                return self.db.execute(
                    "SELECT * FROM jobs WHERE state=? ORDER BY created DESC LIMIT ?", (state, limit)
                ).fetchall()
            return self.db.execute(
                "SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)
            ).fetchall()

    def set_job_state(self, job: str, state: str, error: dict[str, Any] | None = None) -> bool:
        """Moves a job to `state`; a terminal job never moves again. True if it moved."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job,)).fetchone()
            if row is None or row["state"] in TERMINAL_STATES or row["state"] == state:
                return False
            db.execute(
                "UPDATE jobs SET state=?, error=?, updated=? WHERE id=?",
                (state, json.dumps(error) if error else None, time.time(), job),
            )
            if state in TERMINAL_STATES:
                db.execute(
                    "UPDATE frames SET state='cancelled' WHERE job=? AND state IN"
                    " ('pending','running')",
                    (job,),
                )
            return True

    def close_input(self, job: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET input_closed=1, updated=? WHERE id=?", (time.time(), job))

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute(
                "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"
            ).fetchall()
        return {r["state"]: r["n"] for r in rows}

    # -- frames ----------------------------------------------------------------------
    def add_frame(
        self, job: str, idx: int, inputs: dict[str, Any], params: dict[str, Any] | None = None
    ) -> bool:
        """Adds a frame; False if that frame index already exists (a resend)."""
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM frames WHERE job=? AND idx=?", (job, idx)).fetchone()
            if exists:
                return False
            db.execute(
                "INSERT INTO frames (job, idx, state, params, inputs) VALUES (?,?,?,?,?)",
                (job, idx, "pending", json.dumps(params) if params else None, json.dumps(inputs)),
            )
            return True

    def get_frame(self, job: str, idx: int) -> dict[str, Any] | None:
        with self.lock:
            return self.db.execute(
                "SELECT * FROM frames WHERE job=? AND idx=?", (job, idx)
            ).fetchone()

    def frame_counts(self, job: str) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute(
                "SELECT state, COUNT(*) AS n FROM frames WHERE job=? GROUP BY state", (job,)
            ).fetchall()
        return {r["state"]: r["n"] for r in rows}

    def failed_frames(self, job: str) -> list[int]:
        with self.lock:
            rows = self.db.execute(
                "SELECT idx FROM frames WHERE job=? AND state='failed' ORDER BY idx", (job,)
            ).fetchall()
        return [r["idx"] for r in rows]

    def next_frame(
        self, background: Iterable[str] = ()
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The oldest pending frame of the oldest unfinished job, or None; jobs of the
        `background` engines only when no other job has a pending frame."""
        names = list(background)
        marks = ",".join("?" * len(names)) or "NULL"
        with self.lock:
            frame = self.db.execute(
                "SELECT f.* FROM frames f JOIN jobs j ON j.id = f.job"
                " WHERE f.state='pending' AND j.state IN ('queued','running')"
                f" ORDER BY (j.engine IN ({marks})), j.created, f.idx LIMIT 1",
                names,
            ).fetchone()
            if frame is None:
                return None
            job = self.db.execute("SELECT * FROM jobs WHERE id=?", (frame["job"],)).fetchone()
        return job, frame

    def start_frame(self, job: str, idx: int) -> int:
        """Marks a frame running; returns its attempt number (1 for the first)."""
        with self._tx() as db:
            db.execute(
                "UPDATE frames SET state='running', attempts=attempts+1 WHERE job=? AND idx=?",
                (job, idx),
            )
            row = db.execute(
                "SELECT attempts FROM frames WHERE job=? AND idx=?", (job, idx)
            ).fetchone()
        return int(row["attempts"])

    def committed_frame(self, job: str, idx: int) -> dict[str, Any] | None:
        """A frame's inputs and outputs records once it is committed, else None."""
        with self.lock:
            row = self.db.execute(
                "SELECT inputs, outputs FROM frames WHERE job=? AND idx=? AND state='committed'",
                (job, idx),
            ).fetchone()
        if row is None:
            return None
        return {"inputs": loads(row["inputs"]) or {}, "outputs": loads(row["outputs"]) or []}

    def commit_frame(self, job: str, idx: int, outputs: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE frames SET state='committed', outputs=?, crashes=0, error=NULL"
                " WHERE job=? AND idx=?",
                (json.dumps(outputs), job, idx),
            )

    def fail_frame(self, job: str, idx: int, error: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE frames SET state='failed', error=? WHERE job=? AND idx=?",
                (json.dumps(error), job, idx),
            )

    def requeue_frame(self, job: str, idx: int, crashed: bool) -> int:
        """Puts a running frame back to pending; counts a crash. Returns the crash count."""
        with self._tx() as db:
            db.execute(
                "UPDATE frames SET state='pending', crashes=crashes+? WHERE job=? AND idx=?"
                " AND state='running'",
                (int(crashed), job, idx),
            )
            row = db.execute(
                "SELECT crashes FROM frames WHERE job=? AND idx=?", (job, idx)
            ).fetchone()
        return int(row["crashes"]) if row else 0

    def recover(self) -> list[str]:
        """After a restart: running frames go back to pending, running jobs to queued."""
        with self._tx() as db:
            db.execute("UPDATE frames SET state='pending' WHERE state='running'")
            rows = db.execute("SELECT id FROM jobs WHERE state IN ('queued','running')").fetchall()
            db.execute("UPDATE jobs SET state='queued' WHERE state='running'")
        return [r["id"] for r in rows]

    # -- events ----------------------------------------------------------------------
    def add_event(self, job: str, type_: str, data: dict[str, Any]) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (job, type, data, time) VALUES (?,?,?,?)",
                (job, type_, json.dumps(data), time.time()),
            )
            return int(cur.lastrowid or 0)

    def events_since(self, job: str | None, since: int, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            if job is None:
                rows = self.db.execute(
                    "SELECT * FROM events WHERE seq>? ORDER BY seq LIMIT ?", (since, limit)
                ).fetchall()
            else:
                rows = self.db.execute(
                    "SELECT * FROM events WHERE job=? AND seq>? ORDER BY seq LIMIT ?",
                    (job, since, limit),
                ).fetchall()
        for r in rows:
            r["data"] = json.loads(r["data"])
        return rows

    def last_seq(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT MAX(seq) AS s FROM events").fetchone()
        return int(row["s"] or 0)

    # -- garbage collection ----------------------------------------------------------
    def collect_garbage(self, max_bytes: int) -> list[str]:
        """Deletes the files of the oldest finished jobs until the store fits `max_bytes`.

        Their rows stay (status still answers); `result` then says the result expired.
        """
        with self.lock:
            total = _tree_size(self.jobs_dir)
            if total <= max_bytes:
                return []
            rows = self.db.execute(
                "SELECT id FROM jobs WHERE state IN ('completed','failed','cancelled')"
                " AND expired=0 ORDER BY updated"
            ).fetchall()
        removed = []
        for row in rows:
            if total <= max_bytes:
                break
            folder = self.job_dir(row["id"])
            size = _tree_size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            with self._tx() as db:
                db.execute("UPDATE jobs SET expired=1 WHERE id=?", (row["id"],))
            total -= size
            removed.append(row["id"])
        return removed


def _tree_size(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in _files(folder))


def _files(folder: Path) -> Iterator[Path]:
    for p in folder.rglob("*"):
        if p.is_file():
            yield p


class _Tx:
    """`with store._tx() as db:` one IMMEDIATE transaction under the store's lock."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store.lock.acquire()
        self.store.db.execute("BEGIN IMMEDIATE")
        return self.store.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
