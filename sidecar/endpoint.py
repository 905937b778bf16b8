"""The sidecar's message endpoint: one request in, one response out. Knows no transport.

`Endpoint.handle` takes a decoded message and a per-connection `Session` and returns the
response envelope with its attachments; the server moves bytes, this decides. Every
failure becomes a typed error naming the field; an unexpected exception is logged with its
traceback and answered with a short message pointing at the log.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import genart_core
from genart_core.engines.schema import validate_params
from genart_core.models import HashCache, default_roots, hf_cache_dir, scan
from genart_core.protocol import messages as m
from genart_core.protocol.atomicio import atomic_write
from genart_core.protocol.connection import protocol_version_string
from genart_core.protocol.errors import (
    GenartError,
    InternalError,
    InvalidParams,
    JobNotFound,
    JobStateError,
    MethodNotFound,
    NotReady,
    ResultExpired,
    Unauthorized,
    VersionMismatch,
)
from genart_core.protocol.framing import PROTOCOL_MAJOR, Attachment, Limits, Message

from .events import EventHub, Subscriber
from .jobs import JobRunner
from .store import Store, loads

log = logging.getLogger("genart.sidecar.endpoint")


@dataclass
class Session:
    """What the endpoint knows of one connection."""

    sub: Subscriber
    authenticated: bool = False
    client: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    envelope: dict[str, Any]
    attachments: list[Attachment] = field(default_factory=list)
    close: bool = False  # close the connection once this is sent


class Endpoint:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        runner: JobRunner,
        *,
        token: str,
        state_dir: Path,
        log_path: Path,
        limits: Limits,
        test_methods: bool = False,
        on_shutdown: Callable[[], None] = lambda: None,
        memory_options: tuple[str, ...] = (),
        model_roots: tuple[Path, ...] = (),
    ) -> None:
        self.memory_options = list(memory_options)
        self.model_roots = list(model_roots)
        self.hashes = HashCache(state_dir / "model-hashes.json")
        self.slow_methods = {"models", "unload"}
        self.store = store
        self.hub = hub
        self.runner = runner
        self.token = token
        self.state_dir = state_dir
        self.log_path = log_path
        self.limits = limits
        self.test_methods = test_methods
        self.on_shutdown = on_shutdown
        self.handlers: dict[
            str,
            Callable[
                [Session, dict[str, Any], list[Attachment]], tuple[dict[str, Any], list[Attachment]]
            ],
        ] = {
            "ping": self.ping,
            "submit": self.submit,
            "append": self.append,
            "close": self.close,
            "status": self.status,
            "events": self.events,
            "result": self.result,
            "preview": self.preview,
            "cancel": self.cancel,
            "list": self.list_jobs,
            "shutdown": self.shutdown,
            "echo": self.echo,
            "unload": self.unload,
            "models": self.models,
        }
        if test_methods:
            self.handlers["debug.hang"] = self.debug_hang

    # -- dispatch --------------------------------------------------------------------
    def handle(self, session: Session, msg: Message) -> Response | None:
        req_id = msg.envelope.get("id")
        try:
            req_id, method, params = m.check_request(msg.envelope)
            if not session.authenticated:
                if method != "hello":
                    raise Unauthorized(
                        "the first request must be hello with the token",
                        field="method",
                        allowed=["hello"],
                    )
                return Response(m.response(req_id, self.hello(session, params)))
            if method == "hello":
                raise InvalidParams("hello was already done on this connection", field="method")
            handler = self.handlers.get(method)
            if handler is None:
                raise MethodNotFound(
                    f"unknown method {method!r}", field="method", allowed=sorted(self.handlers)
                )
            result, attachments = handler(session, params, msg.attachments)
        except (Unauthorized, VersionMismatch) as exc:
            return Response(m.error_response(req_id, exc), close=True)
        except GenartError as exc:
            return None if req_id is None else Response(m.error_response(req_id, exc))
        except Exception:
            log.exception("internal error handling %r", msg.envelope.get("method"))
            err = InternalError(f"internal error in the sidecar; details are in {self.log_path}")
            return Response(m.error_response(req_id, err))
        if req_id is None:  # a notification gets no response
            return None
        return Response(m.response(req_id, result), attachments)

    # -- handshake -------------------------------------------------------------------
    def hello(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        token = params.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), self.token.encode()
        ):
            raise Unauthorized("wrong or missing token", field="token")
        proto = m.get_dict(params, "protocol", {"min": PROTOCOL_MAJOR, "max": PROTOCOL_MAJOR})
        lo, hi = proto.get("min"), proto.get("max")
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= PROTOCOL_MAJOR <= hi):
            raise VersionMismatch(
                f"this sidecar speaks protocol {PROTOCOL_MAJOR}, the client {lo}..{hi}; "
                "update the older of the two",
                field="protocol",
                allowed=[PROTOCOL_MAJOR],
            )
        session.authenticated = True
        session.client = m.get_dict(params, "client", {})
        # A worker that is still importing its libraries must not stall the handshake:
        # wait briefly, then answer with what is known and say whether it is complete.
        self.runner.engines_ready.wait(2.0)
        return {
            "protocol_version": protocol_version_string(),
            "server": {"name": "genart-sidecar", "version": genart_core.__version__},
            "pid": os.getpid(),
            "capabilities": sorted(self.handlers)
            + ["attachments.array", "attachments.blob", "attachments.path"],
            "engines": self.runner.engines,
            "engines_ready": self.runner.engines_ready.is_set(),
            "device": self.runner.device,
            "memory": self.runner.memory,
            "memory_options": self.memory_options,
            "state_dir": str(self.state_dir),
            "limits": {
                "max_json": self.limits.max_json,
                "max_payload": self.limits.max_payload,
                "max_attachments": self.limits.max_attachments,
            },
        }

    # -- requests --------------------------------------------------------------------
    def ping(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        current = self.runner.current()
        return {
            "time": time.time(),
            "jobs": self.store.counts(),
            "engines_ready": self.runner.engines_ready.is_set(),
            "memory": self.runner.memory,
            "current": None if current is None else {"job": current[0], "frame": current[1]},
        }, []

    def _engine(self, name: str) -> dict[str, Any]:
        engines = {e["name"]: e for e in self.runner.engines}
        if name not in engines:
            raise InvalidParams(
                f"no engine {name!r} in this sidecar", field="engine", allowed=sorted(engines)
            )
        return engines[name]

    def _store_inputs(self, job: str, frame: int, atts: list[Attachment]) -> dict[str, Any]:
        """Writes a frame's input attachments durably; returns their records."""
        names = [a.name for a in atts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidParams(f"input {dupes[0]!r} given twice", field=f"inputs.{dupes[0]}")
        folder = self.store.input_dir(job, frame)
        records: dict[str, Any] = {}
        for att in atts:
            rec = {k: v for k, v in att.meta().items() if k not in ("name", "nbytes", "path")}
            if att.kind == "path":
                if not Path(att.path or "").is_file():
                    raise InvalidParams(
                        f"input {att.name!r}: no file at {att.path}", field=f"inputs.{att.name}"
                    )
                rec["file"] = att.path
            else:
                path = folder / f"{att.name}.bin"
                atomic_write(path, [att.view()])
                rec["file"] = str(path)
            records[att.name] = rec
        return records

    def submit(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        engine = self._engine(m.get_str(params, "engine"))
        sequence = m.get_bool(params, "sequence", False)
        default_task = "sequence" if sequence and "sequence" in engine["tasks"] else None
        task = m.get_str(
            params,
            "task",
            default_task or (engine["tasks"][0] if engine["tasks"] else "txt2img"),
            allowed=engine["tasks"],
        )
        frames = m.get_int(params, "frames", None, lo=1, hi=10**6)
        if not sequence and frames not in (None, 1):
            raise InvalidParams(
                "a still (sequence: false) has exactly one frame", field="frames", allowed=[1]
            )
        if sequence and atts:
            raise InvalidParams(
                "a sequence's inputs go with append, frame by frame", field="inputs"
            )
        key = m.get_str(params, "idempotency_key", None)
        if key is not None and not 1 <= len(key) <= 200:
            raise InvalidParams(
                "idempotency_key must have 1 to 200 characters", field="idempotency_key"
            )
        job_params = validate_params(engine["params"], m.get_dict(params, "params", {}))
        if key is not None:
            existing = self.store.find_by_key(key)
            if existing is not None:
                self.hub.watch(session.sub, existing["id"])
                return {"job": existing["id"], "deduplicated": True}, []
        job = self.store.new_job_id()
        first = None if sequence else self._store_inputs(job, 0, atts)
        created = self.store.create_job(
            job,
            engine=engine["name"],
            task=task,
            params=job_params,
            sequence=sequence,
            frames_expected=frames if sequence else 1,
            idempotency_key=key,
            client=str(session.client.get("name", "")) or None,
            first_frame=first,
        )
        if not created:  # a concurrent submit took the key first
            existing = self.store.find_by_key(key or "")
            if existing is None:
                raise InternalError("job creation failed")
            return {"job": existing["id"], "deduplicated": True}, []
        self.hub.watch(session.sub, job)
        seq = self.hub.emit(job, "queued", {"engine": engine["name"], "task": task})
        self.runner.wake()
        return {"job": job, "deduplicated": False, "seq": seq}, []

    def _job(self, params: dict[str, Any]) -> dict[str, Any]:
        job = m.get_str(params, "job")
        row = self.store.get_job(job)
        if row is None:
            raise JobNotFound(f"no job {job!r}", field="job")
        return row

    def append(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        row = self._job(params)
        if not row["sequence"]:
            raise JobStateError("append is for sequence jobs", field="job")
        frame = m.get_int(
            params,
            "frame",
            lo=0,
            hi=(row["frames_expected"] - 1) if row["frames_expected"] else 10**6,
        )
        existing = self.store.get_frame(row["id"], frame)
        if existing is not None:  # a resend after a reconnect: already have it
            return {"job": row["id"], "frame": frame, "duplicate": True}, []
        if row["state"] in m.TERMINAL_STATES:
            raise JobStateError(f"job {row['id']} is {row['state']}", field="job")
        if row["input_closed"]:
            raise JobStateError(f"job {row['id']} input is closed", field="job")
        overrides = m.get_dict(params, "params", {})
        if overrides:
            engine = self._engine(row["engine"])
            validate_params(engine["params"], {**loads(row["params"]), **overrides})
        records = self._store_inputs(row["id"], frame, atts)
        added = self.store.add_frame(row["id"], frame, records, overrides or None)
        self.runner.wake()
        return {"job": row["id"], "frame": frame, "duplicate": not added}, []

    def close(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        row = self._job(params)
        if not row["sequence"]:
            raise JobStateError("close is for sequence jobs", field="job")
        self.store.close_input(row["id"])
        self.runner.check_done(row["id"])
        return self._summary(self._job(params)), []

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        counts = self.store.frame_counts(row["id"])
        return {
            "job": row["id"],
            "state": row["state"],
            "engine": row["engine"],
            "task": row["task"],
            "sequence": bool(row["sequence"]),
            "input_closed": bool(row["input_closed"]),
            "expired": bool(row["expired"]),
            "frames": {
                "expected": row["frames_expected"],
                "received": sum(counts.values()),
                **{s: counts.get(s, 0) for s in m.FRAME_STATES},
            },
            "error": loads(row["error"]),
            "created": row["created"],
            "updated": row["updated"],
        }

    def status(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        return self._summary(self._job(params)), []

    def events(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        job = self._job(params)["id"] if params.get("job") is not None else None
        since = m.get_int(params, "since", 0, lo=0)
        limit = m.get_int(params, "limit", 10000, lo=1, hi=100000)
        if m.get_bool(params, "watch", False):
            self.hub.watch(session.sub, job)  # before reading, so nothing falls in between
        rows = self.store.events_since(job, since, limit)
        events = [
            {"job": r["job"], "seq": r["seq"], "type": r["type"], "data": r["data"]} for r in rows
        ]
        return {"events": events, "last_seq": self.store.last_seq()}, []

    def result(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        row = self._job(params)
        idx = m.get_int(params, "frame", 0, lo=0)
        frame = self.store.get_frame(row["id"], idx)
        if frame is None:
            raise NotReady(f"job {row['id']} has no frame {idx} (yet)", field="frame")
        if frame["state"] == "failed":
            raise GenartError.from_dict(loads(frame["error"]) or {})
        if frame["state"] != "committed":
            if row["state"] == "cancelled":
                raise JobStateError(
                    f"job {row['id']} was cancelled before frame {idx}", field="frame"
                )
            raise NotReady(f"frame {idx} of job {row['id']} is {frame['state']}", field="frame")
        if row["expired"]:
            raise ResultExpired(
                f"the outputs of job {row['id']} were garbage-collected", field="job"
            )
        outputs = loads(frame["outputs"])
        attachments = []
        for out in outputs:
            data = Path(out["file"]).read_bytes()
            if len(data) != out["nbytes"]:
                raise InternalError(f"output {out['name']} of frame {idx} is damaged on disk")
            attachments.append(
                Attachment.array(out["name"], data, out["dtype"], out["shape"], out["color_space"])
            )
        return {"job": row["id"], "frame": idx, "outputs": outputs}, attachments

    def preview(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        row = self._job(params)
        latest = self.hub.latest_preview(row["id"])
        if latest is None:
            raise NotReady(f"job {row['id']} has no preview yet", field="job")
        data, image = latest
        return {"job": row["id"], **data}, [image]

    def cancel(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        row = self._job(params)
        return {"job": row["id"], "state": self.runner.cancel(row["id"])}, []

    def list_jobs(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        state = m.get_str(params, "state", None, allowed=m.JOB_STATES)
        limit = m.get_int(params, "limit", 100, lo=1, hi=1000)
        return {"jobs": [self._summary(r) for r in self.store.list_jobs(state, limit)]}, []

    def shutdown(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        self.on_shutdown()
        return {"stopping": True}, []

    def unload(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        """Frees the engine device for Blender (e.g. before it renders): `unload` drops the
        models, `offload` moves them to the CPU. Answers within 2 s; `done: false` means it
        happens after the running frame, and `ping` shows `memory.state` when it has."""
        mode = m.get_str(params, "mode", "unload", allowed=("unload", "offload"))
        done = self.runner.release(mode, wait=2.0)
        return {"mode": mode, "done": done, "memory": self.runner.memory}, []

    def models(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        """The models on this machine: Hugging Face cache, --models folders, GENART_MODELS."""
        with_hash = m.get_bool(params, "hash", True)
        roots = [*self.model_roots, *default_roots()]
        cache = hf_cache_dir()
        found = scan(roots, hf_cache=cache, hashes=self.hashes, with_hash=with_hash)
        return {
            "models": [e.to_dict() for e in found],
            "roots": [str(r) for r in roots],
            "hf_cache": str(cache),
        }, []

    def echo(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        """Sends back what it got: measures the transport alone (bench/transfer.py)."""
        return {"params": params}, atts

    def debug_hang(
        self, session: Session, params: dict[str, Any], atts: list[Attachment]
    ) -> tuple[dict[str, Any], list[Attachment]]:
        """Test only: makes this server process stop answering, as a hung sidecar would."""
        mode = m.get_str(params, "mode", allowed=("sleep", "gil"))
        seconds = m.get_int(params, "seconds", lo=1, hi=600)
        if mode == "sleep":
            with self.store.lock:  # every request needs the store: the whole server stalls
                time.sleep(seconds)
        else:
            _hold_gil(seconds)
        return {"hung": seconds}, []


def _hold_gil(seconds: float) -> None:
    """Spins in single C calls that keep the GIL: no thread of this process can run."""
    start = time.perf_counter()
    sum(range(2_000_000))
    per_call = max(time.perf_counter() - start, 1e-6)
    sum(range(int(2_000_000 * seconds / per_call)))
