"""The vocabulary of the genart protocol: methods, events, job states and envelopes.

Envelopes follow JSON-RPC 2.0: a request has `id`, `method` and `params`; a response has the
same `id` and either `result` or `error`; a notification (server → client events) has no
`id`. `docs/protocol.md` holds the JSON schema of every message; this module is the code's
single list of names. Stdlib only.
"""

from __future__ import annotations

from typing import Any

from .errors import GenartError, InvalidParams, InvalidRequest

JSONRPC = "2.0"

# Requests a client may send. `hello` must come first on every connection.
METHODS = (
    "hello",
    "ping",
    "submit",
    "append",
    "close",
    "status",
    "events",
    "result",
    "preview",
    "cancel",
    "list",
    "shutdown",
    "echo",
    "unload",
    "models",
)
# Only served by a sidecar started with --enable-test-engines.
TEST_METHODS = ("debug.hang",)

# Server → client notification carrying one job event.
EVENT_NOTIFICATION = "event"
EVENT_TYPES = (
    "queued",
    "started",
    "progress",
    "preview",
    "result",
    "frame_failed",
    "completed",
    "failed",
    "cancelled",
)
TERMINAL_EVENTS = ("completed", "failed", "cancelled")

JOB_STATES = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATES = ("completed", "failed", "cancelled")
FRAME_STATES = ("pending", "running", "committed", "failed", "cancelled")


def request(req_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": req_id, "method": method, "params": params or {}}


def response(req_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": req_id, "result": result}


def error_response(req_id: Any, error: GenartError) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": req_id, "error": error.to_dict()}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "method": method, "params": params}


def check_request(envelope: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """Validates a request envelope; returns (id, method, params)."""
    if envelope.get("jsonrpc") != JSONRPC:
        raise InvalidRequest('"jsonrpc" must be "2.0"', field="jsonrpc", allowed=[JSONRPC])
    req_id = envelope.get("id")
    if req_id is not None and not isinstance(req_id, (int, str)):
        raise InvalidRequest("id must be an integer or a string", field="id")
    method = envelope.get("method")
    if not isinstance(method, str):
        raise InvalidRequest("method must be a string", field="method")
    params = envelope.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object", field="params")
    return req_id, method, params


# -- small typed readers for params; each names the field it rejects -----------------
_MISSING = object()


def get_str(
    params: dict[str, Any],
    name: str,
    default: Any = _MISSING,
    allowed: tuple[str, ...] | list[str] | None = None,
) -> Any:
    value = params.get(name, default)
    if value is _MISSING:
        raise InvalidParams(f"{name} is required", field=name)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str):
        raise InvalidParams(f"{name} must be a string", field=name)
    if allowed is not None and value not in allowed:
        raise InvalidParams(
            f"{name} must be one of {list(allowed)}, not {value!r}",
            field=name,
            allowed=list(allowed),
        )
    return value


def get_int(
    params: dict[str, Any],
    name: str,
    default: Any = _MISSING,
    lo: int | None = None,
    hi: int | None = None,
) -> Any:
    value = params.get(name, default)
    if value is _MISSING:
        raise InvalidParams(f"{name} is required", field=name)
    if value is default and default is not _MISSING:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"{name} must be an integer", field=name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidParams(
            f"{name} must be in [{lo}, {hi}], not {value}",
            field=name,
            allowed={"min": lo, "max": hi},
        )
    return value


def get_bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidParams(f"{name} must be true or false", field=name)
    return value


def get_dict(params: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    value = params.get(name, default)
    if value is _MISSING:
        raise InvalidParams(f"{name} is required", field=name)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, dict):
        raise InvalidParams(f"{name} must be a JSON object", field=name)
    return value
