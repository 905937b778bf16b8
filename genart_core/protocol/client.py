"""Clients of the genart sidecar, stdlib only so Blender (and scripts) can carry them.

`Client` blocks: for scripts, `blender -b` and tests. It pings while it waits and raises
`SidecarUnresponsive` when the sidecar stops answering (a hung process shows nothing on the
socket; only a missed ping tells). `ThreadedClient` never blocks its caller: connecting,
writing and reading happen on its own threads; replies come back as futures and job events
through a queue that a UI timer drains.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import messages
from .connection import Address, ConnectionInfo
from .errors import (
    ConnectionLost,
    GenartError,
    InvalidRequest,
    JobCancelled,
    RequestTimeout,
    SidecarUnresponsive,
)
from .framing import PROTOCOL_MAJOR, Attachment, FrameStream, Message

DEFAULT_PING_INTERVAL = 1.5
DEFAULT_MAX_MISSED = 3


@dataclass
class Reply:
    """A successful response: its result object and any attachments, by name."""

    result: dict[str, Any]
    attachments: dict[str, Attachment] = field(default_factory=dict)


@dataclass
class Event:
    """One job event (`type` is one of messages.EVENT_TYPES) or, from ThreadedClient, a
    connection event (`type` == "connection", `data["state"]`)."""

    type: str
    job: str | None
    seq: int
    data: dict[str, Any]
    attachment: Attachment | None = None

    @property
    def terminal(self) -> bool:
        return self.type in messages.TERMINAL_EVENTS

    @classmethod
    def from_params(cls, params: dict[str, Any], attachments: list[Attachment]) -> Event:
        return cls(
            type=params.get("type", ""),
            job=params.get("job"),
            seq=int(params.get("seq", 0)),
            data=params.get("data") or {},
            attachment=attachments[0] if attachments else None,
        )


def _resolve(
    target: str | os.PathLike[str] | Address | ConnectionInfo, token: str | None
) -> tuple[Address, str]:
    if isinstance(target, ConnectionInfo):
        return target.address, token or target.token
    if isinstance(target, Address):
        if token is None:
            raise InvalidRequest("a token is needed to connect to an address", field="token")
        return target, token
    info = ConnectionInfo.read(Path(target))
    return info.address, token or info.token


def _hello_params(token: str, client_name: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "token": token,
        "protocol": {"min": PROTOCOL_MAJOR, "max": PROTOCOL_MAJOR},
        "client": {"name": client_name},
    }
    if extra:
        params["client"].update(extra)
    return params


def _submit_params(
    engine: str,
    params: Mapping[str, Any] | None,
    task: str | None,
    inputs: Mapping[str, Attachment] | None,
    sequence: bool,
    frames: int | None,
    idempotency_key: str | None,
) -> tuple[dict[str, Any], list[Attachment]]:
    body: dict[str, Any] = {"engine": engine, "params": dict(params or {}), "sequence": sequence}
    if task is not None:
        body["task"] = task
    if frames is not None:
        body["frames"] = frames
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    atts = list((inputs or {}).values())
    return body, atts


class Client:
    """A blocking client. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        max_missed: int = DEFAULT_MAX_MISSED,
    ) -> None:
        self.sock = sock
        self.stream = FrameStream(sock, stall_timeout=ping_interval * max_missed)
        self.ping_interval = ping_interval
        self.max_missed = max_missed
        self.welcome: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending_events: deque[Event] = deque()
        self._last_seen = time.monotonic()
        self._closed = False

    @classmethod
    def connect(
        cls,
        target: str | os.PathLike[str] | Address | ConnectionInfo,
        token: str | None = None,
        *,
        client_name: str = "genart-client",
        client_info: Mapping[str, Any] | None = None,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> Client:
        """Connects and performs the handshake; `target` is a connection file or address."""
        address, tok = _resolve(target, token)
        try:
            sock = address.connect(timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot reach the sidecar at {address}: {exc}") from None
        client = cls(sock, **kwargs)
        try:
            client.welcome = client.call(
                "hello", _hello_params(tok, client_name, client_info), timeout=timeout
            ).result
        except BaseException:
            client.close()
            raise
        return client

    # -- plumbing --------------------------------------------------------------------
    def _read(self, deadline: float | None) -> Message:
        """Reads one frame, pinging while the line is quiet."""
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise RequestTimeout("no answer from the sidecar in time")
            wait = self.ping_interval
            if deadline is not None:
                wait = min(wait, deadline - now)
            self.sock.settimeout(max(wait, 0.01))
            try:
                msg = self.stream.read_message()
                self._last_seen = time.monotonic()
                return msg
            except TimeoutError:
                silent = time.monotonic() - self._last_seen
                if silent >= self.ping_interval * self.max_missed:
                    self.close()
                    raise SidecarUnresponsive(
                        f"the sidecar has not answered for {silent:.1f} s (hung or stopped)"
                    ) from None
                self._send(messages.request(next(self._ids), "ping"))
            except OSError as exc:
                self.close()
                raise ConnectionLost(f"connection to the sidecar failed: {exc}") from None

    def _send(self, envelope: dict[str, Any], attachments: Iterable[Attachment] = ()) -> None:
        if self._closed:
            raise ConnectionLost("the connection is closed")
        self.sock.settimeout(None)
        try:
            self.stream.write_message(envelope, attachments)
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"connection to the sidecar failed: {exc}") from None

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        attachments: Iterable[Attachment] = (),
        *,
        timeout: float | None = 60.0,
    ) -> Reply:
        """Sends one request and returns its reply; events that arrive meanwhile are kept."""
        req_id = next(self._ids)
        self._send(messages.request(req_id, method, dict(params or {})), attachments)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            env = msg.envelope
            if "id" not in env:
                if env.get("method") == messages.EVENT_NOTIFICATION:
                    self._pending_events.append(
                        Event.from_params(env.get("params") or {}, msg.attachments)
                    )
                continue
            if env.get("id") != req_id:
                continue  # a pong or a reply to an abandoned request
            if "error" in env:
                raise GenartError.from_dict(env["error"])
            return Reply(env.get("result") or {}, {a.name: a for a in msg.attachments})

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next job event pushed by the sidecar, or None after `timeout` seconds."""
        if self._pending_events:
            return self._pending_events.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                msg = self._read(deadline)
            except RequestTimeout:
                return None
            env = msg.envelope
            if "id" not in env and env.get("method") == messages.EVENT_NOTIFICATION:
                return Event.from_params(env.get("params") or {}, msg.attachments)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol's requests -----------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.call("ping", timeout=self.ping_interval * self.max_missed).result

    def submit(
        self,
        engine: str,
        params: Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        inputs: Mapping[str, Attachment] | None = None,
        sequence: bool = False,
        frames: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        body, atts = _submit_params(engine, params, task, inputs, sequence, frames, idempotency_key)
        return str(self.call("submit", body, atts).result["job"])

    def append(
        self,
        job: str,
        frame: int,
        inputs: Mapping[str, Attachment] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"job": job, "frame": frame}
        if params:
            body["params"] = dict(params)
        return self.call("append", body, list((inputs or {}).values())).result

    def close_input(self, job: str) -> dict[str, Any]:
        return self.call("close", {"job": job}).result

    def status(self, job: str) -> dict[str, Any]:
        return self.call("status", {"job": job}).result

    def events(self, job: str | None = None, since: int = 0, watch: bool = False) -> list[Event]:
        params: dict[str, Any] = {"since": since, "watch": watch}
        if job is not None:
            params["job"] = job
        reply = self.call("events", params)
        return [Event.from_params(e, []) for e in reply.result.get("events", [])]

    def result(self, job: str, frame: int = 0) -> Reply:
        return self.call("result", {"job": job, "frame": frame})

    def cancel(self, job: str) -> dict[str, Any]:
        return self.call("cancel", {"job": job}).result

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return list(self.call("list", params).result.get("jobs", []))

    def shutdown(self) -> None:
        self.call("shutdown")

    def wait(
        self,
        job: str,
        on_event: Callable[[Event], None] | None = None,
        *,
        since: int = 0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Event:
        """Follows a job to its terminal event, calling `on_event` for each event.

        Starts from `since` (0: the job's whole history), so a client that reconnects after
        a crash continues where it was. Raises the job's error when it failed and
        `JobCancelled` when it was cancelled, unless raise_on_failure is False.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = since
        backlog = self.events(job, since=since, watch=True)
        queue_: deque[Event] = deque(backlog)
        while True:
            while queue_:
                ev = queue_.popleft()
                if ev.job != job or (ev.seq and ev.seq <= seen):
                    continue
                if ev.seq:
                    seen = ev.seq
                if on_event is not None:
                    on_event(ev)
                if ev.terminal:
                    if raise_on_failure and ev.type == "failed":
                        raise GenartError.from_dict(ev.data.get("error") or {})
                    if raise_on_failure and ev.type == "cancelled":
                        raise JobCancelled(f"job {job} was cancelled")
                    return ev
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if remaining == 0.0:
                raise RequestTimeout(f"job {job} did not finish in time")
            nxt = self.next_event(timeout=remaining)
            if nxt is not None:
                queue_.append(nxt)


class ThreadedClient:
    """A client whose caller never blocks: for Blender's main thread.

    `start()` returns at once; a background thread connects and shakes hands. Requests
    return futures; events (job events and connection-state changes) arrive on
    `self.events`, a queue the UI drains with `poll()` from a timer.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Address | ConnectionInfo,
        token: str | None = None,
        *,
        client_name: str = "genart-client",
        client_info: Mapping[str, Any] | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        max_missed: int = DEFAULT_MAX_MISSED,
        connect_timeout: float = 5.0,
    ) -> None:
        self._target = target
        self._token = token
        self._client_name = client_name
        self._client_info = dict(client_info or {})
        self.ping_interval = ping_interval
        self.max_missed = max_missed
        self.connect_timeout = connect_timeout
        self.events: queue.Queue[Event] = queue.Queue()
        self.state = "idle"  # idle, connecting, ready, lost, unresponsive, closed
        self.state_reason = ""
        self.welcome: dict[str, Any] = {}
        self.ready = threading.Event()
        self._sock: socket.socket | None = None
        self._stream: FrameStream | None = None
        self._outbox: queue.Queue[tuple[dict[str, Any], list[Attachment]] | None] = queue.Queue()
        self._futures: dict[int, Future[Reply]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._last_seen = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ThreadedClient:
        self._set_state("connecting")
        t = threading.Thread(target=self._run, name="genart-client", daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def _run(self) -> None:
        try:
            address, token = _resolve(self._target, self._token)
            sock = address.connect(self.connect_timeout)
        except (OSError, GenartError, ValueError) as exc:
            self._fail("lost", f"cannot reach the sidecar: {exc}")
            return
        self._sock = sock
        self._stream = FrameStream(sock)
        self._last_seen = time.monotonic()
        for target, name in (
            (self._write_loop, "genart-client-writer"),
            (self._heartbeat_loop, "genart-client-heartbeat"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        hello = self.request("hello", _hello_params(token, self._client_name, self._client_info))
        hello.add_done_callback(self._on_welcome)
        self._read_loop()

    def _on_welcome(self, fut: Future[Reply]) -> None:
        try:
            self.welcome = fut.result().result
        except GenartError as exc:
            self._fail("lost", exc.message)
            return
        self._set_state("ready")
        self.ready.set()

    def _set_state(self, state: str, reason: str = "") -> None:
        with self._lock:
            if self.state == state or self.state == "closed":
                return
            self.state, self.state_reason = state, reason
        self.events.put(Event("connection", None, 0, {"state": state, "reason": reason}))

    def _fail(self, state: str, reason: str) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._set_state(state, reason)
        err: GenartError = (
            SidecarUnresponsive(reason) if state == "unresponsive" else ConnectionLost(reason)
        )
        with self._lock:
            futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(err)
        self._outbox.put(None)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        self.ready.set()

    def close(self) -> None:
        self._fail("closed", "closed by the client")
        with self._lock:
            self.state = "closed"

    # -- threads ---------------------------------------------------------------------
    def _read_loop(self) -> None:
        assert self._stream is not None
        while not self._stop.is_set():
            try:
                msg = self._stream.read_message()
            except GenartError as exc:
                self._fail("lost", exc.message)
                return
            except OSError as exc:
                self._fail("lost", f"connection to the sidecar failed: {exc}")
                return
            self._last_seen = time.monotonic()
            env = msg.envelope
            if "id" not in env:
                if env.get("method") == messages.EVENT_NOTIFICATION:
                    self.events.put(Event.from_params(env.get("params") or {}, msg.attachments))
                continue
            with self._lock:
                fut = self._futures.pop(env.get("id"), None)  # type: ignore[arg-type]
            if fut is None:
                continue
            if "error" in env:
                fut.set_exception(GenartError.from_dict(env["error"]))
            else:
                fut.set_result(Reply(env.get("result") or {}, {a.name: a for a in msg.attachments}))

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None or self._stop.is_set():
                return
            envelope, attachments = item
            try:
                assert self._stream is not None
                self._stream.write_message(envelope, attachments)
            except OSError as exc:
                self._fail("lost", f"connection to the sidecar failed: {exc}")
                return
            except GenartError as exc:
                with self._lock:
                    fut = self._futures.pop(envelope.get("id"), None)  # type: ignore[arg-type]
                if fut is not None:
                    fut.set_exception(exc)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.ping_interval / 2):
            silent = time.monotonic() - self._last_seen
            if silent >= self.ping_interval * self.max_missed:
                self._fail(
                    "unresponsive",
                    f"the sidecar has not answered for {silent:.1f} s (hung or stopped)",
                )
                return
            if silent >= self.ping_interval:
                self.request("ping")

    # -- requests --------------------------------------------------------------------
    def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        attachments: Iterable[Attachment] = (),
    ) -> Future[Reply]:
        """Queues a request; its reply (or error) arrives on the returned future."""
        fut: Future[Reply] = Future()
        if self._stop.is_set():
            fut.set_exception(ConnectionLost(self.state_reason or "not connected"))
            return fut
        req_id = next(self._ids)
        with self._lock:
            self._futures[req_id] = fut
        self._outbox.put((messages.request(req_id, method, dict(params or {})), list(attachments)))
        return fut

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        attachments: Iterable[Attachment] = (),
        timeout: float | None = 60.0,
    ) -> Reply:
        """Blocking convenience for worker threads (never call it from a UI thread)."""
        fut = self.request(method, params, attachments)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise RequestTimeout(f"no answer to {method} in {timeout} s") from None

    def submit(
        self,
        engine: str,
        params: Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        inputs: Mapping[str, Attachment] | None = None,
        sequence: bool = False,
        frames: int | None = None,
        idempotency_key: str | None = None,
    ) -> Future[Reply]:
        body, atts = _submit_params(engine, params, task, inputs, sequence, frames, idempotency_key)
        return self.request("submit", body, atts)

    def watch(self, job: str, since: int = 0) -> Future[Reply]:
        """Subscribes to a job's events; its history since `since` comes in the reply."""
        return self.request("events", {"job": job, "since": since, "watch": True})

    def poll(self, max_items: int = 1000) -> list[Event]:
        """Drains queued events without blocking (call from a UI timer)."""
        out: list[Event] = []
        while len(out) < max_items:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        return out
