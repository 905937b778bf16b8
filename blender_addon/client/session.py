"""The add-on's one connection to a sidecar: launch or connect, watch, restart, stop.

`Session` never blocks on the network and never imports `bpy`: the sidecar's I/O runs on
the `ThreadedClient`'s threads, and whoever owns the session calls `tick()` now and then
(the add-on from a `bpy.app.timers` callback; headless code, where timers do not fire
while a script blocks, by hand or through `wait()`). `tick()` drains the client's events
and moves the state machine:

    stopped -> starting -> ready
                  |          | lost / unresponsive / failed start
                  v          v
               restarting (back-off 0.5, 1, 2, 4 s ...) -> starting ... -> dead (cap)

In launch mode the session starts the sidecar itself (`--parent-pid` so it exits with
Blender, `--state-dir`, never the token on the command line) and owns it: a lost owned
sidecar is killed if still there and started again. A sidecar that exits with code 3
found another one holding the state dir; the session then connects to that one. In
connect mode a lost connection is retried with the same back-off and cap.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import IO, Any

from .._vendor.genart_protocol import (
    Address,
    ConnectionInfo,
    Event,
    GenartError,
    ThreadedClient,
    default_state_dir,
)
from .jobs import Jobs
from .settings import CONNECT, LAUNCH, EffectiveSettings, parse_address

STOPPED = "stopped"
STARTING = "starting"
READY = "ready"
RESTARTING = "restarting"
DEAD = "dead"
STATES = (STOPPED, STARTING, READY, RESTARTING, DEAD)

BACKOFF = (0.5, 1.0, 2.0, 4.0)  # seconds before restart n (the last one repeats)
MAX_RESTARTS = 5
LAUNCH_TIMEOUT = 60.0  # seconds a launched sidecar has to write its connection file
STABLE_AFTER = 60.0  # seconds ready after which the restart count starts again from 0
ENGINES_POLL = 0.5  # seconds between pings while the sidecar's engines are starting
ENGINES_TIMEOUT = 600.0  # seconds a welcomed sidecar may take to list its engines
EXIT_LOCKED = 3  # sidecar/__main__.py: another sidecar holds the state dir
CLIENT_NAME = "genart-blender"
NOT_CONNECTED = "not connected"
LAUNCH_LOG = "launch.log"


class Session:
    """Owns the connection to one sidecar (and the sidecar itself in launch mode).

    Not thread-safe: one thread (Blender's main thread) calls start/tick/stop.
    """

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        backoff: Sequence[float] = BACKOFF,
        max_restarts: int = MAX_RESTARTS,
        launch_timeout: float = LAUNCH_TIMEOUT,
        client_info: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state_dir_option = Path(state_dir) if state_dir is not None else None
        self.extra_args = tuple(extra_args)
        self.backoff = tuple(backoff) or (0.0,)
        self.max_restarts = max_restarts
        self.launch_timeout = launch_timeout
        self.client_info = dict(client_info or {})
        self.client_options = dict(client_options or {})  # ping_interval, max_missed, ...
        self._clock = clock

        self.settings: EffectiveSettings | None = None
        self.state = STOPPED
        self.reason = ""  # why the last attempt failed (restarting, dead)
        self.restarts = 0
        self.client: ThreadedClient | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the sidecar we launched
        self.owned = False  # the connected sidecar is `proc`
        self.connection_file: Path | None = None
        self._log: IO[bytes] | None = None
        self._launch_deadline = 0.0
        self._next_attempt = 0.0
        self._ready_since = 0.0
        self._listeners: list[Callable[[Event], None]] = []
        self._target: Path | ConnectionInfo | Address | None = None
        self._token: str | None = None
        self._engines_probe: Future[Any] | None = None
        self._engines_since = 0.0
        self._next_probe = 0.0
        self.jobs = Jobs(self)  # after _listeners: it listens to the session's events
        self._models: Future[Any] | None = None
        self.models: list[dict[str, Any]] | None = None  # the last `models` answer
        self.models_error = ""

    # -- what the UI shows -------------------------------------------------------------
    @property
    def welcome(self) -> dict[str, Any]:
        return self.client.welcome if self.client is not None and self.state == READY else {}

    @property
    def state_dir(self) -> Path:
        """The settings' state dir, else the one given to the session, else the default."""
        if self.settings is not None and self.settings.state_dir:
            return Path(self.settings.state_dir).expanduser()
        return self._state_dir_option or default_state_dir()

    @property
    def pid(self) -> int | None:
        """The connected sidecar's pid (from its welcome), or None."""
        pid = self.welcome.get("pid")
        return int(pid) if pid is not None else None

    def engine_names(self) -> list[str]:
        return [str(e.get("name", "?")) for e in self.welcome.get("engines", [])]

    @property
    def text(self) -> str:
        """One human line: 'ready: cpu, engines sd, fake', 'restarting (2/5): ...'."""
        if self.state == STOPPED:
            return NOT_CONNECTED
        if self.state == READY:
            w = self.welcome
            engines = ", ".join(self.engine_names()) or "none"
            return f"ready: {w.get('device', '?')}, engines {engines}"
        if self.state == STARTING:
            return "starting the sidecar" if self._launching() else "connecting"
        if self.state == RESTARTING:
            return f"restarting ({self.restarts}/{self.max_restarts}): {self.reason}"
        return f"dead: {self.reason}"

    @property
    def memory_text(self) -> str:
        """'8.1 of 24.0 GiB free on cuda:0', or what is known of the device's memory."""
        mem = self.welcome.get("memory") or {}
        device = mem.get("device") or self.welcome.get("device", "?")
        free, total = mem.get("free"), mem.get("total")
        if isinstance(free, (int, float)) and isinstance(total, (int, float)) and total > 0:
            return f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free on {device}"
        if device == "auto":
            return "device memory known once a job has picked the device"
        return f"memory of {device} not reported (a CPU, or no model loaded yet)"

    @property
    def models_text(self) -> str:
        """'3 models: sd1 base ×2, controlnet ×1', 'listing models...' or the error."""
        if self.models is None:
            return self.models_error or ("listing models..." if self._models else "")
        if not self.models:
            return "no models found (set GENART_MODELS or --models, or fill the HF cache)"
        kinds: dict[str, int] = {}
        for m in self.models:
            key = f"{m.get('family', '?')} {m.get('kind', '?')}".replace("unknown ", "")
            kinds[key] = kinds.get(key, 0) + 1
        parts = ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items()))
        return f"{len(self.models)} models: {parts}"

    def list_models(self) -> None:
        """Asks the sidecar for its models (no hashing: fast); tick() collects the answer."""
        if self.client is not None and self.state == READY:
            self.models, self.models_error = None, ""
            self._models = self.client.request("models", {"hash": False})

    def engine_version(self, engine: str) -> str:
        """The version the sidecar's welcome gives `engine` ("" if unknown)."""
        for e in self.welcome.get("engines", []):
            if e.get("name") == engine:
                return str(e.get("version", ""))
        return ""

    def default_model(self, engine: str = "sd") -> dict[str, Any] | None:
        """What `engine` runs when a request names no model (the embedded micro model), as
        its welcome says: name, path, sha256, native size and notes; None if it has none."""
        for e in self.welcome.get("engines", []):
            if e.get("name") == engine and isinstance(e.get("default_model"), dict):
                return dict(e["default_model"])
        return None

    def default_model_text(self, engine: str = "sd") -> str:
        """'embedded genart-micro-sd (64 px textures ...)' or '' when there is none."""
        default = self.default_model(engine)
        if not default:
            return ""
        return f"embedded {default['name']}, used when no model is set"

    def resolved_model(self, engine: str, model: str) -> str:
        """`model`, or the name of the engine's default model when `model` is empty."""
        default = None if model else self.default_model(engine)
        return str(default["name"]) if default else model

    def model_sha(self, model: str, engine: str = "sd") -> str | None:
        """The sha256 of a model: the embedded default's from the welcome when `model` is
        empty, else what the last hashed `models` answer gives its id or path."""
        if not model:
            default = self.default_model(engine)
            return str(default["sha256"]) if default else None
        for m in self.models or []:
            if model and model in (m.get("id"), m.get("path")):
                sha = m.get("sha256")
                return str(sha) if sha else None
        return None

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Job events drained by tick() go to these callbacks (on the ticking thread)."""
        self._listeners.append(callback)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, settings: EffectiveSettings) -> Session:
        """Begins launching or connecting; returns at once (tick() carries it on)."""
        self.stop()
        self.settings = settings
        self.restarts = 0
        self.reason = ""
        self._attempt()
        return self

    def tick(self) -> str:
        """Drains events and advances the state machine; cheap, never blocks for long."""
        now = self._clock()
        if self.state == RESTARTING and now >= self._next_attempt:
            self._attempt()
        if self.state == STARTING and self.client is None:
            self._watch_launch(now)
        if self.client is not None:
            self._drain()
        self.jobs.tick()
        if self._models is not None and self._models.done():
            future, self._models = self._models, None
            try:
                self.models = list(future.result().result.get("models", []))
            except (GenartError, OSError, AttributeError, TypeError, ValueError) as exc:
                self.models_error = f"models not listed: {_message(exc)}"
        if self.state == READY and now - self._ready_since >= STABLE_AFTER:
            self.restarts = 0
        return self.state

    def wait(
        self,
        timeout: float,
        *,
        until: Sequence[str] = (READY, DEAD),
        stop_on_failure: bool = False,
        interval: float = 0.02,
    ) -> str:
        """Ticks until the state is one of `until` (or, with stop_on_failure, an attempt
        failed) or `timeout` passes. For headless scripts and the check operator."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.tick()
            if state in until or (stop_on_failure and state == RESTARTING):
                return state
            if time.monotonic() >= deadline:
                return state
            time.sleep(interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops an owned sidecar (shutdown request, then terminate, then kill) and closes
        the client. A sidecar the session did not start is left running."""
        client, proc, owned = self.client, self.proc, self.owned
        self.client, self.proc, self.owned = None, None, False
        asked = False
        if client is not None:
            if owned and client.state == "ready":
                try:
                    client.request("shutdown").result(min(timeout, 2.0))
                    asked = True
                except (GenartError, FutureTimeout, OSError):
                    pass
            client.close()
        if proc is not None:
            _end_process(proc, timeout if asked else 0.0)
        self._close_log()
        self.state = STOPPED

    # -- internals -----------------------------------------------------------------------
    def _launching(self) -> bool:
        return self.settings is not None and self.settings.mode == LAUNCH

    def _attempt(self) -> None:
        assert self.settings is not None
        self.state = STARTING
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:  # a lost or hung sidecar of ours: make room for a new one
            _end_process(self.proc, 1.0)
            self.proc = None
        self.owned = False
        self._close_log()
        try:
            if self.settings.mode == LAUNCH:
                self._spawn()
            else:
                self._connect_configured()
        except (OSError, ValueError, GenartError) as exc:
            self._failed(_message(exc))

    def _spawn(self) -> None:
        assert self.settings is not None
        state_dir = self.state_dir.expanduser()
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state_dir / "logs").mkdir(exist_ok=True, mode=0o700)
        cfile = self.settings.connection_file
        self.connection_file = Path(cfile) if cfile else state_dir / "connection.json"
        argv = [
            *self.settings.launch_command,
            "--state-dir",
            str(state_dir),
            "--parent-pid",
            str(os.getpid()),
            *(["--connection-file", cfile] if cfile else []),
            *[arg for folder in self.settings.models for arg in ("--models", folder)],
            *self.extra_args,
        ]
        self._log = open(state_dir / "logs" / LAUNCH_LOG, "ab")  # noqa: SIM115 (kept open)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise OSError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        self._launch_deadline = self._clock() + self.launch_timeout

    def _watch_launch(self, now: float) -> None:
        """A launched sidecar: wait for its connection file (with its pid), or its exit."""
        proc, cfile = self.proc, self.connection_file
        if proc is None or cfile is None:
            return
        code = proc.poll()
        if code == EXIT_LOCKED:  # another sidecar holds the state dir: use that one
            self.proc = None
            self._close_log()
            self._connect(cfile, None)
            return
        if code is not None:
            self.proc = None
            tail = self._log_tail()
            self._failed(f"the sidecar exited with code {code}" + (f": {tail}" if tail else ""))
            return
        info = _read_info(cfile)
        if info is not None and info.pid == proc.pid:
            self.owned = True
            self._connect(info, None)
        elif now >= self._launch_deadline:
            self._failed(f"the sidecar did not start within {self.launch_timeout:.0f} s")

    def _connect_configured(self) -> None:
        assert self.settings is not None
        cfile = self.settings.connection_file
        self.connection_file = Path(cfile) if cfile else self.state_dir / "connection.json"
        if not self.settings.address:
            self._connect(self.connection_file, None)
            return
        host, port = parse_address(self.settings.address)
        info = _read_info(self.connection_file)
        if info is None:
            raise ValueError(
                f"connecting to {self.settings.address} needs the sidecar's token: set the "
                "connection file to a copy of that sidecar's connection.json"
            )
        self._connect(Address("tcp", host=host, port=port), info.token)

    def _await_engines(self) -> None:
        """The sidecar's engine worker is still starting (its welcome said engines_ready:
        false and listed none): ping every ENGINES_POLL s and, once ping says they are
        ready, say hello again on a new connection, which lists them (protocol §3). The
        session stays `starting` meanwhile, so `wait()` and operators wait for engines."""
        assert self.client is not None
        now = self._clock()
        if self._engines_since == 0.0:
            self._engines_since = now
        if now - self._engines_since > ENGINES_TIMEOUT:
            self._engines_since = 0.0
            self._failed(f"the sidecar's engines did not start within {ENGINES_TIMEOUT:.0f} s")
            return
        probe = self._engines_probe
        if probe is None:
            if now >= self._next_probe:
                self._engines_probe = self.client.request("ping")
            return
        if not probe.done():
            return
        self._engines_probe = None
        self._next_probe = now + ENGINES_POLL
        try:
            ready = bool(probe.result().result.get("engines_ready"))
        except (GenartError, OSError):
            return  # a lost connection shows in the client's state
        if ready and self._target is not None:
            old, self.client = self.client, None
            old.close()
            self._engines_since = 0.0
            self._connect(self._target, self._token)

    def _connect(self, target: Path | ConnectionInfo | Address, token: str | None) -> None:
        self._target, self._token = target, token
        info = {"blender_addon": True, **self.client_info}
        self.client = ThreadedClient(
            target, token, client_name=CLIENT_NAME, client_info=info, **self.client_options
        ).start()

    def _drain(self) -> None:
        assert self.client is not None
        for ev in self.client.poll():
            if ev.type != "connection":
                for callback in self._listeners:
                    callback(ev)
        cstate = self.client.state
        if cstate == "ready" and self.state == STARTING:
            if not self.client.welcome.get("engines_ready", True):
                self._await_engines()  # welcomed before the worker listed its engines
                return
            self.state = READY
            self.reason = ""
            self._ready_since = self._clock()
            self.list_models()  # for the panel and the check: cheap without hashing
        elif cstate in ("lost", "unresponsive"):
            self._failed(self.client.state_reason or cstate)

    def _failed(self, reason: str) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # hung or half-dead; _attempt kills it if it lingers
        self.reason = reason
        if self.restarts >= self.max_restarts:
            if self.proc is not None:
                _end_process(self.proc, 1.0)
                self.proc = None
            self._close_log()
            self.state = DEAD
            self.reason = f"gave up after {self.restarts} restarts: {reason}"
            return
        delay = self.backoff[min(self.restarts, len(self.backoff) - 1)]
        self.restarts += 1
        self.state = RESTARTING
        self._next_attempt = self._clock() + delay

    def _log_tail(self, limit: int = 300) -> str:
        if self._log is None:
            return ""
        path = Path(self._log.name)
        self._close_log()
        try:
            lines = path.read_bytes()[-4000:].decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return (lines[-1] if lines else "")[-limit:]

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _read_info(path: Path) -> ConnectionInfo | None:
    try:
        return ConnectionInfo.read(path)
    except (OSError, ValueError, GenartError):
        return None


def _end_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Waits for `proc` to exit, then terminates it, then kills it."""
    for step, wait in ((None, timeout), (proc.terminate, 5.0), (proc.kill, 5.0)):
        if step is not None:
            if proc.poll() is not None:
                return
            step()
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, GenartError) else str(exc)


__all__ = [
    "BACKOFF",
    "CONNECT",
    "DEAD",
    "LAUNCH",
    "MAX_RESTARTS",
    "NOT_CONNECTED",
    "READY",
    "RESTARTING",
    "STARTING",
    "STATES",
    "STOPPED",
    "Session",
]
