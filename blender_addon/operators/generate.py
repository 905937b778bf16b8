"""The frame every generating operator shares: prepare, submit, follow, apply.

An operator is an `Action` (what to capture and ask for, and what to do with the picture
that comes back) run by `GenerateOperator`:

- **In the UI** `invoke` prepares (a capture renders, as F12 does), submits the job and
  returns; a modal timer follows it: progress in the status bar and the panel, the latest
  preview in the "genart preview" image, Esc cancels only this job. When the picture
  arrives the operator applies it and finishes: one undo step, never from a timer.
- **In `blender -b`** (timers do not fire while a script runs) `execute` does the same
  blocking: the session is ticked by hand and progress lines go to stdout.

Errors from the sidecar become one report line naming the field to fix; an unreachable
sidecar says how to configure it. Nothing is changed in the scene until the result is
applied, so a failure or a cancel leaves it as it was.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import bpy
import numpy as np

from .. import runtime
from .._vendor.genart_protocol import Attachment, GenartError
from ..client import jobs as J
from ..client.session import READY
from ..optypes import OperatorFlag, OperatorResult, ReportKind

# Actions without a control image clear the control models the user chose for Texture
# from camera (an engine's parameters are shared by its tasks); engines without such
# parameters never see them (the bridge drops filled values an engine does not take).
NO_CONTROL = {"depth_controlnet": "", "normal_controlnet": ""}
READY_TIMEOUT = 60.0  # seconds the headless path waits for a sidecar to come up
JOB_TIMEOUT = 3600.0  # seconds: a headless job with no result by then fails
TIMER_SECONDS = 0.1
KEEP_CAPTURES = 4  # capture folders kept besides the newest (a running job may need them)
PREVIEW_IMAGE = "genart preview"
HOW_TO_CONFIGURE = (
    "Configure the sidecar in Preferences > Add-ons > genart (or GENART_SIDECAR / "
    "GENART_CONNECTION_FILE) and press Check sidecar"
)


class ActionError(Exception):
    """Something the user must change before the action can run (one line)."""


@dataclass
class Prepared:
    """What an action sends, and what it keeps for applying the answer."""

    task: str
    filled: dict[str, Any]  # parameters the action sets (size, near/far, tileable...)
    inputs: dict[str, Attachment] = field(default_factory=dict)
    keep: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class Outcome:
    """What an applied result made, for the report (and tests)."""

    message: str
    created: dict[str, list[str]] = field(default_factory=dict)


class Action:
    """One user action; subclasses fill in `prepare` and `apply`."""

    name = "generate"
    label = "Generate"

    def prepare(self, context: bpy.types.Context, op: Any) -> Prepared:
        raise NotImplementedError

    def apply(
        self,
        context: bpy.types.Context,
        op: Any,
        prepared: Prepared,
        pixels: np.ndarray,
        recipe: dict[str, Any],
    ) -> Outcome:
        raise NotImplementedError


def apply_errors() -> tuple[type[Exception], ...]:
    """The typed errors reading and applying a result raise (each says what to change)."""
    from .. import images, projection
    from ..apply import ApplyError

    return (ActionError, ApplyError, projection.ProjectionError, images.ImageStoreError)


def result_pixels(job: J.Job) -> np.ndarray:
    """The job's image output as (H, W, C) uint8, rows top to bottom."""
    assert job.result is not None
    att = job.result.attachments.get("image")
    if att is None or att.shape is None:
        names = sorted(job.result.attachments)
        raise ActionError(f"the engine returned no image (outputs: {names})")
    if att.dtype != "uint8":
        raise ActionError(f"the engine returned {att.dtype} pixels, expected uint8")
    return np.frombuffer(att.data, dtype=np.uint8).reshape(att.shape)


def operator_options(op: Any) -> dict[str, Any]:
    """The operator's own settings (size, mapping...), for the recipe and Re-generate."""
    out = {}
    for prop in op.properties.bl_rna.properties:
        if prop.identifier not in ("rna_type", "recipe_image"):
            out[prop.identifier] = getattr(op, prop.identifier)
    return out


def recipe_for(
    context: bpy.types.Context, action: Action, job: J.Job, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything needed to make the picture again (stored on the image and in its PNG)."""
    params = dict(job.params)
    model = str(params.get("model", ""))
    scene = context.scene
    assert scene is not None  # operators run with a scene; the stubs type it Optional
    view_settings = scene.view_settings
    assert view_settings is not None  # never None in Blender; the stubs type it Optional
    session = runtime.session()
    return {
        "action": action.name,
        "engine": job.engine,
        "engine_version": session.engine_version(job.engine),
        "task": job.task,
        "params": params,
        "model": session.resolved_model(job.engine, model),
        "model_sha256": session.model_sha(model, job.engine),
        "view_transform": view_settings.view_transform,
        "blender": bpy.app.version_string,
        "warnings": list(job.warnings),
        "options": dict(options or {}),
    }


def _progress_line(action: Action, job: J.Job) -> str:
    return f"genart: {action.label.lower()}: {job.text} ({job.fraction * 100:.0f}%)"


def _show_preview(job: J.Job) -> None:
    """The latest preview into the 'genart preview' image (never saved: no users)."""
    att = job.preview
    if att is None or att.shape is None or att.dtype != "uint8" or len(att.shape) != 3:
        return
    h, w, c = att.shape
    # Typed by hand: the stubs' bpy_prop_collection.get returns only its default's type.
    img: bpy.types.Image | None = bpy.data.images.get(PREVIEW_IMAGE)
    if img is None or tuple(img.size) != (w, h):
        if img is not None:
            bpy.data.images.remove(img)
        img = bpy.data.images.new(PREVIEW_IMAGE, w, h, alpha=True)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., : min(c, 4)] = np.frombuffer(att.data, np.uint8).reshape(h, w, c)[..., :4] / 255.0
    # The stubs type Image.pixels as one float; it is the image's array of floats.
    pixels = cast("bpy.types.bpy_prop_array[float]", img.pixels)
    pixels.foreach_set(rgba[::-1].ravel())  # Blender rows go bottom-up
    img.update()


class GenerateOperator:
    """Mixin for `bpy.types.Operator` subclasses: set `action` (an Action instance)."""

    action: Action
    bl_options: set[OperatorFlag] = {"REGISTER", "UNDO"}

    _job: J.Job | None
    _prepared: Prepared | None
    _timer: Any

    if TYPE_CHECKING:
        # bpy.types.Operator's, which the class this is mixed into provides.
        def report(self, type: set[ReportKind] | None, message: str) -> None: ...

    # -- helpers -----------------------------------------------------------------------
    def _ensure_ready(self, blocking: bool) -> str | None:
        """None when the sidecar is ready, else why not (starting it if stopped)."""
        session = runtime.session()
        if session.state != READY:
            from ..preferences import preferences

            try:
                settings = preferences(bpy.context).effective()
            except (KeyError, ValueError) as exc:
                return f"genart settings are invalid: {exc}. {HOW_TO_CONFIGURE}"
            if session.state in ("stopped", "dead") or session.settings != settings:
                session.start(settings)
            if blocking:
                session.wait(READY_TIMEOUT, stop_on_failure=True)
        if session.state == READY:
            return None
        reason = session.reason or session.text
        return f"the sidecar is not ready ({reason}). {HOW_TO_CONFIGURE}"

    def _submit(self, context: bpy.types.Context) -> J.Job:
        from .. import bridge

        recipe = self._recipe()
        prepared = self.action.prepare(context, self)
        self._prepared = prepared
        label = prepared.label or self.action.label
        if recipe is not None:  # Re-generate: the recipe's engine and values, new capture
            params = {**recipe["params"], **prepared.filled}
            return runtime.session().jobs.submit(
                recipe["engine"],
                params,
                task=recipe.get("task"),
                inputs=prepared.inputs,
                label=label,
            )
        request = bridge.build_request(context.scene, prepared.task, prepared.filled)
        return runtime.session().jobs.submit(
            request.engine,
            request.submit_params()["params"],
            task=request.task,
            inputs=prepared.inputs,
            label=label,
        )

    def _recipe(self) -> dict[str, Any] | None:
        """The recipe of the image named by `recipe_image` (Re-generate), else None."""
        name = getattr(self, "recipe_image", "")
        if not name:
            return None
        from .. import images

        image: bpy.types.Image | None = bpy.data.images.get(name)  # typed: see _show_preview
        recipe = images.recipe_of(image) if image is not None else None
        if not recipe or recipe.get("action") != self.action.name or "params" not in recipe:
            raise ActionError(f"image {name!r} holds no genart {self.action.label} recipe")
        return recipe

    def _finish(self, context: bpy.types.Context, job: J.Job) -> OperatorResult:
        """Apply a finished job (main thread, inside the operator: one undo step)."""
        if job.state == J.CANCELLED:
            self.report({"WARNING"}, f"{self.action.label}: cancelled; the scene is unchanged")
            return {"CANCELLED"}
        if job.state != J.DONE:
            self.report({"ERROR"}, f"{self.action.label} failed: {job.error}")
            return {"CANCELLED"}
        assert self._prepared is not None
        try:
            pixels = result_pixels(job)
            recipe = recipe_for(context, self.action, job, operator_options(self))
            outcome = self.action.apply(context, self, self._prepared, pixels, recipe)
        except apply_errors() as exc:
            field_ = getattr(exc, "field", None)
            hint = f" (fix {field_})" if field_ and field_ not in str(exc) else ""
            self.report({"ERROR"}, f"{self.action.label}: {exc}{hint}")
            return {"CANCELLED"}
        for warning in job.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, outcome.message)
        self.outcome = outcome
        return {"FINISHED"}

    def _fail_early(self, exc: BaseException) -> OperatorResult:
        if isinstance(exc, GenartError):
            message, _ = J.error_text(exc)
        else:
            message = str(exc)
        self.report({"ERROR"}, f"{self.action.label}: {message}")
        return {"CANCELLED"}

    # -- blocking (blender -b, scripts) ------------------------------------------------
    def execute(self, context: bpy.types.Context) -> OperatorResult:
        why = self._ensure_ready(blocking=True)
        if why is not None:
            self.report({"ERROR"}, f"{self.action.label}: {why}")
            return {"CANCELLED"}
        try:
            job = self._submit(context)
        except (ActionError, GenartError) as exc:
            return self._fail_early(exc)
        last = [0.0]

        def show(j: J.Job) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 or j.finished:
                print(_progress_line(self.action, j), flush=True)
                last[0] = now

        runtime.session().jobs.wait(job, JOB_TIMEOUT, on_update=show)
        return self._finish(context, job)

    # -- the UI: non-blocking -----------------------------------------------------------
    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        if bpy.app.background:
            return self.execute(context)
        why = self._ensure_ready(blocking=False)
        if why is not None:
            self.report({"ERROR"}, f"{self.action.label}: {why}")
            return {"CANCELLED"}
        try:
            self._job = self._submit(context)
        except (ActionError, GenartError) as exc:
            return self._fail_early(exc)
        wm = _window_manager(context)
        self._timer = wm.event_timer_add(TIMER_SECONDS, window=context.window)
        wm.progress_begin(0, 100)
        assert isinstance(self, bpy.types.Operator)  # what this class is mixed into
        wm.modal_handler_add(self)
        _workspace(context).status_text_set(f"genart: {self.action.label}... (Esc cancels)")
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        job = self._job
        assert job is not None
        if event.type == "ESC" and event.value == "PRESS":
            runtime.session().jobs.cancel(job)
            _workspace(context).status_text_set("genart: cancelling...")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        seen = job.preview_count
        runtime.session().tick()
        if job.preview_count != seen:
            _show_preview(job)
        _window_manager(context).progress_update(int(job.fraction * 100))
        _workspace(context).status_text_set(_progress_line(self.action, job) + " (Esc cancels)")
        if not job.finished:
            return {"RUNNING_MODAL"}
        self._cleanup(context)
        return self._finish(context, job)

    def cancel(self, context: bpy.types.Context) -> None:
        job = getattr(self, "_job", None)
        if job is not None:
            runtime.session().jobs.cancel(job)
        self._cleanup(context)

    def _cleanup(self, context: bpy.types.Context) -> None:
        wm = _window_manager(context)
        if getattr(self, "_timer", None) is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        _workspace(context).status_text_set(None)


# The UI path (invoke, modal, cancel) runs in a window, so Blender sets both of these; the
# stubs type them Optional.
def _window_manager(context: bpy.types.Context) -> bpy.types.WindowManager:
    wm = context.window_manager
    assert wm is not None
    return wm


def _workspace(context: bpy.types.Context) -> bpy.types.WorkSpace:
    workspace = context.workspace
    assert workspace is not None
    return workspace


def fit_long_side(
    width: float, height: float, long_side: int, multiple: int = 8
) -> tuple[int, int]:
    """(w, h) with the aspect of width×height, the longer side `long_side`, both multiples."""
    scale = long_side / max(width, height)
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return int(w), int(h)


def fit_render(scene: bpy.types.Scene, long_side: int) -> tuple[int, int]:
    """The scene's render aspect (pixel aspect included) at `long_side` pixels."""
    r = scene.render
    return fit_long_side(
        r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y, long_side
    )


def selected_meshes(context: bpy.types.Context, missing: str) -> list[str]:
    """The names of the selected mesh objects (kept by name: the job outlives references);
    ActionError(`missing`) when there are none."""
    names = [o.name for o in context.selected_objects if o.type == "MESH"]
    if not names:
        raise ActionError(missing)
    return names


def kept_objects(names: list[str], gone: str) -> list[bpy.types.Object]:
    """The objects still there of those named when the job started; ActionError(`gone`)
    when every one was deleted meanwhile."""
    found: list[bpy.types.Object | None] = [bpy.data.objects.get(n) for n in names]
    objects = [o for o in found if o is not None]
    if not objects:
        raise ActionError(gone)
    return objects


def with_notes(message: str, notes: tuple[str, ...] | list[str]) -> str:
    return message + (f" ({'; '.join(notes)})" if notes else "")


def scene_output_dir(context: bpy.types.Context, kind: str) -> Path:
    """A fresh folder for one action's temporary files (captures), under the add-on's
    user folder (never beside the user's files)."""
    root = Path(bpy.utils.extension_path_user(__package__.rsplit(".", 1)[0], create=True))
    captures = root / "captures"
    path = captures / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{id(context) % 10000}"
    path.mkdir(parents=True, exist_ok=True)
    # Captures are only needed until their job is applied: keep the newest few, no more.
    old = sorted(
        (p for p in captures.iterdir() if p.is_dir() and p != path),
        key=lambda p: p.stat().st_mtime,
    )
    for stale in old[: max(0, len(old) - KEEP_CAPTURES)]:
        shutil.rmtree(stale, ignore_errors=True)
    return path


__all__ = [
    "fit_long_side",
    "fit_render",
    "kept_objects",
    "selected_meshes",
    "with_notes",
    "NO_CONTROL",
    "Action",
    "ActionError",
    "GenerateOperator",
    "Outcome",
    "Prepared",
    "recipe_for",
    "result_pixels",
    "scene_output_dir",
]
