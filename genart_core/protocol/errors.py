"""Typed errors of the genart protocol, each with a stable numeric code and name.

Every error that crosses the wire is one of these classes: the server raises them, turns
them into a JSON-RPC error object with `to_dict`, and the client turns that object back into
the same class with `GenartError.from_dict`. Codes and names are part of the protocol and
are pinned by tests; never renumber one. Messages are for people; `field` and `allowed`
name what to fix. Tracebacks never go into a message.
"""

from __future__ import annotations

from typing import Any, ClassVar

_REGISTRY: dict[str, type[GenartError]] = {}


class GenartError(Exception):
    """Base of every genart error; `code` and `name` are stable protocol constants."""

    code: ClassVar[int] = -32000
    name: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        allowed: Any = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.allowed = allowed
        self.details = dict(details or {})
        # The id of the request this error answers, when known (not sent as data).
        self.request_id: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name in _REGISTRY:
            raise TypeError(f"error name {cls.name!r} registered twice")
        _REGISTRY[cls.name] = cls

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.field is not None:
            data["field"] = self.field
        if self.allowed is not None:
            data["allowed"] = self.allowed
        if self.details:
            data["details"] = self.details
        return {"code": self.code, "message": self.message, "data": data}

    @staticmethod
    def from_dict(obj: dict[str, Any]) -> GenartError:
        data = obj.get("data") or {}
        cls = _REGISTRY.get(str(data.get("name", "")), GenartError)
        err = cls(
            str(obj.get("message", "unknown error")),
            field=data.get("field"),
            allowed=data.get("allowed"),
            details=data.get("details"),
        )
        return err

    def __str__(self) -> str:
        text = self.message
        if self.field is not None:
            text += f" (field: {self.field}"
            if self.allowed is not None:
                text += f"; allowed: {self.allowed}"
            text += ")"
        return text


_REGISTRY[GenartError.name] = GenartError


def error_classes() -> dict[str, type[GenartError]]:
    """All registered error classes by name (a copy)."""
    return dict(_REGISTRY)


# JSON-RPC 2.0's own codes.
class ParseError(GenartError):
    code = -32700
    name = "parse_error"


class InvalidRequest(GenartError):
    code = -32600
    name = "invalid_request"


class MethodNotFound(GenartError):
    code = -32601
    name = "method_not_found"


class InvalidParams(GenartError):
    code = -32602
    name = "invalid_params"


class InternalError(GenartError):
    code = -32603
    name = "internal_error"


# Connection and framing.
class Unauthorized(GenartError):
    code = -32001
    name = "unauthorized"


class VersionMismatch(GenartError):
    code = -32002
    name = "version_mismatch"


class FrameTooLarge(GenartError):
    code = -32003
    name = "frame_too_large"


class BadFrame(GenartError):
    code = -32004
    name = "bad_frame"


class ConnectionLost(GenartError):
    """Client side: the sidecar closed the connection or died."""

    code = -32005
    name = "connection_lost"


class SidecarUnresponsive(GenartError):
    """Client side: the sidecar stopped answering pings (hung or stopped)."""

    code = -32006
    name = "sidecar_unresponsive"


class RequestTimeout(GenartError):
    """Client side: no answer to one request within its timeout."""

    code = -32007
    name = "request_timeout"


# Jobs.
class JobNotFound(GenartError):
    code = -32010
    name = "job_not_found"


class NotReady(GenartError):
    code = -32011
    name = "not_ready"


class JobStateError(GenartError):
    code = -32012
    name = "job_state"


class ResultExpired(GenartError):
    code = -32013
    name = "result_expired"


# Engines and the worker.
class EngineFailed(GenartError):
    code = -32020
    name = "engine_failed"


class WorkerCrashed(GenartError):
    code = -32021
    name = "worker_crashed"


class JobCancelled(GenartError):
    """Client side: raised by a blocking wait when the job ended cancelled."""

    code = -32022
    name = "cancelled"


class OutOfMemory(GenartError):
    code = -32023
    name = "out_of_memory"


# The sidecar process.
class ShuttingDown(GenartError):
    code = -32030
    name = "shutting_down"


class StateDirLocked(GenartError):
    code = -32031
    name = "state_dir_locked"
