"""Declarative parameter schemas of engines, and their validation. Stdlib only.

An engine declares its parameters as `Param`s; the worker sends them to the server as
plain dicts, the server advertises them in the handshake (so a UI can draw them) and
validates every request against them before anything is queued. A bad value gets an
`InvalidParams` naming the field (`params.<name>`) and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import InvalidParams

MAX_SIDE = 8192  # pixels, either side of any image an engine makes

PARAM_TYPES = (
    "int",
    "float",
    "bool",
    "string",
    "enum",
    "int_list",
    "float_list",
    "string_list",
)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
        }
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if isinstance(self.default, tuple):
            out["default"] = list(self.default)
        return out


def _check_range(field: str, value: float, spec: dict[str, Any]) -> None:
    lo, hi = spec.get("min"), spec.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidParams(
            f"{field} must be in [{lo}, {hi}], not {value}",
            field=field,
            allowed={"min": lo, "max": hi},
        )


def _check_one(field: str, value: Any, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{field} must be an integer", field=field)
        _check_range(field, value, spec)
    elif kind == "float":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InvalidParams(f"{field} must be a finite number", field=field)
        value = float(value)
        _check_range(field, value, spec)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise InvalidParams(f"{field} must be true or false", field=field)
    elif kind == "string":
        if not isinstance(value, str):
            raise InvalidParams(f"{field} must be a string", field=field)
        if spec.get("max") is not None and len(value) > spec["max"]:
            raise InvalidParams(f"{field} is longer than {spec['max']} characters", field=field)
    elif kind == "enum":
        if value not in spec["choices"]:
            raise InvalidParams(
                f"{field} must be one of {spec['choices']}, not {value!r}",
                field=field,
                allowed=list(spec["choices"]),
            )
    elif kind == "string_list":
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise InvalidParams(f"{field} must be a list of strings", field=field)
        if spec.get("max") is not None and len(value) > spec["max"]:
            raise InvalidParams(f"{field} has more than {spec['max']} entries", field=field)
    elif kind == "float_list":
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            for v in value
        ):
            raise InvalidParams(f"{field} must be a list of finite numbers", field=field)
        value = [float(v) for v in value]
        for v in value:
            _check_range(field, v, spec)
    elif kind == "int_list":
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise InvalidParams(f"{field} must be a list of integers", field=field)
        for v in value:
            _check_range(field, v, spec)
    else:
        raise InvalidParams(
            f"unknown parameter type {kind!r} in the engine's schema",
            field=field,
            allowed=list(PARAM_TYPES),
        )
    return value


def validate_params(schema: Iterable[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Checks `params` against `schema` (Param.to_dict() dicts); returns them with defaults."""
    specs = {spec["name"]: spec for spec in schema}
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise InvalidParams(
            f"unknown parameter {unknown[0]!r}", field=f"params.{unknown[0]}", allowed=sorted(specs)
        )
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        value = params.get(name, spec["default"])
        out[name] = _check_one(f"params.{name}", value, spec)
    return out


# The pixel cap every image engine offers, and its check (one place for both).
MAX_PIXELS_PARAM = Param(
    "max_pixels",
    "int",
    4096 * 4096,
    "refuse outputs larger than this",
    min=64,
    max=MAX_SIDE * MAX_SIDE,
)


def check_pixel_cap(width: int, height: int, cap: int) -> None:
    if width * height > cap:
        raise InvalidParams(
            f"{width}×{height} is over the pixel cap {cap}",
            field="params.width",
            allowed={"max_pixels": cap},
        )
