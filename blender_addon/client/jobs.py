"""The add-on's jobs: submit without blocking, follow their events, fetch the result.

`Jobs` belongs to the `Session` and never blocks or touches `bpy`: `submit()` queues the
request on the client's threads and returns a `Job` at once; the session's `tick()` (the
add-on's timer, or a headless loop) feeds it the job events and collects the replies. A
`Job` is plain data that the UI draws (state, progress, ETA, the latest preview) and an
operator polls; `wait()` is the blocking loop for `blender -b`, where timers do not fire.

Jobs survive a sidecar restart: the job row is on the sidecar's disk, so after the session
reconnects every unfinished job is watched again from the last event seen, and the
missed events (its result included) are replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._vendor.genart_protocol import Attachment, Event, GenartError, Reply

if TYPE_CHECKING:
    from .session import Session

SUBMITTING = "submitting"
QUEUED = "queued"
RUNNING = "running"
FETCHING = "fetching"  # completed on the sidecar, its pixels on the way
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


@dataclass
class Job:
    """One request to the sidecar, as the UI sees it."""

    label: str
    engine: str
    task: str | None
    params: dict[str, Any]
    state: str = SUBMITTING
    id: str | None = None
    step: int = 0
    steps: int = 0
    frame: int = 0
    frames: int = 1
    eta: float | None = None
    preview: Attachment | None = None
    preview_count: int = 0
    result: Reply | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""  # one line for people, naming the field to fix when there is one
    error_field: str | None = None
    last_seq: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    # sequences: frames stream in with `append`, results come back frame by frame
    sequence: bool = False
    frame_results: dict[int, Reply] = field(default_factory=dict)  # fetched, not yet taken
    frame_errors: dict[int, str] = field(default_factory=dict)
    frames_done: int = 0  # results fetched plus frames failed
    _future: Future[Reply] | None = field(default=None, repr=False)
    _fetches: dict[int, Future[Reply]] = field(default_factory=dict, repr=False)
    _appends: list[tuple[int, dict[str, Any], dict[str, Attachment]]] = field(
        default_factory=list, repr=False
    )
    _close: bool = field(default=False, repr=False)
    _sent: dict[int, Future[Reply]] = field(default_factory=dict, repr=False)  # appends

    def take_frames(self) -> dict[int, Reply]:
        """The frame results fetched since the last call (the caller writes them out)."""
        out, self.frame_results = self.frame_results, {}
        return out

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1] (frames and steps)."""
        if self.state == DONE:
            return 1.0
        per_frame = self.step / self.steps if self.steps else 0.0
        if self.sequence:
            running = per_frame if self.state == RUNNING else 0.0
            return min(1.0, (self.frames_done + running) / max(1, self.frames))
        return min(1.0, (self.frame + per_frame) / max(1, self.frames))

    @property
    def text(self) -> str:
        """'step 12/30, 4 s left', 'queued', 'failed: ...' — one line for a status bar."""
        if self.state == RUNNING and self.sequence:
            eta = f", {self.eta:.0f} s left in it" if self.eta is not None else ""
            return (
                f"{self.frames_done}/{self.frames} frames done, frame {self.frame} at step "
                f"{self.step}/{self.steps}{eta}"
            )
        if self.state == RUNNING and self.steps:
            frame = f"frame {self.frame + 1}/{self.frames}, " if self.frames > 1 else ""
            eta = f", {self.eta:.0f} s left" if self.eta is not None else ""
            return f"{frame}step {self.step}/{self.steps}{eta}"
        if self.state == FAILED:
            return f"failed: {self.error}"
        return self.state


def error_text(error: Mapping[str, Any] | BaseException) -> tuple[str, str | None]:
    """A sidecar error (its dict or the exception) as one line and the field it names."""
    err = error if isinstance(error, BaseException) else GenartError.from_dict(dict(error))
    field_ = getattr(err, "field", None)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    if field_:
        allowed = getattr(err, "allowed", None)
        message += (
            f" (fix {field_}" + (f"; allowed: {allowed}" if allowed is not None else "") + ")"
        )
    return message, field_


class Jobs:
    """The session's jobs; see the module docstring."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.jobs: list[Job] = []
        self._client: object | None = None  # the client the live jobs are watched on
        self._watches: list[Future[Reply]] = []
        self._early: dict[str, list[Event]] = {}  # events of jobs whose id is not known yet
        self._listeners: list[Callable[[Job], None]] = []
        session.add_listener(self._on_event)

    def add_listener(self, callback: Callable[[Job], None]) -> None:
        """Called (on the ticking thread) whenever a job changes."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Job], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # -- requests ----------------------------------------------------------------------
    def submit(
        self,
        engine: str,
        params: Mapping[str, Any],
        *,
        task: str | None = None,
        inputs: Mapping[str, Attachment] | None = None,
        label: str = "",
    ) -> Job:
        """Queues a still job; returns at once. A sidecar that is not ready fails the job
        with a line saying so (the caller reports it)."""
        job = Job(label=label or engine, engine=engine, task=task, params=dict(params))
        self.jobs.append(job)
        client = self.session.client
        if client is None or self.session.state != "ready":
            self._fail(job, f"the sidecar is not ready ({self.session.text})")
            return job
        self._client = client
        job._future = client.submit(engine, params, task=task, inputs=inputs)
        return job

    def submit_sequence(
        self,
        engine: str,
        params: Mapping[str, Any],
        *,
        task: str | None = None,
        frames: int,
        label: str = "",
    ) -> Job:
        """Opens a sequence job of `frames` frames; returns at once. Frames follow with
        `append` (queued here until the job id is known) and the input ends with `close`."""
        job = Job(
            label=label or engine,
            engine=engine,
            task=task,
            params=dict(params),
            frames=frames,
            sequence=True,
        )
        self.jobs.append(job)
        client = self.session.client
        if client is None or self.session.state != "ready":
            self._fail(job, f"the sidecar is not ready ({self.session.text})")
            return job
        self._client = client
        job._future = client.submit(engine, params, task=task, sequence=True, frames=frames)
        return job

    def append(
        self,
        job: Job,
        frame: int,
        inputs: Mapping[str, Attachment],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Sends frame `frame` of a sequence (its inputs and per-frame parameter values)."""
        job._appends.append((frame, dict(params or {}), dict(inputs)))
        self._flush(job)

    def close(self, job: Job) -> None:
        """No more frames: the job completes when the frames sent are settled."""
        job._close = True
        self._flush(job)

    def _flush(self, job: Job) -> None:
        client = self.session.client
        if job.id is None or client is None or job.finished:
            return
        for frame, params, inputs in job._appends:
            body: dict[str, Any] = {"job": job.id, "frame": frame}
            if params:
                body["params"] = params
            job._sent[frame] = client.request("append", body, inputs.values())
        job._appends = []
        if job._close:
            job._close = False
            client.request("close", {"job": job.id})

    def cancel(self, job: Job) -> None:
        """Asks the sidecar to cancel; the `cancelled` event settles the job."""
        if job.finished:
            return
        client = self.session.client
        if job.id is None:  # not submitted yet: nothing runs on the sidecar
            job._future = None
            self._set(job, CANCELLED)
            return
        if client is not None:
            client.request("cancel", {"job": job.id})

    def forget(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)

    def active(self) -> list[Job]:
        return [j for j in self.jobs if not j.finished]

    # -- driving -----------------------------------------------------------------------
    def tick(self) -> None:
        """Collects replies; called from `Session.tick()` after it drained the events."""
        client = self.session.client
        if client is not None and self.session.state == "ready" and client is not self._client:
            self._rewatch(client)
        for watch in [w for w in self._watches if w.done()]:
            self._watches.remove(watch)
            try:
                backlog = watch.result().result.get("events", [])
            except (GenartError, OSError):
                continue  # the connection went again: the next reconnect watches anew
            for params in backlog:  # oldest first; _on_event skips what it has seen
                self._on_event(Event.from_params(params, []))
        for job in list(self.jobs):
            fut = job._future
            if fut is None or not fut.done():
                continue
            job._future = None
            try:
                reply = fut.result()
            except (GenartError, OSError) as exc:
                if job.state in (SUBMITTING, FETCHING):
                    self._fail(job, exc)
                continue
            if job.state == SUBMITTING:
                job.id = str(reply.result["job"])
                self._set(job, QUEUED)
                self._flush(job)
                for ev in self._early.pop(job.id, []):
                    self._on_event(ev)
            elif job.state == FETCHING:
                job.result = reply
                self._set(job, DONE)
        for job in self.jobs:
            for frame, fut in list(job._sent.items()):
                if fut.done():
                    del job._sent[frame]
                    refused = fut.exception()
                    if refused is not None and not job.finished:  # that frame fails
                        job.frame_errors[frame] = error_text(refused)[0]
                        job.frames_done += 1
                        self._notify(job)
            for frame, fut in list(job._fetches.items()):
                if not fut.done():
                    continue
                del job._fetches[frame]
                try:
                    job.frame_results[frame] = fut.result()
                except (GenartError, OSError) as exc:
                    job.frame_errors[frame] = error_text(exc)[0]
                job.frames_done += 1
                self._notify(job)
            if job.sequence and job.state == FETCHING and not job._fetches:
                self._set(job, DONE)

    def wait(
        self,
        job: Job,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        interval: float = 0.05,
    ) -> Job:
        """Blocks, ticking the session, until the job is finished (headless use)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = (job.state, job.step, job.frame, job.frames_done)
        while not job.finished:
            self.session.tick()
            now = (job.state, job.step, job.frame, job.frames_done)
            if on_update is not None and now != seen:
                on_update(job)
            seen = now
            if self.session.state == "dead":
                self._fail(job, f"the sidecar is gone: {self.session.reason}")
            elif deadline is not None and time.monotonic() >= deadline:
                self._fail(job, f"no result within {timeout:.0f} s")
            else:
                time.sleep(interval)
        if on_update is not None and (job.state, job.step, job.frame, job.frames_done) != seen:
            on_update(job)  # the finished state, unless the loop just reported it
        return job

    # -- internals ---------------------------------------------------------------------
    def _job(self, job_id: str | None) -> Job | None:
        return next((j for j in self.jobs if j.id is not None and j.id == job_id), None)

    def _on_event(self, ev: Event) -> None:
        job = self._job(ev.job)
        if job is None and ev.job is not None:
            # Events can be drained before the submit reply that names their job is
            # collected: keep them until it is (bounded; unknown jobs are not ours).
            if any(j.state == SUBMITTING for j in self.jobs):
                self._early.setdefault(ev.job, []).append(ev)
                if len(self._early) > 64:
                    self._early.pop(next(iter(self._early)))
            return
        if job is None or job.finished:
            return
        if ev.seq:
            if ev.seq <= job.last_seq:
                return  # replayed after a reconnect: already applied
            job.last_seq = ev.seq
        data = ev.data
        if ev.type in ("queued", "started"):
            self._set(job, RUNNING if ev.type == "started" else QUEUED)
        elif ev.type == "progress":
            job.frame = int(data.get("frame") or 0)
            job.frames = int(data.get("frames") or job.frames or 1)
            job.step, job.steps = int(data.get("step") or 0), int(data.get("steps") or 0)
            job.eta = data.get("eta")
            self._set(job, RUNNING)
        elif ev.type == "preview" and ev.attachment is not None:
            job.preview = ev.attachment
            job.preview_count += 1
            self._notify(job)
        elif ev.type == "result":
            job.warnings.extend(str(w) for w in data.get("warnings") or [])
            client = self.session.client
            if job.sequence and client is not None:
                frame = int(data.get("frame") or 0)
                job._fetches[frame] = client.request("result", {"job": job.id, "frame": frame})
        elif ev.type == "frame_failed":
            frame = int(data.get("frame") or 0)
            job.frame_errors[frame] = error_text(data.get("error") or {"message": "failed"})[0]
            job.frames_done += 1
            self._notify(job)
        elif ev.type == "completed":
            if job.sequence:
                self._set(job, FETCHING if job._fetches else DONE)
                return
            client = self.session.client
            if client is None:
                self._fail(job, "the connection was lost before the result arrived")
                return
            job._future = client.request("result", {"job": job.id, "frame": 0})
            self._set(job, FETCHING)
        elif ev.type == "failed":
            self._fail(job, data.get("error") or {"message": "the job failed"})
        elif ev.type == "cancelled":
            self._set(job, CANCELLED)

    def _rewatch(self, client: Any) -> None:
        """A new connection (the sidecar restarted or was reconnected): follow the
        unfinished jobs again from the last event each one saw."""
        self._client = client
        for job in self.active():
            if job.id is not None:
                self._watches.append(client.watch(job.id, since=job.last_seq))
            elif job.state == SUBMITTING and job._future is None:
                self._fail(job, "the connection was lost while submitting")

    def _fail(self, job: Job, error: Mapping[str, Any] | BaseException | str) -> None:
        if isinstance(error, str):
            job.error, job.error_field = error, None
        else:
            job.error, job.error_field = error_text(error)
        self._set(job, FAILED)

    def _set(self, job: Job, state: str) -> None:
        job.state = state
        self._notify(job)

    def _notify(self, job: Job) -> None:
        for callback in list(self._listeners):
            callback(job)


__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "FETCHING",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "SUBMITTING",
    "Job",
    "Jobs",
    "error_text",
]
