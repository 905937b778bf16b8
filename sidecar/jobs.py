"""The job runner: feeds queued frames to the engine worker, one at a time, and supervises it.

The worker is a child process (`python -m sidecar.worker`) talking over pipes; the server
process never imports torch, so pings and cancels are answered whatever the engine does.
A cancel is passed to the worker (the engine stops at its next step); if the worker does
not answer within the grace period (an engine that sleeps or holds the GIL) it is killed
and restarted. A worker that dies on its own counts a crash against the frame it was
running; a frame that crashed the worker twice fails and the rest of its sequence goes on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from genart_core.protocol.errors import (
    ConnectionLost,
    GenartError,
    InternalError,
    JobNotFound,
    WorkerCrashed,
)
from genart_core.protocol.framing import FrameStream, Message
from genart_core.protocol.messages import TERMINAL_STATES

from .events import EventHub
from .store import Store, loads

log = logging.getLogger("genart.sidecar.jobs")

MAX_FRAME_CRASHES = 2


class WorkerProcess:
    """One engine worker child process and its pipes."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.stream: FrameStream | None = None
        self.ready: dict[str, Any] = {}
        self._write_lock = threading.Lock()
        self.killed_on_purpose = False

    def start(self, timeout: float) -> dict[str, Any]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as errlog:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sidecar.worker",
                    "--server-pid",
                    str(os.getpid()),
                    *self.args,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errlog,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stream = FrameStream(rfile=self.proc.stdout, wfile=self.proc.stdin)
        timer = threading.Timer(timeout, self.kill)
        timer.start()
        try:
            msg = self.read()
        finally:
            timer.cancel()
        if msg is None or msg.envelope.get("method") != "ready":
            self.kill()
            raise WorkerCrashed(f"the engine worker did not start (see {self.log_path})")
        self.ready = msg.envelope.get("params") or {}
        return self.ready

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, method: str, params: dict[str, Any]) -> bool:
        if self.stream is None:
            return False
        try:
            with self._write_lock:
                self.stream.write_message({"jsonrpc": "2.0", "method": method, "params": params})
            return True
        except (OSError, ValueError):
            return False

    def read(self) -> Message | None:
        """The worker's next message, or None when it is gone."""
        assert self.stream is not None
        try:
            return self.stream.read_message()
        except (ConnectionLost, OSError, ValueError, GenartError):
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.killed_on_purpose = True
            self.proc.kill()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        self.send("shutdown", {})
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            _close(pipe)


def _close(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        try:
            pipe.close()
        except OSError:
            pass


class JobRunner:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        worker_args: list[str],
        log_dir: Path,
        cancel_grace: float = 3.0,
        max_store_bytes: int = 10 * 2**30,
        start_timeout: float = 120.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.worker_args = worker_args
        self.log_dir = log_dir
        self.cancel_grace = cancel_grace
        self.max_store_bytes = max_store_bytes
        self.start_timeout = start_timeout
        self.engines: list[dict[str, Any]] = []
        # Last known engine-device memory and whether models are loaded, offloaded, unloaded.
        self.memory: dict[str, Any] = {"state": "loaded"}
        self._release: tuple[str, threading.Event] | None = None
        self.device = "unknown"
        self.worker: WorkerProcess | None = None
        self.engines_ready = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._current: tuple[str, int] | None = None
        self._cancelling: set[str] = set()
        self._stopping = False
        self._start_failures = 0
        self._thread = threading.Thread(target=self._loop, name="genart-runner", daemon=True)

    # -- control from other threads --------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        worker = self.worker
        if worker is not None:
            worker.kill()
        self._thread.join(10)
        if worker is not None:
            worker.stop(timeout=2)

    def current(self) -> tuple[str, int] | None:
        with self._lock:
            return self._current

    def cancel(self, job: str) -> str:
        """Cancels a job; returns its state now ("cancelling" while the worker stops)."""
        row = self.store.get_job(job)
        if row is None:
            raise JobNotFound(f"no job {job}", field="job")
        if row["state"] in TERMINAL_STATES:
            return str(row["state"])
        with self._lock:
            if self._current is not None and self._current[0] == job:
                self._cancelling.add(job)
                worker = self.worker
                if worker is not None:
                    worker.send("cancel", {"job": job})
                    threading.Timer(self.cancel_grace, self._escalate, (job, worker)).start()
                return "cancelling"
            self.finish(job, "cancelled", {})
        return "cancelled"

    def _escalate(self, job: str, worker: WorkerProcess) -> None:
        with self._lock:
            still = self._current is not None and self._current[0] == job and self.worker is worker
        if still:
            log.warning(
                "job %s did not stop within %.1f s of cancel: killing worker pid %s",
                job,
                self.cancel_grace,
                worker.pid,
            )
            worker.kill()

    # -- terminal states -------------------------------------------------------------
    def finish(
        self, job: str, state: str, data: dict[str, Any], error: dict[str, Any] | None = None
    ) -> bool:
        """Moves a job to a terminal state and emits its one terminal event."""
        if not self.store.set_job_state(job, state, error):
            return False
        if error is not None:
            data = {**data, "error": error}
        self.hub.emit(job, state, data)
        self._cancelling.discard(job)
        self.hub.on_terminal(job)
        return True

    def check_done(self, job: str) -> None:
        """Completes a job whose input is closed and whose every frame is settled."""
        row = self.store.get_job(job)
        if row is None or row["state"] in TERMINAL_STATES or not row["input_closed"]:
            return
        counts = self.store.frame_counts(job)
        if counts.get("pending") or counts.get("running"):
            return
        failed = self.store.failed_frames(job)
        committed = counts.get("committed", 0)
        if failed and not committed:
            frame = self.store.get_frame(job, failed[0])
            error = loads(frame["error"]) if frame else None
            self.finish(
                job,
                "failed",
                {"failed_frames": failed},
                error or InternalError("every frame failed").to_dict(),
            )
        else:
            self.finish(job, "completed", {"frames": committed, "failed_frames": failed})

    # -- the runner thread -----------------------------------------------------------
    def _ensure_worker(self) -> bool:
        if self.worker is not None and self.worker.alive():
            return True
        if self.worker is not None:
            self.worker.stop(timeout=1)
        worker = WorkerProcess(self.worker_args, self.log_dir / "worker.log")
        try:
            ready = worker.start(self.start_timeout)
        except GenartError as exc:
            self._start_failures += 1
            delay = min(0.25 * 2**self._start_failures, 10.0)
            log.error("%s (attempt %d); retrying in %.1f s", exc, self._start_failures, delay)
            if self._start_failures >= 3:
                self._fail_next_job(exc)
            with self._wake:
                if not self._stopping:
                    self._wake.wait(delay)
            return False
        self._start_failures = 0
        self.worker = worker
        self.engines = list(ready.get("engines", []))
        self.memory = {**ready.get("memory", {}), "state": "unloaded"}
        self.device = str(ready.get("device", "unknown"))
        self.engines_ready.set()
        log.info(
            "engine worker pid %s ready: engines %s", worker.pid, [e["name"] for e in self.engines]
        )
        return True

    def _fail_next_job(self, exc: GenartError) -> None:
        nxt = self.store.next_frame()
        if nxt is not None:
            self.finish(nxt[0]["id"], "failed", {}, exc.to_dict())

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            if not self._ensure_worker():
                continue
            with self._wake:
                if self._stopping:
                    return
                release, self._release = self._release, None
            if release is not None:
                self._do_release(*release)
            with self._wake:
                background = [e["name"] for e in self.engines if e.get("background")]
                picked = self.store.next_frame(background)
                if picked is None:
                    self._wake.wait(1.0)
                    continue
                job, frame = picked
                self._current = (job["id"], frame["idx"])
            try:
                self._run_frame(job, frame)
            except Exception:  # the runner must survive anything a frame does
                log.exception("runner error on job %s frame %s", job["id"], frame["idx"])
                crashes = self.store.requeue_frame(job["id"], frame["idx"], crashed=True)
                if crashes >= MAX_FRAME_CRASHES:
                    err = InternalError(
                        f"frame {frame['idx']} failed {crashes} times inside the sidecar; "
                        "see its log",
                        details={"frame": frame["idx"]},
                    )
                    self._frame_failed(job, frame["idx"], err.to_dict())
            finally:
                with self._lock:
                    self._current = None
            if self.max_store_bytes:
                removed = self.store.collect_garbage(self.max_store_bytes)
                if removed:
                    log.info("garbage-collected the files of jobs %s", removed)

    def release(self, mode: str, wait: float) -> bool:
        """Asks the worker to unload or offload its models between frames; True when that
        happened within `wait` seconds (a running frame finishes first)."""
        done = threading.Event()
        with self._wake:
            self._release = (mode, done)
            self._wake.notify_all()
        return done.wait(wait)

    def _do_release(self, mode: str, done: threading.Event) -> None:
        worker = self.worker
        if worker is None or not worker.send(mode, {}):
            done.set()
            return
        while True:
            msg = worker.read()
            if msg is None:  # the worker died: its memory is free anyway
                break
            if msg.envelope.get("method") == "released":
                body = msg.envelope.get("params") or {}
                self.memory = {**body.get("memory", {}), "state": f"{mode}ed"}
                break
        done.set()

    def _run_frame(self, job: dict[str, Any], frame: dict[str, Any]) -> None:
        job_id, idx = job["id"], frame["idx"]
        assert self.worker is not None
        worker = self.worker
        attempt = self.store.start_frame(job_id, idx)
        if self.store.set_job_state(job_id, "running"):
            self.hub.emit(job_id, "started", {"attempt": attempt})
        params = {**loads(job["params"]), **(loads(frame["params"]) or {})}
        frames_total = job["frames_expected"]
        out_dir = self.store.output_dir(job_id)
        # A sequence's previous frame, for engines that carry state across frames (its
        # files are on disk, so this holds after a crash and a restart too).
        previous = self.store.committed_frame(job_id, idx - 1) if job["sequence"] and idx else None
        started = time.monotonic()
        worker.send(
            "run",
            {
                "previous": previous,
                "job": job_id,
                "frame": idx,
                "frames": frames_total,
                "attempt": attempt,
                "engine": job["engine"],
                "task": job["task"],
                "params": params,
                "inputs": loads(frame["inputs"]),
                "output_dir": str(out_dir),
            },
        )
        while True:
            msg = worker.read()
            if msg is None:
                self._worker_died(job, idx, worker)
                return
            kind = msg.envelope.get("method")
            body = msg.envelope.get("params") or {}
            if kind == "progress":
                step, steps = int(body["step"]), max(int(body["steps"]), 1)
                if step == 0:  # loading the model is not part of the steps' pace
                    started = time.monotonic()
                elapsed = time.monotonic() - started
                eta = elapsed / step * (steps - step) if step else None
                self.hub.emit(
                    job_id,
                    "progress",
                    {
                        "frame": idx,
                        "frames": frames_total,
                        "step": step,
                        "steps": steps,
                        "eta": None if eta is None else round(eta, 3),
                    },
                )
            elif kind == "preview" and msg.attachments:
                self.hub.preview(job_id, {"frame": idx}, msg.attachments[0])
            elif kind == "done":
                self.memory = {**body.get("memory", {}), "state": "loaded"}
                self.store.commit_frame(job_id, idx, body["outputs"])
                self.hub.emit(
                    job_id,
                    "result",
                    {
                        "frame": idx,
                        "outputs": body["outputs"],
                        "warnings": body.get("warnings", []),
                    },
                )
                self._after_frame(job, idx)
                return
            elif kind == "error":
                self._frame_failed(job, idx, body["error"])
                return
            elif kind == "cancelled":
                self.store.requeue_frame(job_id, idx, crashed=False)
                self.finish(job_id, "cancelled", {"frame": idx})
                return
            elif kind == "yielded":  # a background engine's chunk: queued again, behind others
                self.store.requeue_frame(job_id, idx, crashed=False)
                if job_id in self._cancelling:
                    self.finish(job_id, "cancelled", {"frame": idx})
                return

    def _after_frame(self, job: dict[str, Any], idx: int) -> None:
        self.check_done(job["id"])
        if job["id"] in self._cancelling:
            self.finish(job["id"], "cancelled", {"frame": idx})

    def _frame_failed(self, job: dict[str, Any], idx: int, error: dict[str, Any]) -> None:
        self.store.fail_frame(job["id"], idx, error)
        if job["sequence"]:
            self.hub.emit(job["id"], "frame_failed", {"frame": idx, "error": error})
            self._after_frame(job, idx)
        else:
            self.finish(job["id"], "failed", {"frame": idx}, error)

    def _worker_died(self, job: dict[str, Any], idx: int, worker: WorkerProcess) -> None:
        job_id = job["id"]
        if worker.proc is not None:
            worker.proc.wait()
        code = worker.proc.returncode if worker.proc else None
        with self._lock:
            stopping = self._stopping
        if stopping:
            self.store.requeue_frame(job_id, idx, crashed=False)
            return
        if job_id in self._cancelling:
            log.info("worker pid %s killed to cancel job %s", worker.pid, job_id)
            self.store.requeue_frame(job_id, idx, crashed=False)
            self.finish(job_id, "cancelled", {"frame": idx, "worker_restarted": True})
            return
        crashes = self.store.requeue_frame(job_id, idx, crashed=True)
        log.error(
            "engine worker pid %s died (exit %s) on job %s frame %d (crash %d of %d)",
            worker.pid,
            code,
            job_id,
            idx,
            crashes,
            MAX_FRAME_CRASHES,
        )
        if crashes >= MAX_FRAME_CRASHES:
            err = WorkerCrashed(
                f"frame {idx} crashed the engine worker {crashes} times (exit code {code}); "
                "it was given up",
                details={"frame": idx, "exit_code": code},
            )
            self._frame_failed(job, idx, err.to_dict())
