"""Stylize animation: render every frame's passes first, then stream them into one sequence
job and write the stylized frames as they come, onto the Video Sequencer.

Rendering first and stylizing after keeps Cycles and the model from fighting over one GPU:
the sidecar is asked to offload its models before the renders. Depth is normalised once
for the whole range (near/far over every frame, DESIGN §9). Frames already on disk with
the same recipe hash are skipped (`stylize.py`), so re-running costs only what changed.
In the UI one frame renders per timer tick and the job is followed like any other (Esc
cancels it; frames written so far stay); in `blender -b` it all blocks, with progress lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from .. import capture, compat, runtime, stylize
from .._vendor.genart_protocol import Attachment, GenartError
from ..client import jobs as J
from ..optypes import OperatorResult
from .generate import (
    ActionError,
    GenerateOperator,
    _window_manager,
    _workspace,
    fit_render,
    operator_options,
    recipe_for,
    result_pixels,
)

TASK = "sequence"
WARMUP = 8  # frames a chunk warms up on (bench/temporal.py --chunk measured it)
# What every frame sends (and hashes); with coherence also the motion vectors and object
# ids, and each frame's hash then includes its predecessor's (it is built on it).
PASSES = ("depth", "normal")
COHERENCE_PASSES = ("vector", "object_index")
COHERENCE_ITEMS = [
    (
        "EXACT_FLOW",
        "Exact flow",
        "Carry each stylized frame to the next along the render's motion vectors (less flicker)",
    ),
    ("OFF", "Off", "Stylize every frame on its own"),
]


@dataclass
class Frame:
    frame: int
    capture: capture.Capture
    params: dict[str, Any]
    digest: str = ""
    inputs_hash: str = ""
    warmup: bool = False  # before the range: stylized to warm the sequence up, never written


@dataclass
class StylizeRun:
    """One stylize run, step by step (the operator drives it, blocking or per tick)."""

    scene: bpy.types.Scene
    name: str
    folder: Path
    frames: list[int]
    size: int
    work: Path
    todo: list[int] = field(default_factory=list)
    rendered: list[Frame] = field(default_factory=list)
    engine: str = ""
    job: J.Job | None = None
    index: dict[int, Frame] = field(default_factory=dict)  # job frame index -> Frame
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    coherence: str = "exact_flow"  # or "off"
    errors: dict[int, float] = field(default_factory=dict)  # frame -> its warping error
    # A chunk of a longer shot (a farm's): frames before the range, captured and stylized
    # first so that the range starts coherent with them (the operator's `warmup`).
    warmup: list[int] = field(default_factory=list)
    scene_range: tuple[int, int] | None = None  # near/far span the whole shot (DESIGN §9)
    warmed: int = 0

    def __post_init__(self) -> None:
        self.todo = [*self.warmup, *self.frames]
        self._t0 = time.monotonic()
        self.width, self.height = fit_render(self.scene, self.size)

    # -- 1. render ---------------------------------------------------------------------
    def render_next(self) -> bool:
        """Captures the next frame; True when every frame is captured."""
        from .. import bridge

        if not self.todo:
            return True
        frame = self.todo.pop(0)
        scene = self.scene
        scene.frame_set(frame)
        try:
            cap = capture.capture_camera(
                scene,
                self.work,
                width=self.width,
                height=self.height,
                passes=PASSES + (COHERENCE_PASSES if self.coherent else ()),
                stem=f"{frame:04d}",
            )
        except capture.CaptureError as exc:
            raise ActionError(f"frame {frame}: {exc}") from None
        engine_prompt = _engine_prompt(scene)
        filled = {
            "width": self.width,
            "height": self.height,
            "camera_rotation": list(cap.camera_rotation),
            "prompt": stylize.resolve_prompt(scene, frame, engine_prompt),
            "coherence": self.coherence,
        }
        request = bridge.build_request(scene, TASK, filled)
        self.engine = request.engine
        params = request.submit_params()["params"]
        self.rendered.append(Frame(frame, cap, params, warmup=frame in self.warmup))
        if not self.todo:
            self.timings["render"] = time.monotonic() - self._t0
        return not self.todo

    @property
    def coherent(self) -> bool:
        return self.coherence != "off"

    @property
    def total(self) -> int:
        """Frames to capture: the warm-up and the range."""
        return len(self.warmup) + len(self.frames)

    def near_far(self) -> tuple[float, float]:
        """One depth mapping for the whole shot: the captured frames' near/far and, for a
        chunk of the scene's range, the bounds of every other frame of it (no render), so
        every chunk of a farm uses the same mapping."""
        near = min(f.capture.near for f in self.rendered)
        far = max(f.capture.far for f in self.rendered)
        if self.scene_range is not None:
            done = {f.frame for f in self.rendered}
            rest = [n for n in range(self.scene_range[0], self.scene_range[1] + 1) if n not in done]
            span = capture.range_near_far(self.scene, rest, self.width, self.height)
            if span is not None:
                near, far = min(near, span[0]), max(far, span[1])
        return near, far

    # -- 2. submit what is not on disk yet ------------------------------------------------
    def submit(self) -> J.Job | None:
        """Sequence-wide near/far, recipe hashes, then one sequence job for the frames
        whose file is missing or stale; None when every frame is up to date."""
        session = runtime.session()
        near, far = self.near_far()
        version = runtime.session().engine_version(self.engine)
        # Chained only when the engine takes the coherence parameter (the bridge drops it
        # otherwise); every frame's params have the same keys.
        chained = self.coherent and "coherence" in self.rendered[0].params
        before = ""
        on_disk = {
            f.frame: stylize.existing_hash(stylize.frame_path(self.folder, f.frame))
            for f in self.rendered
        }
        for f in self.rendered:
            f.params.update(near=near, far=far)
            assert f.capture.passes_path is not None  # PASSES were asked for
            f.inputs_hash = stylize.pixels_hash([f.capture.color_path, f.capture.passes_path])
            model_sha = runtime.session().model_sha(str(f.params.get("model", "")), self.engine)
            hashed = {**f.params, "previous_frame": before} if chained else f.params
            f.digest = stylize.frame_hash(f.inputs_hash, self.engine, version, model_sha, hashed)
            kept = on_disk[f.frame]
            if f.warmup and kept is not None:  # stylized by an earlier chunk: the range
                f.digest = kept  # carries on from that file
            before = f.digest
        ranged = [f for f in self.rendered if not f.warmup]
        needed = [f for f in ranged if on_disk[f.frame] != f.digest]
        self.skipped = len(ranged) - len(needed)
        if not needed:
            return None
        if chained and needed[0] is ranged[0] and self.warmup:
            # The range's first frame is built on frame start−1: from its file on disk when
            # an earlier chunk wrote it, else on the warm-up frames stylized first.
            last_warm = self.rendered[len(self.rendered) - len(ranged) - 1]
            if on_disk[last_warm.frame] is None:
                warm = [f for f in self.rendered if f.warmup]
                needed = warm + needed
                self.warmed = len(warm)
        base = dict(needed[0].params)
        self.job = session.jobs.submit_sequence(
            self.engine, base, task=TASK, frames=len(needed), label=f"Stylize {self.name}"
        )
        by_frame = {f.frame: f for f in self.rendered}
        for i, f in enumerate(needed):
            self.index[i] = f
            overrides = {k: v for k, v in f.params.items() if base.get(k) != v}
            assert f.capture.passes_path is not None
            inputs = {
                "image": Attachment.blob("image", f.capture.color_path.read_bytes(), "png"),
                "passes": Attachment.blob("passes", f.capture.passes_path.read_bytes(), "exr"),
            }
            prior = by_frame.get(f.frame - 1)
            if chained and prior is not None and (i == 0 or needed[i - 1] is not prior):
                inputs.update(self._previous_inputs(prior))  # on disk, not in this job
            session.jobs.append(self.job, i, inputs, overrides)
        session.jobs.close(self.job)
        return self.job

    def _previous_inputs(self, before: Frame) -> dict[str, Attachment]:
        """The stylized frame before a re-run's first (or a gap), its passes and its
        render, so coherence carries on from what is on disk."""
        path = stylize.frame_path(self.folder, before.frame)
        if not path.is_file() or before.capture.passes_path is None:
            return {}
        return {
            "previous_image": Attachment.blob("previous_image", path.read_bytes(), "png"),
            "previous_passes": Attachment.blob(
                "previous_passes", before.capture.passes_path.read_bytes(), "exr"
            ),
            "previous_render": Attachment.blob(
                "previous_render", before.capture.color_path.read_bytes(), "png"
            ),
        }

    # -- 3. write frames as they come ---------------------------------------------------
    def collect(self, context: bpy.types.Context, options: dict[str, Any]) -> None:
        job = self.job
        if job is None:
            return
        for i, reply in job.take_frames().items():
            f = self.index[i]
            if f.warmup:
                continue
            holder = J.Job(job.label, job.engine, TASK, f.params, result=reply)
            recipe = recipe_for(context, _ACTION, holder, options)
            recipe.update(frame=f.frame, near=f.params["near"], far=f.params["far"])
            recipe["inputs_sha256"] = f.inputs_hash
            flicker = scalar_output(reply, "warping_error")
            if flicker is not None:
                self.errors[f.frame] = flicker
                recipe["warping_error"] = round(flicker, 3)
            path = stylize.frame_path(self.folder, f.frame)
            stylize.write_frame(path, result_pixels(holder), recipe, f.digest)
            self.written.append(path)
        for i, error in job.frame_errors.items():
            if not self.index[i].warmup:
                self.failed[self.index[i].frame] = error

    # -- 4. the timeline ---------------------------------------------------------------
    def finish(self, mp4: bool) -> tuple[Any, Path | None]:
        files = [stylize.frame_path(self.folder, f) for f in self.frames]
        present = [p for p in files if p.is_file()]
        if len(present) != len(files):
            missing = [f for f, p in zip(self.frames, files, strict=True) if not p.is_file()]
            raise ActionError(f"frames {missing[:8]} were not generated: {self.failed or ''}")
        review = stylize.review_scene(self.scene)
        strip = stylize.add_strip(review, f"genart {self.name}", files, self.frames[0])
        review.frame_start, review.frame_end = self.frames[0], self.frames[-1]
        movie = (
            encode_mp4(
                self.scene, files, self.folder / f"{self.name}.mp4", (self.width, self.height)
            )
            if mp4
            else None
        )
        self.timings["total"] = time.monotonic() - self._t0
        return strip, movie


def scalar_output(reply: Any, name: str) -> float | None:
    """A one-number float32 output of a frame's result, if it came."""
    import numpy as np

    att = reply.attachments.get(name) if reply is not None else None
    if att is None or att.dtype != "float32":
        return None
    return float(np.frombuffer(att.data, np.float32)[0])


def measured(run: StylizeRun) -> str:
    """'warping error 3.2 (mean over 23 frames, exact flow)' or ''."""
    if not run.errors:
        return ""
    mean = sum(run.errors.values()) / len(run.errors)
    return f"warping error {mean:.2f} (mean over {len(run.errors)} frames, exact flow)"


class _StylizeAction:
    name = "stylize_animation"
    label = "Stylize animation"


_ACTION: Any = _StylizeAction()


def _engine_prompt(scene: bpy.types.Scene) -> str:
    from .. import properties

    name = properties.chosen_engine(scene.genart, TASK)  # type: ignore[attr-defined]
    group = properties.engine_group(scene.genart, name)  # type: ignore[attr-defined]
    return str(getattr(group, "prompt", "") or "") if group is not None else ""


def encode_mp4(scene: bpy.types.Scene, files: list[Path], out: Path, size: tuple[int, int]) -> Path:
    """An H.264 MP4 of the frames with Blender's own encoder (a temporary scene)."""
    tmp = bpy.data.scenes.new("genart mp4")
    try:
        se = tmp.sequence_editor_create()
        strip = compat.strips(se).new_image(
            name="frames", filepath=str(files[0]), channel=1, frame_start=1
        )
        for f in files[1:]:
            strip.elements.append(f.name)
        r = tmp.render
        w, h = size
        r.resolution_x, r.resolution_y, r.resolution_percentage = w - w % 2, h - h % 2, 100
        r.fps, r.fps_base = scene.render.fps, scene.render.fps_base
        tmp.frame_start, tmp.frame_end = 1, len(files)
        compat.set_video_mp4(r.image_settings, r.ffmpeg)
        r.filepath = str(out)
        r.use_file_extension = False
        r.use_sequencer = True
        bpy.ops.render.render(animation=True, scene=tmp.name)
    finally:
        bpy.data.scenes.remove(tmp)
    if not out.is_file():
        raise ActionError(f"the MP4 was not written to {out}")
    return out


class GENART_OT_stylize_animation(GenerateOperator, bpy.types.Operator):
    """Stylize the scene's animation: render every frame's passes, then stylize them in one
    sequence job onto the Video Sequencer (frames already done with the same recipe are
    kept)"""

    bl_idname = "genart.stylize_animation"
    bl_label = "Stylize animation"
    bl_options = {"REGISTER", "UNDO"}
    action = _ACTION

    frame_start: bpy.props.IntProperty(name="Start", default=0, description="0: the scene's")  # type: ignore[valid-type]
    frame_end: bpy.props.IntProperty(name="End", default=0, description="0: the scene's")  # type: ignore[valid-type]
    size: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Size",
        default=512,
        min=64,
        max=4096,
        description="Longer side of the stylized frames in pixels (the camera's aspect)",
    )
    output: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Output",
        subtype="DIR_PATH",
        description="Folder for the frames; empty: //genart/<scene>_stylized/",
    )
    name: bpy.props.StringProperty(name="Name", default="")  # type: ignore[valid-type]
    mp4: bpy.props.BoolProperty(name="MP4", default=False, description="Also encode an MP4")  # type: ignore[valid-type]
    coherence: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Coherence", items=COHERENCE_ITEMS, default="EXACT_FLOW"
    )
    warmup: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Warm-up",
        default=WARMUP,
        min=0,
        max=64,
        description="A chunk of the shot (a farm's): stylize this many frames before Start "
        "first, not written, so the chunk carries on coherently (or from frame Start-1's "
        "stylized file when it is already there)",
    )

    def _start(self, context: bpy.types.Context) -> StylizeRun:
        scene = _scene(context)
        if scene.camera is None:
            raise ActionError("the scene has no active camera")
        start = self.frame_start or scene.frame_start
        end = self.frame_end or scene.frame_end
        if end < start:
            raise ActionError(f"frame range {start}..{end} is empty (fix frame_end)")
        name = self.name or f"{scene.name}_stylized"
        try:
            folder = stylize.output_folder(scene, name, self.output)
        except ValueError as exc:
            raise ActionError(str(exc)) from None
        folder.mkdir(parents=True, exist_ok=True)
        from .generate import scene_output_dir

        coherence = self.coherence.lower()
        first = max(scene.frame_start, start - self.warmup)
        if stylize.frame_path(folder, start - 1).is_file():
            first = max(first, start - 1)  # carried on from that file: its passes suffice
        run = StylizeRun(
            scene,
            name,
            folder,
            list(range(start, end + 1)),
            self.size,
            scene_output_dir(context, "stylize"),
            coherence=coherence,
            warmup=list(range(first, start)) if coherence != "off" else [],
            scene_range=(scene.frame_start, scene.frame_end),
        )
        client = runtime.session().client
        if client is not None:  # free the GPU for Blender's renders (best effort)
            client.request("unload", {"mode": "offload"})
        return run

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        why = self._ensure_ready(blocking=True)
        if why is not None:
            self.report({"ERROR"}, f"{self.bl_label}: {why}")
            return {"CANCELLED"}
        scene = _scene(context)
        frame0 = scene.frame_current
        options = operator_options(self)
        try:
            run = self._start(context)
            done = False
            while not done:
                done = run.render_next()
                print(
                    f"genart: stylize: rendered frame {run.rendered[-1].frame} "
                    f"({len(run.rendered)}/{run.total})",
                    flush=True,
                )
            scene.frame_set(frame0)
            job = run.submit()
            if job is not None:
                last = [0.0]

                def show(j: J.Job) -> None:
                    run.collect(context, options)
                    if time.monotonic() - last[0] >= 1.0 or j.finished:
                        print(f"genart: stylize: {j.text} ({j.fraction * 100:.0f}%)", flush=True)
                        last[0] = time.monotonic()

                runtime.session().jobs.wait(job, None, on_update=show)
                run.collect(context, options)
                if job.state == J.CANCELLED:
                    self.report({"WARNING"}, f"cancelled; {len(run.written)} frames written")
                    return {"CANCELLED"}
                if job.state == J.FAILED:
                    raise ActionError(job.error)
            strip, movie = run.finish(self.mp4)
        except (ActionError, GenartError, OSError) as exc:
            scene.frame_set(frame0)
            return self._fail_early(exc)
        self.report_done(run, strip, movie)
        return {"FINISHED"}

    def report_done(self, run: StylizeRun, strip: Any, movie: Path | None) -> None:
        self.generated = len(run.written)
        self.skipped = run.skipped
        quality = measured(run)
        run.scene.genart.stylize_report = (  # type: ignore[attr-defined]
            f"{run.name}: {len(run.written)} frames generated" + (f", {quality}" if quality else "")
        )
        self.report(
            {"INFO"},
            f"Stylized {len(run.frames)} frames into {run.folder} ({len(run.written)} generated, "
            f"{run.skipped} up to date), strip '{strip.name}' in channel {strip.channel}"
            + f" of scene '{strip.id_data.name}'"
            + (f", {movie.name}" if movie else "")
            + (f", warmed up on {run.warmed} frames before" if run.warmed else "")
            + (f"; {quality}" if quality else ""),
        )

    # UI: render one frame per timer tick, then follow the job (Esc cancels it).
    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        if bpy.app.background:
            return self.execute(context)
        why = self._ensure_ready(blocking=False)
        if why is not None:
            self.report({"ERROR"}, f"{self.bl_label}: {why}")
            return {"CANCELLED"}
        try:
            self._run = self._start(context)
        except (ActionError, GenartError, OSError) as exc:
            return self._fail_early(exc)
        self._frame0 = _scene(context).frame_current
        self._job = None
        wm = _window_manager(context)
        self._timer = wm.event_timer_add(0.05, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        run: StylizeRun = self._run
        if event.type == "ESC" and event.value == "PRESS":
            if self._job is None:
                self._cleanup(context)
                _scene(context).frame_set(self._frame0)
                self.report({"WARNING"}, "cancelled while rendering; nothing was sent")
                return {"CANCELLED"}
            runtime.session().jobs.cancel(self._job)
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        wm = _window_manager(context)
        try:
            if self._job is None:
                done = run.render_next()
                wm.progress_update(int(40 * len(run.rendered) / run.total))
                _workspace(context).status_text_set(
                    f"genart: rendering frame {len(run.rendered)}/{run.total} (Esc cancels)"
                )
                if not done:
                    return {"RUNNING_MODAL"}
                _scene(context).frame_set(self._frame0)
                self._job = run.submit()
                if self._job is None:
                    return self._done(context, run)
                return {"RUNNING_MODAL"}
            runtime.session().tick()
            run.collect(context, operator_options(self))
            job = self._job
            wm.progress_update(40 + int(60 * job.fraction))
            _workspace(context).status_text_set(f"genart: stylize: {job.text} (Esc cancels)")
            if not job.finished:
                return {"RUNNING_MODAL"}
            if job.state == J.CANCELLED:
                self._cleanup(context)
                self.report({"WARNING"}, f"cancelled; {len(run.written)} frames written")
                return {"CANCELLED"}
            if job.state == J.FAILED:
                raise ActionError(job.error)
            return self._done(context, run)
        except (ActionError, GenartError, OSError) as exc:
            self._cleanup(context)
            _scene(context).frame_set(self._frame0)
            return self._fail_early(exc)

    def _done(self, context: bpy.types.Context, run: StylizeRun) -> OperatorResult:
        self._cleanup(context)
        strip, movie = run.finish(self.mp4)
        self.report_done(run, strip, movie)
        return {"FINISHED"}


def _scene(context: bpy.types.Context) -> bpy.types.Scene:
    scene = context.scene
    assert scene is not None  # operators run with a scene; the stubs type it Optional
    return scene


__all__ = ["GENART_OT_stylize_animation", "StylizeRun", "encode_mp4", "scalar_output"]
