"""Stylize renders: with `scene.genart.stylize_renders` on, every frame Blender renders (F12,
Ctrl+F12, `blender -b file.blend -a` / `-f N`, `bpy.ops.render.render`) also goes through
the sidecar with the scene's genart settings: the `sequence` task's engine, its parameters
as they are at that frame (keyframed values) and the prompt from the schedule. So any farm
manager that runs `blender -b -a` (Flamenco included) stylizes with no extra integration.

**Where the frames go.** Beside Blender's own output, in a `genart` folder:
`<folder of the frame Blender writes>/genart/<its name>.png`, the name taken from
`render.frame_path(frame)`: `//render/shot_####` gives `//render/genart/shot_0007.png`
(an F12 still, which writes nothing, and `write_still`, which writes `shot_####.png` as is, get the
same numbered name). Blender's files are only read. Each PNG carries its recipe and recipe
hash (`stylize.write_frame`); the hash covers the rendered frame's 8-bit pixels, the engine
and its version, the model and the resolved parameters, so a frame whose stylized file is up
to date is not sent again. After an animation (consecutive frames, none failed) the frames
go on the Video Sequencer of a scene of their own, `<scene> genart` (`stylize.add_strip`,
replacing the previous render's strip), not of the rendered scene: a scene with an image
strip renders its sequencer instead of its camera (measured in the 5.0 wheel), so the next
render would stylize the stylized frames.

**Threads** (read in Blender's `render/intern/pipeline.cc` and `editors/render/
render_internal.cc`, the same in 4.5 and 5.0; measured in the bpy 5.0.1 wheel):
- F12 / Ctrl+F12 (`render.render` invoked) start a window-manager job whose worker thread
  runs `RE_RenderFrame` / `RE_RenderAnim`, so every render handler (`render_init`,
  `render_pre`, `render_post`, `render_write`, `render_complete`, `render_cancel`, and the
  `frame_change_*` the pipeline calls) runs on that thread. Only `render_endjob` (no Python
  handler) runs on the main thread, after `render_complete`; `bpy.app.is_job_running
  ("RENDER")` is true until then.
- `blender -b -a` / `-f N` (both `RE_RenderAnim`) and `render.render` called from a script
  (exec, GUI or background) run the pipeline on the calling main thread: every handler runs
  there. Blender releases the GIL while it renders (measured: a Python thread keeps running
  during `bpy.ops.render.render`), so the sidecar client's threads upload meanwhile.
- Per frame: `render_pre` (the scene's own animation, `scene.genart` included, has just been
  evaluated for that frame on the original scene: measured), the render, the file written,
  `render_post`, `render_write` (only when a file was written; no path is passed: it is
  `render.frame_path(frame)` for animations and `render.filepath` unnumbered for
  `write_still`). Then once `render_complete` or `render_cancel`.

**What runs where here.** Handlers only read and post messages on a thread-safe queue:
`render_pre` takes a plain `Snapshot` of the scene's genart values (request building may
register property groups: main thread only), `render_write` reads Blender's file with
Blender's OpenImageIO. Their notes are kept per handler thread, so an exec render on the
main thread cannot mix with a render job. The main thread does the rest (`pump`): builds
each frame's checked request (`bridge`), skips up-to-date frames, streams the others into a
sequence job (`Jobs` is not thread-safe), writes frames as they come back and, once the
render is over, adds the strip. In the GUI a timer pumps every 0.2 s and waits for the render
job to end before it touches scene data, so the GUI never waits on the sidecar and frames
are stylized while the next ones render (both share the GPU: the Stylize animation operator
renders first for that reason). Where handlers run on the main thread they pump themselves;
in background mode (no timers) `render_complete` blocks until every frame is settled. An F12
still writes no file: the main thread, after the job has ended, saves the Render Result as
an 8-bit PNG (`Image.save_render`, the scene's view transform applied like the written
frames; the output format is switched for that and restored) and sends that.

**Coherence** (`scene.genart.stylize_renders_coherence`, Exact flow by default): the
render writes each frame's passes through the compositor node `render_passes` adds; the
handler moves them beside the stylized frame (`genart/passes/<name>.exr`) and sends them
with the frame. Within one render the sequence job carries each frame on from the one
before; a frame whose job-previous is not frame n−1 (F12 on the next frame, a render that
resumes after up-to-date frames, a farm chunk) also sends frame n−1's stylized file and
passes from disk. A frame's recipe hash chains frame n−1's. Without usable passes (no
node, motion blur on, Workbench, a frame step above 1) the frame is stylized on its own,
and the log and its recipe say why.

**Failures** are never skipped silently: each failed frame is printed with its reason and
shown in the genart panel; in background mode a render with a failed frame makes the process
exit with status 1 (an `atexit` hook prints the one-line reason, stops the session and calls
`os._exit(1)`: Blender only prints handler exceptions, and `SystemExit` raised in a handler
kills the process on the spot, mid-render: measured in the wheel). Outputs Blender writes as
movies or scene-linear files (OpenEXR, HDR) cannot be an image input: those frames fail with
a line saying to pick PNG, JPEG, TIFF or WebP. Frames Blender skips (Overwrite off) are not
stylized by that render. Renders the add-on starts itself (captures, the MP4 encode) are
left alone: their module is on the Python stack of `render_init`.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import bridge, compat, properties, render_passes, runtime, stylize
from ._vendor.genart_protocol import Attachment, GenartError
from .client import jobs as J
from .client.session import DEAD, READY, STOPPED

TASK = "sequence"
SUBFOLDER = "genart"
PUMP_SECONDS = 0.2
READY_TIMEOUT = 60.0  # seconds a blocking start of the sidecar may take
JOB_TIMEOUT = 3600.0  # seconds background mode waits for the last frames
LINEAR_FORMATS = frozenset({"OPEN_EXR", "OPEN_EXR_MULTILAYER", "HDR"})
ADDON_RENDERERS = ("capture", "operators.stylize")  # their renders are the add-on's own
PREFIX = "genart: stylize renders"
_UNSET = "\x00"


class _Action:
    name = "stylize_renders"
    label = "Stylize renders"


@dataclass
class Snapshot:
    """`scene.genart` at one frame as plain data, shaped like the properties so that
    `bridge.build_request` reads it: `genart.sequence_engine_name`, `genart.engines.<id>`."""

    genart: SimpleNamespace
    prompt: str | None  # from the schedule or a marker; None: the engine's own prompt
    coherent: bool = False  # Exact flow asked for (the frame may still lack its passes)


@dataclass
class Frame:
    """One rendered frame: read where the handler runs, sent and written on the main thread."""

    frame: int
    out: Path | None = None
    source: str = ""
    pixels: np.ndarray | None = None  # (H, W, C) uint8, rows top to bottom
    inputs_hash: str = ""
    snapshot: Snapshot | None = None
    error: str = ""
    engine: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    # Coherence (render_passes): this frame's passes as the render wrote them, frame n−1's
    # stylized file and passes on disk, or why the frame goes without coherence.
    passes: Path | None = None
    previous: tuple[Path, Path, Path] | None = None  # stylized, passes, Blender's render
    note: str = ""


@dataclass
class Started:
    scene: str
    range_frames: int


@dataclass
class Ended:
    cancelled: bool
    still: Frame | None  # an F12 still with no file: the main thread saves the Render Result


@dataclass
class Sent:
    job: J.Job
    capacity: int
    index: dict[int, Frame] = field(default_factory=dict)  # job frame -> Frame
    closed: bool = False
    given_up: bool = False  # the sidecar is gone: its frames have failed

    @property
    def settled(self) -> bool:
        return self.job.finished or self.given_up


@dataclass
class Run:
    """One render as the main thread follows it."""

    rid: int
    scene: str
    range_frames: int
    frames: list[Frame] = field(default_factory=list)  # every frame seen, in render order
    incoming: list[Frame] = field(default_factory=list)  # waiting for the sidecar
    todo: list[Frame] = field(default_factory=list)  # to send
    sent: list[Sent] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    up_to_date: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    errors: dict[int, float] = field(default_factory=dict)  # frame -> its warping error
    ended: bool = False
    cancelled: bool = False
    still: Frame | None = None
    tried_session: bool = False

    def fail(self, frame: int, reason: str) -> None:
        reason = " ".join(reason.split()) or "failed"
        if frame not in self.failed:
            self.failed[frame] = reason
            _say(f"frame {frame} failed: {reason}", alert=True)


@dataclass
class _Render:
    """The handler thread's notes on the render in progress."""

    rid: int
    t0: float
    snapshots: dict[int, Snapshot | str] = field(default_factory=dict)
    rendered: int = 0
    wrote: bool = False

    def post(self, msg: Started | Frame | Ended) -> None:
        STATE.messages.put((self.rid, msg))


class _State:
    """The module's one mutable holder (like runtime.RUNTIME): the queue from the handler
    thread to the main thread, each side's render and what the panel shows."""

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue[tuple[int, Started | Frame | Ended]] = queue.SimpleQueue()
        # The renders in progress by the thread their handlers run on (an exec render on the
        # main thread could overlap a GUI render job), and the runs the main thread follows.
        self.renders: dict[int, _Render] = {}
        self.ids = itertools.count(1)
        self.runs: list[Run] = []
        self.status = ""
        self.alert = False
        self.exit_reason = ""


STATE = _State()


# -- paths ------------------------------------------------------------------------------
def stylized_path(scene: bpy.types.Scene, frame: int) -> Path:
    """`<folder of Blender's frame>/genart/<its name>.png` (see the module docstring)."""
    render = scene.render
    raw = render.frame_path(frame=frame)
    if raw.startswith("//"):
        raise OSError("the output path is relative to the .blend: save it first")
    path = Path(os.path.abspath(raw))
    name = path.stem if render.use_file_extension else path.name
    return path.parent / SUBFOLDER / f"{name}.png"


def still_path(scene: bpy.types.Scene) -> Path:
    """The file `write_still` writes: `render.filepath` without a frame number ('#' kept)."""
    render = scene.render
    a, b = render.frame_path(frame=0), render.frame_path(frame=1)
    last = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if last is None:
        return Path(os.path.abspath(a))
    hashes = re.findall(r"#+", render.filepath)
    width = len(hashes[-1]) if hashes else 4
    start = last - width + 1
    return Path(os.path.abspath(a[:start] + ("#" * width if hashes else "") + a[last + 1 :]))


def written_path(scene: bpy.types.Scene, frame: int, since: float) -> Path:
    """The file Blender wrote for `frame` in this render (an animation's numbered frame or
    a still's), the newer one when both are there."""
    candidates = [Path(os.path.abspath(scene.render.frame_path(frame=frame))), still_path(scene)]
    fresh = [(p.stat().st_mtime, -i, p) for i, p in enumerate(candidates) if p.is_file()]
    fresh = [c for c in fresh if c[0] >= since - 2.0]
    if not fresh:
        raise OSError(f"the frame Blender wrote was not found at {candidates[0]}")
    return max(fresh)[2]


def check_output(scene: bpy.types.Scene) -> None:
    """Raises OSError when Blender's output cannot be a model's image input."""
    render = scene.render
    fmt = render.image_settings.file_format
    if render.is_movie_format:
        raise OSError(
            "the output is a movie: set Output > File Format to PNG, JPEG, TIFF or WebP "
            "(stylize renders reads each written frame)"
        )
    if fmt in LINEAR_FORMATS:
        raise OSError(
            f"the output format {fmt} is scene-linear: set Output > File Format to PNG, JPEG, "
            "TIFF or WebP (the model takes display-referred colour)"
        )
    if render.use_multiview:
        raise OSError("stereo/multiview renders are not supported: turn off Stereoscopy")


def read_pixels(path: Path) -> tuple[np.ndarray, str]:
    """A written frame as (H, W, C) uint8 (C 1, 3 or 4) and the SHA-256 of those pixels,
    read with Blender's own OpenImageIO (any format Blender writes; no bpy: thread-safe)."""
    oiio = compat.openimageio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise OSError(f"cannot read {path}: {oiio.geterror()}")
    try:
        spec = inp.spec()
        data = inp.read_image(oiio.UINT8)
    finally:
        inp.close()
    if data is None:
        raise OSError(f"cannot read the pixels of {path}: {oiio.geterror()}")
    arr = np.asarray(data, dtype=np.uint8).reshape(spec.height, spec.width, spec.nchannels)
    arr = np.ascontiguousarray(arr[..., :1] if arr.shape[2] == 2 else arr[..., :4])
    digest = hashlib.sha256(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()
    return arr, digest


# -- what the handlers read ---------------------------------------------------------------
def snapshot(scene: bpy.types.Scene, frame: int) -> Snapshot | str:
    """The scene's genart values now (reads only), or why they cannot be taken."""
    built = properties.current()
    if built is None:
        return (
            "the sidecar's engines were not known when the frame rendered: connect the "
            "sidecar (Check sidecar) and render again"
        )
    settings = scene.genart  # type: ignore[attr-defined]
    engines = {}
    for spec in built.engines.values():
        group = getattr(settings.engines, spec.prop, None)
        if TASK in spec.tasks and group is not None:
            props = [p.prop for p in spec.params if hasattr(group, p.prop)]
            engines[spec.prop] = SimpleNamespace(**{k: _plain(getattr(group, k)) for k in props})
    genart = SimpleNamespace(
        engines=SimpleNamespace(**engines),
        **{f"{TASK}_engine_name": getattr(settings, f"{TASK}_engine_name")},
    )
    scheduled = stylize.resolve_prompt(scene, frame, _UNSET)
    return Snapshot(genart, None if scheduled == _UNSET else scheduled, render_passes.wanted(scene))


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else tuple(value)


def _enabled(scene: Any) -> bool:
    settings = getattr(scene, "genart", None)
    return bool(getattr(settings, "stylize_renders", False))


def _started_by_addon() -> bool:
    """True when this render was started by the add-on's own code (a capture, the MP4
    encode): their module is on the calling Python stack (empty on a render job thread)."""
    own = {f"{__package__}.{name}" for name in ADDON_RENDERERS}
    f = sys._getframe(1)
    while f is not None:
        if f.f_globals.get("__name__") in own:
            return True
        f = f.f_back  # type: ignore[assignment]
    return False


def _on_main() -> bool:
    return threading.current_thread() is threading.main_thread()


# -- the handlers (whichever thread Blender calls them on) ----------------------------------
def _current() -> _Render | None:
    return STATE.renders.get(threading.get_ident())


def _render_init(scene: bpy.types.Scene) -> None:
    STATE.renders.pop(threading.get_ident(), None)
    if not _enabled(scene) or _started_by_addon():
        return
    step = max(1, scene.frame_step)
    count = len(range(scene.frame_start, scene.frame_end + 1, step))
    rd = STATE.renders[threading.get_ident()] = _Render(next(STATE.ids), time.time())
    rd.post(Started(scene.name, max(1, count)))
    if _on_main():  # exec / background: the sidecar and the engines before the first frame
        pump(blocking=True)


def _render_pre(scene: bpy.types.Scene) -> None:
    rd = _current()
    if rd is not None:
        rd.rendered += 1
        rd.snapshots[scene.frame_current] = snapshot(scene, scene.frame_current)


def _render_write(scene: bpy.types.Scene) -> None:
    rd = _current()
    if rd is None:
        return
    rd.wrote = True
    n = scene.frame_current
    item = Frame(n)
    snap = rd.snapshots.pop(n, None) or snapshot(scene, n)
    try:
        item.out = stylized_path(scene, n)
        check_output(scene)
        source = written_path(scene, n, rd.t0)
        item.source = str(source)
        item.pixels, item.inputs_hash = read_pixels(source)
    except OSError as exc:
        item.error = str(exc)
    if isinstance(snap, str):
        item.error = item.error or snap
    else:
        item.snapshot = snap
    _coherence_inputs(scene, item, rd.t0)
    rd.post(item)
    if _on_main():
        pump()


def _coherence_inputs(scene: bpy.types.Scene, item: Frame, t0: float) -> None:
    """With Exact flow: the passes this render wrote for the frame, moved beside its
    stylized frame (`genart/passes/<name>.exr`, so a frame and its passes stay together
    whatever the output path was when the node was set up; their pixels join the frame's
    inputs hash), and frame n−1's stylized file and passes; else why not (no bpy writes)."""
    if item.error or item.snapshot is None or not item.snapshot.coherent or item.out is None:
        return
    n = item.frame
    why = render_passes.missing_reason(scene)
    written = render_passes.passes_path(scene, n)
    if not why and scene.frame_step != 1:
        why = f"the frame step is {scene.frame_step} (the motion vectors reach frame n-1 only)"
    if not why and written is None:
        why = (
            "the scene has no genart passes node (turn Stylize renders off and on, or "
            "press Set up passes)"
        )
    fresh = written is not None and written.is_file() and written.stat().st_mtime >= t0 - 2
    if not why and not fresh:
        why = f"the render wrote no passes at {written} (is compositing on?)"
    if why:
        item.note = f"coherence off: {why}"
        return
    assert written is not None
    target = render_passes.beside(item.out)
    try:
        if written != target:
            render_passes.move(written, target)
        passes_digest = stylize.pixels_hash([target])
    except OSError as exc:
        item.note = f"coherence off: cannot keep the passes: {exc}"
        return
    item.passes = target
    item.inputs_hash = hashlib.sha256((item.inputs_hash + passes_digest).encode()).hexdigest()
    try:
        before = stylized_path(scene, n - 1)
    except OSError:
        return
    rendered = Path(os.path.abspath(scene.render.frame_path(frame=n - 1)))
    item.previous = (before, render_passes.beside(before), rendered)


def _render_end(scene: bpy.types.Scene, cancelled: bool) -> None:
    rd = STATE.renders.pop(threading.get_ident(), None)
    if rd is None:
        return
    still = None
    try:
        # One frame rendered and no file: an F12 still (an animation whose frames were all
        # skipped, Overwrite off, renders none).
        if rd.rendered == 1 and not rd.wrote and not cancelled:
            n = scene.frame_current
            snap = rd.snapshots.get(n) or snapshot(scene, n)
            still = Frame(n, snapshot=snap if isinstance(snap, Snapshot) else None)
            still.error = snap if isinstance(snap, str) else ""
            try:
                still.out = stylized_path(scene, n)
            except OSError as exc:
                still.error = still.error or str(exc)
            _coherence_inputs(scene, still, rd.t0)
    finally:
        rd.post(Ended(cancelled, still))  # whatever happened: the run must end
    if _on_main():
        pump()
        if bpy.app.background:  # no timers: settle every frame before Blender goes on
            _block()


def _guarded(name: str, fn: Any, scene: bpy.types.Scene, *args: Any) -> None:
    try:
        fn(scene, *args)
    except Exception as exc:  # a handler's boundary: Blender would print a traceback and
        # lose the frame; the frame fails with a line instead (and the render carries on)
        frame = getattr(scene, "frame_current", 0)
        line = f"frame {frame}: internal error in {name}: {type(exc).__name__}: {exc}"
        rd = _current()
        if rd is not None:
            rd.post(Frame(frame, error=line))
        print(f"{PREFIX}: {line}", flush=True)
        if bpy.app.background:
            _fail_exit(line)


@persistent
def _on_render_init(scene: bpy.types.Scene, *_: Any) -> None:
    _guarded("render_init", _render_init, scene)


@persistent
def _on_render_pre(scene: bpy.types.Scene, *_: Any) -> None:
    _guarded("render_pre", _render_pre, scene)


@persistent
def _on_render_write(scene: bpy.types.Scene, *_: Any) -> None:
    _guarded("render_write", _render_write, scene)


@persistent
def _on_render_complete(scene: bpy.types.Scene, *_: Any) -> None:
    _guarded("render_complete", _render_end, scene, False)


@persistent
def _on_render_cancel(scene: bpy.types.Scene, *_: Any) -> None:
    _guarded("render_cancel", _render_end, scene, True)


HANDLERS = (
    ("render_init", _on_render_init),
    ("render_pre", _on_render_pre),
    ("render_write", _on_render_write),
    ("render_complete", _on_render_complete),
    ("render_cancel", _on_render_cancel),
)


# -- the main thread ----------------------------------------------------------------------
def pump(blocking: bool = False) -> None:
    """Main thread only: takes the handlers' messages, sends what is ready, writes what came
    back, finishes renders that are over. `blocking` may wait for the sidecar to start."""
    _drain()
    for run in list(STATE.runs):
        _advance(run, blocking or bpy.app.background)


def _drain() -> None:
    while True:
        try:
            item = STATE.messages.get_nowait()
        except queue.Empty:
            return
        rid, msg = item
        if isinstance(msg, Started):
            STATE.runs.append(Run(rid, msg.scene, msg.range_frames))
            continue
        run = next((r for r in STATE.runs if r.rid == rid), None)
        if run is None:
            continue
        if isinstance(msg, Frame):
            run.frames.append(msg)
            run.incoming.append(msg)
        else:
            run.ended, run.cancelled, run.still = True, msg.cancelled, msg.still


def _advance(run: Run, blocking: bool) -> None:
    if run.still is not None and _render_over():
        still, run.still = run.still, None
        _grab_still(run, still)
    if run.incoming or (run.frames == [] and blocking and not run.ended):
        why = _ready(run, blocking)
        if why is None:
            properties.sync_engines(runtime.session().welcome)
            _prepare(run)
        elif why:
            for item in run.incoming:
                run.fail(item.frame, why)
            run.incoming = []
    if run.todo and (run.ended or len(run.frames) > 1):
        _send(run)
    _collect(run)
    if run.ended and not run.incoming and not run.todo and run.still is None:
        for sent in run.sent:
            if not sent.closed:
                sent.closed = True
                jobs = runtime.session().jobs
                (jobs.cancel if run.cancelled else jobs.close)(sent.job)
        if all(s.settled for s in run.sent) and _render_over():
            _finish(run)


def _render_over() -> bool:
    """No render job running (the GUI's job ends on the main thread after render_complete)."""
    return bpy.app.background or not bpy.app.is_job_running("RENDER")


def _ready(run: Run, blocking: bool) -> str | None:
    """None when the sidecar is ready, "" while it starts, else why it is not."""
    session = runtime.session()
    if session.state == READY:
        return None
    if not run.tried_session:
        run.tried_session = True
        from .preferences import preferences

        try:
            settings = preferences(bpy.context).effective()
        except (KeyError, ValueError) as exc:
            return f"genart settings are invalid: {exc}"
        if session.state in (STOPPED, DEAD) or session.settings != settings:
            session.start(settings)
        if blocking:
            session.wait(READY_TIMEOUT, stop_on_failure=True)
    if session.state == READY:
        return None
    if blocking or session.state in (STOPPED, DEAD):
        return f"the sidecar is not ready ({session.reason or session.text})"
    return ""


def _grab_still(run: Run, item: Frame) -> None:
    """An F12 still wrote no file: the Render Result, saved as PNG (main thread)."""
    run.frames.append(item)
    if not item.error:
        scene = bpy.data.scenes.get(run.scene)
        image = bpy.data.images.get("Render Result")
        root = Path(bpy.utils.extension_path_user(__package__, create=True))
        tmp = root / "renders" / f"still-{os.getpid()}-{item.frame}.png"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            if scene is None or image is None:
                raise OSError("the render left no Render Result")
            _save_png(scene, image, tmp)
            item.pixels, item.inputs_hash = read_pixels(tmp)
            item.source = "Render Result"
        except (OSError, RuntimeError) as exc:
            item.error = f"cannot read the Render Result: {exc}"
        finally:
            tmp.unlink(missing_ok=True)
    run.incoming.append(item)


def _save_png(scene: bpy.types.Scene, image: bpy.types.Image, path: Path) -> None:
    """`image.save_render` as an 8-bit PNG whatever the scene's output format (restored)."""
    fmt = scene.render.image_settings
    saved = [(a, getattr(fmt, a)) for a in compat.image_format_attrs()]
    try:
        compat.set_png(fmt)
        image.save_render(str(path), scene=scene)
    finally:
        for attr, value in saved:
            try:
                if getattr(fmt, attr) != value:
                    setattr(fmt, attr, value)
            except (AttributeError, TypeError, RuntimeError):
                pass  # not a field of the restored format (the format set first decides)
    if not path.is_file():
        raise OSError(f"the Render Result was not written to {path}")


def _prepare(run: Run) -> None:
    """Checked parameters and recipe hash per frame; up-to-date frames are done here."""
    for item in run.incoming:
        if item.error or item.snapshot is None or item.pixels is None or item.out is None:
            run.fail(item.frame, item.error or "the frame was not read")
            continue
        try:
            item.engine, item.params = _request(item)
        except GenartError as exc:
            run.fail(item.frame, J.error_text(exc)[0])
            continue
        if item.note:
            _say(f"frame {item.frame}: {item.note}")
        sha = runtime.session().model_sha(str(item.params.get("model", "")), item.engine)
        version = runtime.session().engine_version(item.engine)
        hashed = item.params
        if _coherent(item):  # built on frame n−1: its hash is part of this frame's
            hashed = {**item.params, "previous_frame": _previous_digest(run, item)}
        item.digest = stylize.frame_hash(item.inputs_hash, item.engine, version, sha, hashed)
        if stylize.existing_hash(item.out) == item.digest:
            item.pixels = None
            run.up_to_date.append(item.frame)
            _say(f"frame {item.frame} up to date ({item.out.name})")
        else:
            run.todo.append(item)
    run.incoming = []


def _coherent(item: Frame) -> bool:
    return item.params.get("coherence", "off") != "off"


def _previous_digest(run: Run, item: Frame) -> str:
    """Frame n−1's recipe hash: as prepared in this render, else its file's on disk."""
    before = [f for f in run.frames if f.frame == item.frame - 1 and f.digest]
    if before:
        return before[-1].digest
    if item.previous is not None and item.previous[0].is_file():
        return stylize.existing_hash(item.previous[0]) or ""
    return ""


def _previous_inputs(run: Run, item: Frame) -> dict[str, Attachment]:
    """Frame n−1's stylized file and passes from disk (F12 frame by frame, a chunk of a
    farm, a render that resumes): the sidecar carries the frame on from them. Nothing when
    they are not there, or when frame n−1 is still being stylized in this render."""
    n = item.frame
    pending = [f for f in run.frames if f.frame == n - 1]
    if pending and n - 1 not in run.written and n - 1 not in run.up_to_date:
        return {}
    if item.previous is None:
        return {}
    image, passes, render = item.previous
    if not image.is_file() or not passes.is_file():
        _say(f"frame {n}: no stylized frame {n - 1} on disk; coherence starts afresh here")
        return {}
    found = {
        "previous_image": Attachment.blob("previous_image", image.read_bytes(), "png"),
        "previous_passes": Attachment.blob("previous_passes", passes.read_bytes(), "exr"),
    }
    kind = render.suffix.lower().lstrip(".")
    if render.is_file() and kind in ("png", "jpg", "jpeg", "tif", "tiff", "webp"):
        found["previous_render"] = Attachment.blob("previous_render", render.read_bytes(), kind)
    return found


def _request(item: Frame) -> tuple[str, dict[str, Any]]:
    assert item.snapshot is not None and item.pixels is not None
    genart = item.snapshot.genart
    group = properties.engine_group(genart, properties.chosen_engine(genart, TASK))
    prompt = item.snapshot.prompt
    if prompt is None:
        prompt = str(getattr(group, "prompt", "") or "")
    h, w = item.pixels.shape[:2]
    coherence = "exact_flow" if item.passes is not None else "off"
    filled = {"width": w, "height": h, "prompt": prompt, "coherence": coherence}
    request = bridge.build_request(SimpleNamespace(genart=genart), TASK, filled)
    return request.engine, request.submit_params()["params"]


def _send(run: Run) -> None:
    """Streams the frames into sequence jobs (a new one when the last is full)."""
    jobs = runtime.session().jobs
    for item in run.todo:
        sent = run.sent[-1] if run.sent else None
        if (
            sent is None
            or sent.closed
            or len(sent.index) >= sent.capacity
            or sent.job.engine != item.engine
        ):
            # frames still to come in the scene's range (a guess: `-f a..b` may go past it,
            # then another job follows)
            coming = 0 if run.ended else max(0, run.range_frames - len(run.frames))
            capacity = len(run.todo) + coming
            job = jobs.submit_sequence(
                item.engine, item.params, task=TASK, frames=capacity, label=_Action.label
            )
            sent = Sent(job, capacity)
            run.sent.append(sent)
        i = len(sent.index)
        before = sent.index.get(i - 1)
        sent.index[i] = item
        base = sent.job.params
        overrides = {k: v for k, v in item.params.items() if base.get(k) != v}
        assert item.pixels is not None
        image = Attachment.array("image", item.pixels, "uint8", item.pixels.shape, "srgb")
        inputs = {"image": image}
        if _coherent(item) and item.passes is not None:
            try:
                inputs["passes"] = Attachment.blob("passes", item.passes.read_bytes(), "exr")
                if before is None or before.frame != item.frame - 1:
                    inputs.update(_previous_inputs(run, item))
            except OSError as exc:
                _say(f"frame {item.frame}: cannot read the passes: {exc}", alert=True)
        jobs.append(sent.job, i, inputs, overrides)
        item.pixels = None  # the attachment holds it until it is sent
    run.todo = []


def _collect(run: Run) -> None:
    """Writes the frames that came back; frames that cannot come back any more fail."""
    session = runtime.session()
    for sent in run.sent:
        job = sent.job
        for i, reply in job.take_frames().items():
            item = sent.index.get(i)
            if item is not None:
                _write(run, sent, item, reply)
        for i, error in job.frame_errors.items():
            if i in sent.index:
                run.fail(sent.index[i].frame, error)
        if session.state == DEAD and not sent.settled:
            sent.closed = sent.given_up = True
            reason = f"the sidecar is gone: {session.reason}"
        elif job.finished:
            reason = job.error or ("cancelled" if job.state == J.CANCELLED else "")
        else:
            continue
        for item in sent.index.values():
            if item.frame not in run.written and item.frame not in run.failed:
                run.fail(item.frame, reason or "no result came back")


def _write(run: Run, sent: Sent, item: Frame, reply: Any) -> None:
    from .operators.generate import ActionError, recipe_for, result_pixels
    from .operators.stylize import scalar_output

    assert item.out is not None
    holder = J.Job(sent.job.label, sent.job.engine, TASK, item.params, result=reply)
    holder.warnings = list(sent.job.warnings)
    scene = bpy.data.scenes.get(run.scene)
    try:
        if scene is None:
            raise ActionError(f"scene {run.scene!r} is gone")
        recipe = recipe_for(SimpleNamespace(scene=scene), _Action(), holder, {})
        recipe.update(frame=item.frame, inputs_sha256=item.inputs_hash, source=item.source)
        flicker = scalar_output(reply, "warping_error")
        if flicker is not None:
            run.errors[item.frame] = flicker
            recipe["warping_error"] = round(flicker, 3)
        if item.note:
            recipe["coherence_note"] = item.note
        stylize.write_frame(item.out, result_pixels(holder), recipe, item.digest)
    except (ActionError, OSError, ValueError) as exc:
        run.fail(item.frame, f"cannot write {item.out}: {exc}")
        return
    run.written.append(item.frame)
    _say(f"frame {item.frame} -> {item.out}")


def _finish(run: Run) -> None:
    """The render and its jobs are over: the strip (animations), the summary, the exit
    status in background mode."""
    STATE.runs.remove(run)
    frames = sorted({f.frame for f in run.frames})
    done = sorted({*run.written, *run.up_to_date})
    note = ""
    if len(frames) > 1 and not run.cancelled and not run.failed:
        note = _add_strip(run, frames)
    counts = (
        f"{len(frames)} frame{'s' if len(frames) != 1 else ''}: {len(run.written)} stylized, "
        f"{len(run.up_to_date)} up to date, {len(run.failed)} failed"
    )
    folder = next((f.out.parent for f in run.frames if f.out is not None), None)
    where = f" in {folder}" if folder is not None and done else ""
    if run.errors:
        mean = sum(run.errors.values()) / len(run.errors)
        where += f"; warping error {mean:.2f} (mean over {len(run.errors)} frames, exact flow)"
    if run.cancelled:
        _say(f"render cancelled; {counts}{where}", alert=bool(run.failed))
    elif run.failed:
        first = min(run.failed)
        more = f" (and {len(run.failed) - 1} more)" if len(run.failed) > 1 else ""
        line = f"frame {first}: {run.failed[first]}{more}"
        _say(f"{counts}{where}; {line}", alert=True)
        if bpy.app.background:
            _fail_exit(line)
    else:
        _say(f"{counts}{where}{note}")


def _add_strip(run: Run, frames: list[int]) -> str:
    """The frames as an image strip in the review scene `<scene> genart` (replacing the
    previous render's strip); consecutive frames only (a strip has one file per frame)."""
    scene = bpy.data.scenes.get(run.scene)
    outs = {f.frame: f.out for f in run.frames if f.out is not None}
    if scene is None or frames != list(range(frames[0], frames[-1] + 1)) or len(outs) < len(frames):
        return "; no strip (the frames are not consecutive)"
    review = stylize.review_scene(scene)
    name = f"genart render {run.scene}"
    files = [outs[n] for n in frames]
    assert all(p is not None for p in files)
    strip = stylize.add_strip(review, name, [p for p in files if p is not None], frames[0])
    review.frame_start, review.frame_end = frames[0], frames[-1]
    review.render.fps, review.render.fps_base = scene.render.fps, scene.render.fps_base
    return f"; strip '{strip.name}' in scene '{review.name}'"


def _block() -> None:
    """Background mode: ticks the session until every finished render is settled."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while any(run.ended for run in STATE.runs):
        runtime.session().tick()
        pump()
        if time.monotonic() >= deadline:
            for run in STATE.runs:
                for f in run.frames:
                    if f.frame not in run.written and f.frame not in run.up_to_date:
                        run.fail(f.frame, f"no result within {JOB_TIMEOUT:.0f} s")
                run.sent, run.incoming, run.todo, run.still = [], [], [], None
            pump()
            return
        time.sleep(0.05)


def _fail_exit(line: str) -> None:
    """Background mode: the process will exit with status 1 and this line."""
    if not STATE.exit_reason:
        atexit.register(_exit_failed)
    STATE.exit_reason = STATE.exit_reason or line


def _exit_failed() -> None:
    print(f"{PREFIX} failed: {STATE.exit_reason}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        s = runtime.RUNTIME.session
        if s is not None:
            s.stop(timeout=2.0)  # its own atexit hook would not run after os._exit
    finally:
        os._exit(1)


def _say(line: str, alert: bool = False) -> None:
    """A progress or failure line: printed, and shown in the genart panel."""
    print(f"{PREFIX}: {line}", flush=True)
    STATE.status, STATE.alert = line, alert
    wm = bpy.context.window_manager if _on_main() else None
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas if window.screen is not None else ():
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _tick() -> float:
    """The GUI's pump; also starts the sidecar early when the scene has the toggle on."""
    try:
        scene = bpy.context.scene
        if scene is not None and _enabled(scene) and runtime.session().state == STOPPED:
            from .preferences import preferences

            try:
                runtime.session().start(preferences(bpy.context).effective())
            except (KeyError, ValueError):
                pass  # invalid settings: a render reports them (`_ready`)
        pump()
    except Exception as exc:  # the timer's boundary: a raising timer is dropped by Blender
        line = f"internal error: {type(exc).__name__}: {exc}"
        if line != STATE.status:
            _say(line, alert=True)
    return PUMP_SECONDS


def draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The toggle and the last line of the latest stylized render (for the genart panel)."""
    settings = getattr(context.scene, "genart", None)
    if settings is None:
        return
    col = layout.column(align=True)
    col.prop(settings, "stylize_renders")
    if settings.stylize_renders:
        row = col.row(align=True)
        row.prop(settings, "stylize_renders_coherence", text="Coherence")
        if render_passes.wanted(context.scene):
            row.operator("genart.setup_render_passes", text="", icon="NODE_COMPOSITING")
    if STATE.status:
        row = col.row()
        row.alert = STATE.alert
        row.label(text=STATE.status, icon="ERROR" if STATE.alert else "RENDER_RESULT")


def register() -> None:
    compat.add_handlers(HANDLERS)
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=PUMP_SECONDS, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    compat.remove_handlers(HANDLERS)


__all__ = [
    "STATE",
    "Frame",
    "Snapshot",
    "check_output",
    "draw_panel",
    "pump",
    "read_pixels",
    "register",
    "snapshot",
    "still_path",
    "stylized_path",
    "unregister",
    "written_path",
]
