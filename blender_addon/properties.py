"""The user's intent, saved with the scene: which engine each task uses, and its parameters.

`scene.genart` holds, per task of the add-on's actions (`TASKS`), the chosen engine, and
under `scene.genart.engines.<engine>.<param>` the values of every engine's parameters.
The parameter groups are not written here: `sync_engines` builds one `PropertyGroup`
class per engine from the parameter schemas of the sidecar's welcome (on the main thread:
a timer while Blender's UI runs, the bridge itself in `blender -b`), and rebuilds them
when a sidecar advertises a different schema. A third-party engine so gets its settings
with no add-on change.

Values survive a rebuild, an unregister and a new sidecar, where names and types still
match, because Blender keeps a registered property's value in the scene under the
property's identifier, apart from the Python class: a group re-registered with the same
identifiers reads them back, and a stored value of another type is dropped (the property
shows its default). Identifiers are the engines' and parameters' own names, so scripts
and keyframes (`genart.engines.sd.strength`) stay readable and stable. Enum choices are
stored by a number derived from the choice's name (not its position), so they follow the
name when an engine reorders its choices; a value the user never set is not stored, so it
follows a changed default. A kept value that a new schema no longer allows (a narrower
range, a removed choice) is not clamped silently: the bridge refuses it, naming the field.

List parameters are text fields (`24, 28, 48`; strings split on `;`): the schema gives
each element's range but never a length (one LoRA weight per LoRA, nine rotation values or
none), so a fixed-size vector would impose a length the engine did not declare. Blender's
ints are 32-bit and its floats single precision: wider int ranges are cut to 32 bits, and
the bridge reads floats back at float32's 7 significant digits.
"""

from __future__ import annotations

import keyword
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypedDict

import bpy

from . import runtime
from .client.session import READY

# The tasks of the add-on's actions, each with an engine of its own choosing.
TASKS = ("txt2img", "img2img", "control", "sequence")
TASK_LABELS = {
    "txt2img": "Text to image",
    "img2img": "Image to image",
    "control": "Controlled by the render",
    "sequence": "Sequence",
}
# Parameters the add-on fills from the action, never drawn nor stored: the output size
# (render resolution or the action's own size), near/far and camera_rotation (capture, one
# mapping per sequence, DESIGN §9), tileable and panorama (the action: tileable texture or
# world background), online (bpy.app.online_access).
ADDON_FILLED = frozenset(
    {
        "width",
        "height",
        "near",
        "far",
        "camera_rotation",
        "tileable",
        "panorama",
        "online",
        "coherence",  # the Stylize operator's choice
    }
)
# Engines a task starts with, where the sidecar offers them (else its first for the task).
DEFAULT_ENGINES = ("sd",)
LIST_TYPES = ("int_list", "float_list", "string_list")
LIST_SEPARATORS = {"int_list": ",", "float_list": ",", "string_list": ";"}
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # Blender's IntProperty is 32-bit
SYNC_SECONDS = 0.5
_RESERVED = frozenset(dir(bpy.types.PropertyGroup)) | {"name", "rna_type", "bl_rna"}


def prop_id(name: str) -> str:
    """The property identifier of an engine or parameter name: the name itself where it is
    a plain identifier Blender does not already use, else a stable mangled form."""
    if (
        name.isidentifier()
        and name.isascii()
        and not name.startswith("_")
        and not keyword.iskeyword(name)
        and name not in _RESERVED
        and len(name) <= 48
    ):
        return name
    slug = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")[:32]
    return f"p_{slug}_{zlib.crc32(name.encode()):08x}"


def choice_number(choice: str) -> int:
    """The number an enum choice is stored as: from its name, so reordering keeps it."""
    return zlib.crc32(choice.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as a welcome advertises it (docs/protocol.md, engine parameter schema)."""

    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return f"params.{self.name}"

    @property
    def prop(self) -> str:
        return prop_id(self.name)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    version: str
    help: str
    tasks: tuple[str, ...]
    params: tuple[ParamSpec, ...]
    capabilities: tuple[tuple[str, Any], ...]

    @property
    def prop(self) -> str:
        return prop_id(self.name)

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def drawn_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.name not in ADDON_FILLED)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def engines_from_welcome(welcome: Mapping[str, Any]) -> tuple[EngineSpec, ...]:
    """The welcome's engines as frozen specs (empty while the sidecar is not ready)."""
    out = []
    for e in welcome.get("engines") or ():
        params = tuple(
            ParamSpec(
                name=str(p["name"]),
                type=str(p.get("type", "")),
                default=_frozen(p.get("default")),
                help=str(p.get("help", "")),
                min=p.get("min"),
                max=p.get("max"),
                choices=tuple(str(c) for c in p["choices"]) if p.get("choices") else None,
            )
            for p in e.get("params") or ()
        )
        out.append(
            EngineSpec(
                name=str(e["name"]),
                version=str(e.get("version", "")),
                help=str(e.get("help", "")),
                tasks=tuple(str(t) for t in e.get("tasks") or ()),
                params=params,
                capabilities=tuple((str(k), v) for k, v in (e.get("capabilities") or {}).items()),
            )
        )
    return tuple(out)


def format_list(kind: str, values: Iterable[Any]) -> str:
    """The text a list parameter's field shows for `values`."""
    sep = LIST_SEPARATORS[kind]
    return f"{sep} ".join(format(v, "g") if kind == "float_list" else str(v) for v in values)


def _int_bound(value: float | None, rounding: Callable[[float], int], fallback: int) -> int:
    if value is None or not math.isfinite(value):
        return fallback
    return max(INT_MIN, min(INT_MAX, rounding(value)))


def _precision(*values: float | None) -> int:
    """Digits a float field shows: 3, more for a small default or minimum (1e-4)."""
    small = [abs(v) for v in values if v is not None and 0 < abs(v) < 0.01]
    return min(6, 1 - math.floor(math.log10(min(small)))) if small else 3


class _Common(TypedDict):
    """The keywords every parameter's property gets."""

    name: str
    description: str


class _FloatBounds(TypedDict, total=False):
    """A float property's bounds, where the schema gives them (else Blender's)."""

    min: float
    max: float


def make_property(spec: ParamSpec) -> Any:
    """The `bpy.props` property for one parameter; None for a type the add-on cannot draw."""
    common: _Common = {"name": bpy.path.display_name(spec.name), "description": spec.help}
    if spec.type == "int":
        lo = _int_bound(spec.min, math.ceil, INT_MIN)
        hi = _int_bound(spec.max, math.floor, INT_MAX)
        default = spec.default if isinstance(spec.default, int) else 0
        return bpy.props.IntProperty(min=lo, max=hi, default=min(max(default, lo), hi), **common)
    if spec.type == "float":
        bounds: _FloatBounds = {}
        if spec.min is not None:
            bounds["min"] = float(spec.min)
        if spec.max is not None:
            bounds["max"] = float(spec.max)
        value = float(spec.default) if isinstance(spec.default, (int, float)) else 0.0
        low, high = bounds.get("min", -math.inf), bounds.get("max", math.inf)
        digits = _precision(value, spec.min)
        return bpy.props.FloatProperty(
            default=min(max(value, low), high), precision=digits, **bounds, **common
        )
    if spec.type == "bool":
        return bpy.props.BoolProperty(default=bool(spec.default), **common)
    if spec.type == "string":
        maxlen = int(spec.max) if spec.max is not None else 0  # bytes, so never over
        return bpy.props.StringProperty(default=str(spec.default or ""), maxlen=maxlen, **common)
    if spec.type == "enum" and spec.choices:
        # (identifier, name, description, icon, number); icon "NONE" is Blender's icon 0.
        items = [(c, bpy.path.display_name(c), "", "NONE", choice_number(c)) for c in spec.choices]
        choice = spec.default if spec.default in spec.choices else spec.choices[0]
        return bpy.props.EnumProperty(items=items, default=choice, **common)
    if spec.type in LIST_TYPES:
        common["description"] = (spec.help + " " + list_hint(spec)).strip()
        text = format_list(spec.type, spec.default or ())
        return bpy.props.StringProperty(default=text, **common)
    return None


def list_hint(spec: ParamSpec) -> str:
    if spec.type == "string_list":
        most = f", at most {spec.max:g}" if spec.max is not None else ""
        return f"(texts separated by ';'{most})"
    kind = "integers" if spec.type == "int_list" else "numbers"
    lo = "" if spec.min is None else f"{spec.min:g}"
    hi = "" if spec.max is None else f"{spec.max:g}"
    return f"({kind} separated by commas" + (f", each in [{lo}, {hi}])" if lo or hi else ")")


@dataclass(frozen=True)
class Built:
    """What `sync_engines` registered, from which schema."""

    key: str
    engines: dict[str, EngineSpec]
    classes: tuple[type, ...]
    failed: dict[str, str]  # engine -> why its group could not be registered
    items: dict[str, list[tuple[str, str, str]]]  # task -> the engine selector's items
    source: Mapping[str, Any]  # the welcome it was built from (compared by identity)
    kept: Any = field(default=None, repr=False)  # the previous items: Blender may hold them


class GENART_PG_engines(bpy.types.PropertyGroup):
    """One pointer per engine of the sidecar (`engines.sd`, `engines.texsynth`), added and
    removed by `sync_engines`."""

    # The registered build: the add-on's dynamic classes are this registry. A ClassVar, not
    # a property: Blender registers only the annotations that are bpy.props definitions.
    built: ClassVar[Built | None] = None


def current() -> Built | None:
    return GENART_PG_engines.built


def offered(task: str) -> list[str]:
    """Names of the engines advertised for `task` (last ready welcome), in its order."""
    built = current()
    return [item[0] for item in built.items.get(task, ())] if built is not None else []


def engine_items(task: str) -> list[tuple[str, str, str]]:
    built = current()
    return built.items.get(task, []) if built is not None else []


def chosen_engine(settings: Any, task: str) -> str | None:
    """The engine the user chose for `task` if it is offered, else a default one."""
    names = offered(task)
    stored = getattr(settings, f"{task}_engine_name")
    if stored in names:
        return stored
    return next((n for n in DEFAULT_ENGINES if n in names), names[0] if names else None)


def engine_spec(name: str | None) -> EngineSpec | None:
    built = current()
    return built.engines.get(name) if built is not None and name is not None else None


def engine_group(settings: Any, name: str | None) -> Any:
    """`settings.engines.<engine>`: the engine's parameter values, or None."""
    spec = engine_spec(name)
    return getattr(settings.engines, spec.prop, None) if spec is not None else None


def _selector(task: str) -> dict[str, Any]:
    """The hidden name that stores a task's engine and the enum that shows it. Stored by
    name, so the choice follows the engine whatever the order of the welcome's list."""

    def items(self: Any, context: Any) -> list[tuple[str, str, str]]:
        return engine_items(task)  # kept referenced by the Built (Blender's known pitfall)

    def get(self: Any) -> int:
        chosen = chosen_engine(self, task)
        return offered(task).index(chosen) if chosen is not None else 0

    def set_(self: Any, value: int) -> None:
        names = offered(task)
        if 0 <= value < len(names):
            setattr(self, f"{task}_engine_name", names[value])

    label = TASK_LABELS[task]
    # fake-bpy-module declares the bpy.props functions `-> None`; Blender returns a property
    # definition, used as a value in the classes this module builds, hence the ignores.
    return {
        f"{task}_engine_name": bpy.props.StringProperty(  # type: ignore[func-returns-value]
            name=f"{label} engine name", options={"HIDDEN"}
        ),
        f"{task}_engine": bpy.props.EnumProperty(  # type: ignore[func-returns-value]
            name="Engine",
            description=f"The sidecar's engine for {task} ({label.lower()})",
            items=items,
            get=get,
            set=set_,
        ),
    }


def _passes_update(self: Any, context: bpy.types.Context) -> None:
    """Stylize renders or its coherence changed: add or remove the render's passes node."""
    from . import render_passes

    scene = self.id_data
    if isinstance(scene, bpy.types.Scene):
        line = render_passes.sync(scene)
        if line:
            print(f"genart: stylize renders: {line}", flush=True)


class GENART_PG_prompt_key(bpy.types.PropertyGroup):
    """One entry of a prompt schedule: from `frame` on, the prompt is `prompt`."""

    frame: bpy.props.IntProperty(name="Frame", default=1)  # type: ignore[valid-type]
    prompt: bpy.props.StringProperty(name="Prompt")  # type: ignore[valid-type]


GENART_PG_settings = type(
    "GENART_PG_settings",
    (bpy.types.PropertyGroup,),
    {
        "__doc__": "scene.genart: the engine per task and every engine's parameter values",
        "__module__": __name__,
        "__annotations__": {
            "engines": bpy.props.PointerProperty(type=GENART_PG_engines),  # type: ignore[func-returns-value]
            # Prompts over time (Blender cannot keyframe strings, DESIGN §9): schedule
            # entries, and timeline markers named "prompt: ..." when enabled.
            "prompt_schedule": bpy.props.CollectionProperty(type=GENART_PG_prompt_key),  # type: ignore[func-returns-value]
            "use_marker_prompts": bpy.props.BoolProperty(  # type: ignore[func-returns-value]
                name="Prompts from markers",
                description="Timeline markers named 'prompt: <text>' change the prompt "
                "from their frame on",
                default=True,
            ),
            "stylize_renders": bpy.props.BoolProperty(  # type: ignore[func-returns-value]
                name="Stylize renders",
                description="Every rendered frame (F12, Ctrl+F12, blender -b -a) also goes "
                "through the sidecar, the stylized frame written beside Blender's output",
                default=False,
                update=_passes_update,
            ),
            "stylize_renders_coherence": bpy.props.EnumProperty(  # type: ignore[func-returns-value]
                name="Coherence",
                description="Exact flow: the render also writes its motion vectors and depth "
                "(a compositor File Output node, genart passes) and each frame is carried "
                "on from the stylized frame before it, read from disk",
                items=[
                    ("EXACT_FLOW", "Exact flow", "Carry each frame on from the one before"),
                    ("OFF", "Off", "Stylize every frame on its own"),
                ],
                default="EXACT_FLOW",
                update=_passes_update,
            ),
            # What the last Stylize animation measured (the panel shows it).
            "stylize_report": bpy.props.StringProperty(  # type: ignore[func-returns-value]
                name="Last stylize", default=""
            ),
            **{k: v for task in TASKS for k, v in _selector(task).items()},
        },
    },
)


def _engine_class(engine: EngineSpec) -> type:
    annotations = {}
    for spec in engine.params:
        if spec.name not in ADDON_FILLED:
            prop = make_property(spec)
            if prop is not None:
                annotations[spec.prop] = prop
    return type(
        f"GENART_PG_engine_{engine.prop}",
        (bpy.types.PropertyGroup,),
        {"__doc__": engine.help, "__module__": __name__, "__annotations__": annotations},
    )


def _teardown() -> Built | None:
    built = current()
    if built is None:
        return None
    for cls in reversed(built.classes):
        attr = cls.__name__.removeprefix("GENART_PG_engine_")
        if hasattr(GENART_PG_engines, attr):
            delattr(GENART_PG_engines, attr)
        bpy.utils.unregister_class(cls)
    GENART_PG_engines.built = None
    return built


def sync_engines(welcome: Mapping[str, Any] | None = None) -> bool:
    """Builds (or rebuilds) the engines' parameter groups from `welcome` (default: the
    live session's) when its schema differs from the registered one; main thread only.
    A welcome with no engines (not ready, engines still loading) keeps what is there.
    Returns whether anything was rebuilt."""
    if welcome is None:
        welcome = runtime.session().welcome
    engines = engines_from_welcome(welcome)
    if not engines:
        return False
    key = repr(engines)
    old = current()
    if old is not None and old.key == key:
        if old.source is not welcome:
            GENART_PG_engines.built = replace(old, source=welcome)
        return False
    _teardown()
    classes, failed = [], {}
    for engine in engines:
        cls = _engine_class(engine)
        try:
            bpy.utils.register_class(cls)
        except (RuntimeError, TypeError, ValueError) as exc:
            failed[engine.name] = str(exc).strip().splitlines()[-1] if str(exc) else "refused"
            continue
        setattr(GENART_PG_engines, engine.prop, bpy.props.PointerProperty(type=cls))  # type: ignore[func-returns-value]
        classes.append(cls)
    items = {
        task: [(e.name, e.name, f"{e.help} (v{e.version})") for e in engines if task in e.tasks]
        for task in TASKS
    }
    GENART_PG_engines.built = Built(
        key=key,
        engines={e.name: e for e in engines},
        classes=tuple(classes),
        failed=failed,
        items=items,
        source=welcome,
        kept=old.items if old is not None else None,
    )
    return True


def _sync_tick() -> float:
    s = runtime.RUNTIME.session
    if s is not None and s.state == READY:
        built = current()
        welcome = s.welcome
        if built is None or built.source is not welcome:
            sync_engines(welcome)
    return SYNC_SECONDS


CLASSES = (GENART_PG_engines, GENART_PG_prompt_key, GENART_PG_settings)


def register() -> None:
    """After CLASSES are registered: the scene pointer and the sync timer."""
    # A run-time property: the stubs know neither it nor what bpy.props returns (above).
    bpy.types.Scene.genart = bpy.props.PointerProperty(type=GENART_PG_settings)  # type: ignore[attr-defined,func-returns-value]
    if not bpy.app.timers.is_registered(_sync_tick):
        bpy.app.timers.register(_sync_tick, first_interval=SYNC_SECONDS, persistent=True)


def unregister() -> None:
    """Before CLASSES are unregistered; the values stay in the scenes (see above)."""
    if bpy.app.timers.is_registered(_sync_tick):
        bpy.app.timers.unregister(_sync_tick)
    _teardown()
    del bpy.types.Scene.genart  # type: ignore[attr-defined]
