"""A small Python API for scripts in `blender -b` (and the Python console): the panel's
actions as blocking calls that raise `GenartScriptError` with one line on failure.

    from bl_ext.user_default.genart import api      # the extension's module
    api.connect()                                    # or api.connect("gpu-box:7777")
    api.use("control", "sd", model="~/models/sd15.safetensors",
            depth_controlnet="~/models/cn_depth", prompt="weathered bronze", steps=30)
    api.texture_from_camera(["Statue"], size=768)
    api.use("txt2img", "sd", prompt="mossy flagstones")
    api.tileable(["Ground"], mapping="BOX")
    api.background(kind="WORLD", camera_only=True)
    api.use("sequence", "sd", prompt="oil painting", strength=0.45)
    api.stylize(frame_start=1, frame_end=48, mp4=True)

Every call waits until done (no timers needed), prints progress lines, and leaves the
scene unchanged when it fails. It is the same code as `blender --command genart` (cli.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import cli, properties


class GenartScriptError(Exception):
    """A genart action that could not be done; the message says what to change."""


def _wrap(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except cli.CliError as exc:
        raise GenartScriptError(str(exc)) from None


def connect(sidecar: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Starts or reaches the sidecar (a launch command, host:port or a connection file;
    None: the preferences and environment) and waits for its engines; its welcome."""
    cli.use_sidecar(sidecar)
    session = _wrap(cli.connect, timeout)
    return dict(session.welcome)


def use(task: str, engine: str | None = None, **params: Any) -> str:
    """Chooses the engine for `task` (txt2img, img2img, control, sequence) and sets its
    parameters, typed and checked by its schema; returns the engine's name."""
    if task not in properties.TASKS:
        raise GenartScriptError(f"task must be one of {list(properties.TASKS)}, not {task!r}")
    settings = cli._settings()
    if engine is not None:
        offered = properties.offered(task)
        if engine not in offered:
            raise GenartScriptError(f"the sidecar offers {offered} for {task}, not {engine!r}")
        setattr(settings, f"{task}_engine", engine)
    name = properties.chosen_engine(settings, task)
    spec = properties.engine_spec(name)
    if spec is None:
        raise GenartScriptError(f"no engine of the sidecar offers {task} (connect first)")
    for key, value in params.items():
        _wrap(cli.set_param, spec, key, value, key)
    return spec.name


def _run(label: str, op_name: str, objects: Sequence[str] | None, **options: Any) -> None:
    restore = _wrap(cli.select_objects, objects) if objects is not None else None
    try:
        _wrap(cli.run_operator, label, getattr(cli._ops(), op_name), options)
    finally:
        if restore is not None:
            restore()


def texture_from_camera(objects: Sequence[str] | None = None, **options: Any) -> None:
    """Options as the operator: size, use_render."""
    _run("Texture from camera", "texture_from_camera", objects, **options)


def tileable(objects: Sequence[str] | None = None, **options: Any) -> None:
    """Options: size, mapping ("BOX" | "UV"), scale."""
    _run("Tileable texture", "tileable", objects, **options)


def background(**options: Any) -> None:
    """Options: kind ("WORLD" | "BACKDROP"), size, camera_only."""
    _run("Background", "background", None, **options)


def stylize(**options: Any) -> None:
    """Options: frame_start, frame_end, size, output, name, mp4, coherence ("EXACT_FLOW",
    the default, or "OFF")."""
    _run("Stylize animation", "stylize_animation", None, **options)


__all__ = [
    "GenartScriptError",
    "background",
    "connect",
    "stylize",
    "texture_from_camera",
    "tileable",
    "use",
]
