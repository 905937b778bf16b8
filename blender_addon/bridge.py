"""The one place that turns the scene's genart properties into a request's parameters.

`build_request(scene, task, filled)` reads the engine chosen for `task` and its parameter
values (`properties`), adds the values the action fills itself (`filled`: size, near/far,
tileable ...) and checks every value against the engine's schema from the welcome with
the sidecar's own rules (`genart_core/engines/schema.py`, mirrored: the add-on may not
import genart_core). A bad value raises the protocol's `InvalidParams` naming the field
(`params.octaves`) and what is allowed, as the sidecar would, so an operator reports both
the same way. `capabilities` says, for the panel and the actions, what an engine can do
with the current values ("Depth control: needs depth_controlnet").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import properties, runtime
from ._vendor.genart_protocol.errors import InvalidParams
from .properties import ADDON_FILLED, LIST_TYPES, TASKS, EngineSpec, ParamSpec

PARAM_TYPES = ("int", "float", "bool", "string", "enum", *LIST_TYPES)
FLOAT_DIGITS = 7  # Blender stores floats in single precision: ~7 significant digits
# The capabilities the add-on's actions rely on, shown for every engine (absent = lacking).
ACTION_CAPABILITIES = ("depth_control", "normal_control", "tileable", "panorama")
CAPABILITY_LABELS = {
    "depth_control": "Depth control",
    "normal_control": "Normal control",
    "tileable": "Tileable",
    "panorama": "Panorama",
    "inpaint": "Inpainting",
    "lora": "LoRAs",
    "multi_controlnet": "Several ControlNets",
}
NOT_SUPPORTED = "not supported"
NOT_ADVERTISED = "not advertised"
# "with <param>", or "with <param> or without <param>" (e.g. the embedded model's own
# depth ControlNet: depth control when a ControlNet is set or no model is)
_NEEDS = re.compile(r"with\s+(\S+)(?:\s+or\s+without\s+(\S+))?")


@dataclass(frozen=True)
class EngineRequest:
    """A checked request for one engine: every parameter of its schema, defaults included."""

    engine: str
    task: str
    params: Mapping[str, Any]  # read-only; list values are tuples
    dropped: tuple[str, ...] = ()  # filled values this engine does not take (not sent)

    def submit_params(self) -> dict[str, Any]:
        """`engine`, `task` and `params` of a `submit` request."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return {"engine": self.engine, "task": self.task, "params": params}


@dataclass(frozen=True)
class Capability:
    key: str
    label: str
    available: bool
    note: str = field(default="")

    @property
    def text(self) -> str:
        return f"{self.label}: {self.note}" if self.note else self.label


# -- checks (genart_core/engines/schema.py's rules) -------------------------------------
def _check_range(spec: ParamSpec, value: float) -> None:
    lo, hi = spec.min, spec.max
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidParams(
            f"{spec.field} must be in [{lo}, {hi}], not {value}",
            field=spec.field,
            allowed={"min": lo, "max": hi},
        )


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_value(spec: ParamSpec, value: Any) -> Any:
    """`value` as the sidecar will take it, or InvalidParams naming `params.<name>`."""
    f, kind = spec.field, spec.type
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{f} must be an integer", field=f)
        _check_range(spec, value)
    elif kind == "float":
        if not _is_number(value):
            raise InvalidParams(f"{f} must be a finite number", field=f)
        value = float(value)
        _check_range(spec, value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise InvalidParams(f"{f} must be true or false", field=f)
    elif kind == "string":
        if not isinstance(value, str):
            raise InvalidParams(f"{f} must be a string", field=f)
        if spec.max is not None and len(value) > spec.max:
            raise InvalidParams(f"{f} is longer than {spec.max} characters", field=f)
    elif kind == "enum":
        choices = list(spec.choices or ())
        if value not in choices:
            raise InvalidParams(
                f"{f} must be one of {choices}, not {value!r}", field=f, allowed=choices
            )
    elif kind == "string_list":
        if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) for v in value):
            raise InvalidParams(f"{f} must be a list of strings", field=f)
        if spec.max is not None and len(value) > spec.max:
            raise InvalidParams(f"{f} has more than {spec.max} entries", field=f)
        value = tuple(value)
    elif kind == "float_list":
        if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
            raise InvalidParams(f"{f} must be a list of finite numbers", field=f)
        value = tuple(float(v) for v in value)
        for v in value:
            _check_range(spec, v)
    elif kind == "int_list":
        if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise InvalidParams(f"{f} must be a list of integers", field=f)
        value = tuple(value)
        for v in value:
            _check_range(spec, v)
    else:
        raise InvalidParams(
            f"unknown parameter type {kind!r} in the engine's schema",
            field=f,
            allowed=list(PARAM_TYPES),
        )
    return value


# -- reading the properties -------------------------------------------------------------
def parse_list(spec: ParamSpec, text: str) -> list[Any]:
    """A list field's text as values ("24, 28, 48"; strings split on ';')."""
    if spec.type == "string_list":
        return [t.strip() for t in text.split(";") if t.strip()]
    cast, kind = (int, "integers") if spec.type == "int_list" else (float, "numbers")
    out = []
    for token in (t for t in re.split(r"[,\s]+", text.strip()) if t):
        try:
            out.append(cast(token))
        except ValueError:
            raise InvalidParams(
                f"{spec.field}: {token!r} is not one of the {kind} separated by commas",
                field=spec.field,
                allowed={"min": spec.min, "max": spec.max},
            ) from None
    return out


def read_value(group: Any, spec: ParamSpec) -> Any:
    """The parameter's value in `group` (an engine's PropertyGroup), as Python data."""
    if group is None or not hasattr(group, spec.prop):
        raise InvalidParams(
            f"{spec.field} has type {spec.type!r}, which this add-on cannot set",
            field=spec.field,
            allowed=list(PARAM_TYPES),
        )
    value = getattr(group, spec.prop)
    if spec.type == "float":
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if spec.type in LIST_TYPES:
        return parse_list(spec, value)
    return value


def field_error(group: Any, spec: ParamSpec) -> str | None:
    """What is wrong with one parameter's current value (for the panel), or None."""
    try:
        check_value(spec, read_value(group, spec))
    except InvalidParams as exc:
        return exc.message
    return None


def _default(spec: ParamSpec) -> Any:
    return list(spec.default) if isinstance(spec.default, tuple) else spec.default


def build_request(
    scene: Any,
    task: str,
    filled: Mapping[str, Any] | None = None,
    welcome: Mapping[str, Any] | None = None,
) -> EngineRequest:
    """The checked request for `task` from `scene.genart` plus the action's `filled`
    values, against `welcome` (default: the live session's). Main thread only: it syncs
    the parameter groups first. Raises InvalidParams naming what to fix."""
    if task not in TASKS:
        raise InvalidParams(f"the add-on has no task {task!r}", field="task", allowed=list(TASKS))
    if welcome is None:
        welcome = runtime.session().welcome
    if not welcome.get("engines"):
        raise InvalidParams(
            "the sidecar is not ready or its engines are still loading (see Check sidecar)",
            field="engine",
        )
    properties.sync_engines(welcome)
    settings = scene.genart
    name = properties.chosen_engine(settings, task)
    engine = properties.engine_spec(name)
    if name is None or engine is None:
        raise InvalidParams(f"no engine of the sidecar offers {task}", field="engine", allowed=[])
    group = properties.engine_group(settings, name)
    built = properties.current()
    if group is None and built is not None and name in built.failed:
        raise InvalidParams(
            f"engine {name}'s parameters could not be set up: {built.failed[name]}",
            field="engine",
        )
    filled = dict(filled or {})
    params: dict[str, Any] = {}
    for spec in engine.params:
        if spec.name in filled:
            value = filled[spec.name]
        elif spec.name in ADDON_FILLED:
            value = _default(spec)
        else:
            value = read_value(group, spec)
        params[spec.name] = check_value(spec, value)
    dropped = tuple(sorted(set(filled) - {p.name for p in engine.params}))
    return EngineRequest(name, task, MappingProxyType(params), dropped)


# -- capabilities -----------------------------------------------------------------------
def _is_set(group: Any, spec: ParamSpec) -> bool:
    value = getattr(group, spec.prop, None)
    return bool(value.strip()) if isinstance(value, str) else bool(value)


def capabilities(engine: EngineSpec, group: Any) -> list[Capability]:
    """What `engine` can do with the values in `group`: the actions' capabilities first
    (absent ones as lacking), then the engine's own. A string value is the engine's
    condition: "with <param>" is met when that parameter is set ("... or without <other>":
    also when that other one is empty), other words are shown."""
    caps = dict(engine.capabilities)
    keys = [*ACTION_CAPABILITIES, *(k for k in caps if k not in ACTION_CAPABILITIES)]
    out = []
    for key in keys:
        label = CAPABILITY_LABELS.get(key) or key.replace("_", " ").capitalize()
        value = caps.get(key)
        if key not in caps:
            out.append(Capability(key, label, False, NOT_ADVERTISED))
        elif value is True:
            out.append(Capability(key, label, True))
        elif value is False or value is None:
            out.append(Capability(key, label, False, NOT_SUPPORTED))
        elif isinstance(value, str):
            m = _NEEDS.fullmatch(value.strip())
            needed = engine.param(m.group(1)) if m else None
            unless = engine.param(m.group(2)) if m and m.group(2) else None
            # A condition on a parameter the add-on fills, or in words, is shown as said.
            if (
                needed is None
                or needed.name in ADDON_FILLED
                or (group is not None and _is_set(group, needed))
            ):
                said = value if needed is None else f"with {needed.name}"
                out.append(Capability(key, label, True, said))
            elif unless is not None and group is not None and not _is_set(group, unless):
                out.append(Capability(key, label, True, f"no {unless.name} set: the default's"))
            else:
                out.append(Capability(key, label, False, f"needs {needed.name}"))
        else:
            out.append(Capability(key, label, True, str(value)))
    return out
