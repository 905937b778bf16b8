"""Capture: what a camera (or the 3D viewport's view) sees, as files the sidecar reads.

A capture renders the scene once and leaves two files beside each other:
- `<stem>.png`: the colour image, display-referred 8-bit sRGB (the scene's view transform
  applied, as "Save As Render" does): what a model should see (DESIGN §9);
- `<stem>.exr`: a multilayer EXR, float32 and uncompressed, holding planar depth (Z),
  world-space normals, the vector pass and the object-index pass; `genart_core.imaging.
  passes` decodes it on the sidecar (Blender's Python has no EXR reader).

bpy stays at this edge: everything that is numpy (near/far from the objects' bounds) is a
plain function below, and the pass arithmetic lives in genart_core. The user's render
settings, frame, camera, selection and objects' pass indices are restored afterwards,
also when the render fails. Objects get temporary unique pass indices (1, 2, ...) so the
object-index pass tells them apart (DESIGN §9); `Capture.ids` maps them back to names.

Engines: Cycles writes every pass; EEVEE has no object-index pass and Workbench has only
depth. When the scene's engine lacks a requested pass, the colour image still comes from
the user's engine and the data passes from a one-sample Cycles render of the same view,
and `Capture.notes` says so. Motion blur is off while capturing (the vector pass needs it).

The render itself blocks (as F12's exec does); the GUI's non-blocking path renders through
Blender's job system and finishes with the same `_finish` steps.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from mathutils import Matrix

from . import compat

DATA_PASSES = ("depth", "normal", "vector", "object_index")
VIEW_LAYER_FLAGS = {
    "depth": "use_pass_z",
    "normal": "use_pass_normal",
    "vector": "use_pass_vector",
    "object_index": "use_pass_object_index",
}
ENGINE_PASSES = {  # measured in the bpy 5.0.1 wheel: what each engine writes
    compat.CYCLES: frozenset(DATA_PASSES),
    **{e: frozenset({"depth", "normal", "vector"}) for e in compat.EEVEE_IDS},
    compat.WORKBENCH: frozenset({"depth"}),
}
RENDERABLE = frozenset(
    {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL"}
)
PASS_ALIASES = {"Object Index": "IndexOB"}  # Blender 4.5's channel name
MAX_SIDE = 8192
MIN_SIDE = 8


class CaptureError(Exception):
    """A capture that cannot be done; the message says what to change."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ViewSpec:
    """A view to render that is not a scene camera: the 3D viewport's, for instance.

    `matrix_world` is the view's camera-to-world 4×4 (row-major, 16 floats) and
    `projection` its 4×4 projection (Blender's `window_matrix`), both as the viewport's
    `RegionView3D` gives them; `width`/`height` its size in pixels.
    """

    matrix_world: tuple[float, ...]
    projection: tuple[float, ...]
    width: int
    height: int


@dataclass(frozen=True)
class Capture:
    """The files of one capture and what the sidecar needs to interpret them."""

    color_path: Path
    passes_path: Path | None
    width: int
    height: int
    camera_matrix: tuple[float, ...]  # camera-to-world 4×4, row-major
    projection: tuple[float, ...]  # 4×4, row-major (clip range = camera's)
    camera_rotation: tuple[float, ...]  # 3×3 rotation of camera_matrix, scale removed
    near: float
    far: float
    ids: dict[int, str]  # temporary pass index -> object name (with the object_index pass)
    view_layer: str
    view_transform: str
    render_engine: str  # the engine of the colour image
    passes_engine: str  # the engine of the data passes
    frame: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    # seconds: "render" inside Blender's renderer, "total" for the whole call (the rest is
    # capture's own main-thread work: settings, ids, bounds, restore, colour file)
    timings: dict[str, float] = field(default_factory=dict)

    def request_params(self) -> dict[str, Any]:
        """The parameters a depth/normal-controlled request takes from this capture."""
        return {
            "width": self.width,
            "height": self.height,
            "near": self.near,
            "far": self.far,
            "camera_rotation": list(self.camera_rotation),
        }


# -- near/far from bounds (numpy only) ---------------------------------------------------

CUBE = np.array(
    [[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)]
)  # (8, 3), corner i has bits (x, y, z)
CUBE_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]


def _frustum(projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space clip planes (6, 4) (inside: plane·(p, 1) ≥ 0) and corners (8, 3)."""
    p = projection
    planes = np.stack(
        [p[3] + p[0], p[3] - p[0], p[3] + p[1], p[3] - p[1], p[3] + p[2], p[3] - p[2]]
    )
    ndc = np.array([[x, y, z, 1.0] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    corners = ndc @ np.linalg.inv(p).T
    return planes, corners[:, :3] / corners[:, 3:4]


def _segment_plane(a: np.ndarray, b: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Points where segments a→b (N, 3) cross the plane (4,), or none."""
    da = a @ plane[:3] + plane[3]
    db = b @ plane[:3] + plane[3]
    cross = (da * db) <= 0
    denom = np.where(np.abs(da - db) < 1e-12, 1.0, da - db)
    t = np.clip(da / denom, 0.0, 1.0)
    return (a + (b - a) * t[:, None])[cross & (np.abs(da - db) >= 1e-12)]


def box_depth_range(
    box_min: np.ndarray, box_max: np.ndarray, to_camera: np.ndarray, projection: np.ndarray
) -> tuple[float, float] | None:
    """Planar depth range of the part of a box that lies inside the view frustum.

    The box is an object's local bounds (min, max corners) placed by `to_camera` (object
    to camera space, 4×4); the frustum is `projection`'s (its near/far clip included).
    Exact for the box: the extremes of a convex intersection lie on box corners, frustum
    corners, box edges crossing frustum planes or frustum edges crossing box faces.
    None when the box is outside the view.
    """
    lo, size = _padded(box_min, box_max)
    local = lo + CUBE * size  # (8, 3)
    corners = np.c_[local, np.ones(8)] @ to_camera.T
    corners = corners[:, :3]
    origin, axes = (
        corners[0],
        np.stack([corners[4] - corners[0], corners[2] - corners[0], corners[1] - corners[0]]),
    )
    planes, fcorners = _frustum(projection)
    box_planes = []
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        n = np.cross(axes[i], axes[j])
        n = n / max(np.linalg.norm(n), 1e-12)
        box_planes += [np.r_[n, -n @ origin], np.r_[n, -n @ (origin + axes[k])]]
    ea = np.array([corners[i] for i, _ in CUBE_EDGES])
    eb = np.array([corners[j] for _, j in CUBE_EDGES])
    fa = np.array([fcorners[i] for i, _ in CUBE_EDGES])
    fb = np.array([fcorners[j] for _, j in CUBE_EDGES])
    candidates = [corners, fcorners]
    candidates += [_segment_plane(ea, eb, pl) for pl in planes]
    candidates += [_segment_plane(fa, fb, pl) for pl in box_planes]
    pts = np.concatenate(candidates)
    homo = np.c_[pts, np.ones(len(pts))]
    scale = np.abs(homo @ planes.T).max(axis=1, keepdims=True) + 1.0
    in_frustum = ((homo @ planes.T) >= -1e-6 * scale).all(axis=1)
    coords = np.linalg.solve(axes.T, (pts - origin).T).T  # box-local, [0, 1]^3 inside
    in_box = ((coords >= -1e-6) & (coords <= 1 + 1e-6)).all(axis=1)
    depth = -pts[in_frustum & in_box, 2]
    if depth.size == 0:
        return None
    return float(depth.min()), float(depth.max())


def _padded(box_min: np.ndarray, box_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box origin and size with flat axes (a plane's) given a sliver of thickness."""
    size = np.asarray(box_max, float) - np.asarray(box_min, float)
    lo = np.asarray(box_min, float) - np.where(size < 1e-6, 5e-5, 0.0)
    return lo, np.maximum(size, 1e-4)


def near_far(
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    world_to_camera: np.ndarray,
    projection: np.ndarray,
    clip: tuple[float, float],
) -> tuple[float, float] | None:
    """Near/far over objects' boxes `(local min, local max, matrix_world)` in the view.

    All boxes are classified in one numpy pass: wholly inside the frustum (their corners
    give the range), wholly outside one plane (skipped); only the boxes crossing the
    frustum's boundary take `box_depth_range` (measured: 2000 objects 1 s → ~15 ms).
    """
    if not boxes:
        return None
    lo, size = zip(*(_padded(b[0], b[1]) for b in boxes), strict=True)
    local = np.asarray(lo)[:, None, :] + CUBE[None] * np.asarray(size)[:, None, :]  # (N, 8, 3)
    to_cam = np.einsum("ij,njk->nik", world_to_camera, np.asarray([b[2] for b in boxes]))
    corners = np.einsum("nij,nkj->nki", to_cam[:, :3, :3], local) + to_cam[:, None, :3, 3]
    planes = _frustum(projection)[0]
    homo = np.concatenate([corners, np.ones(corners.shape[:2] + (1,))], axis=2)
    dist = homo @ planes.T  # (N, 8, 6)
    tol = 1e-9 * (np.abs(dist).max() + 1.0)
    inside = (dist >= -tol).all(axis=(1, 2))
    outside = (dist < -tol).all(axis=1).any(axis=1)
    depth = -corners[..., 2]
    ranges = [(float(depth[i].min()), float(depth[i].max())) for i in np.nonzero(inside)[0]]
    for i in np.nonzero(~inside & ~outside)[0]:
        r = box_depth_range(boxes[i][0], boxes[i][1], to_cam[i], projection)
        if r is not None:
            ranges.append(r)
    if not ranges:
        return None
    near = max(min(r[0] for r in ranges), clip[0])
    far = min(max(r[1] for r in ranges), clip[1])
    if far <= near * (1 + 1e-6):  # one flat object facing the camera: give it some depth
        far = near * 1.01 + 1e-3
    return near, far


# -- bpy edge ----------------------------------------------------------------------------


def _matrix(m: Any) -> np.ndarray:
    return np.array([list(row) for row in m], dtype=np.float64)


def _flat(m: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(m).reshape(-1))


class _Restorer:
    """Records attributes before they change and puts them back in the same order."""

    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, Any]] = []
        self.undo: list[Any] = []

    def set(self, owner: Any, attr: str, value: Any) -> None:
        self.saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def keep(self, owner: Any, attrs: tuple[str, ...]) -> None:
        for attr in attrs:
            self.saved.append((owner, attr, getattr(owner, attr)))

    def restore(self) -> list[str]:
        failed = []
        for fn in reversed(self.undo):
            try:
                fn()
            except (ReferenceError, RuntimeError, AttributeError, TypeError) as exc:
                failed.append(str(exc))
        for owner, attr, value in self.saved:  # in recorded order: media_type before file_format
            try:
                if getattr(owner, attr) != value:
                    setattr(owner, attr, value)
            except (ReferenceError, RuntimeError, AttributeError, TypeError) as exc:
                failed.append(f"{attr}: {exc}")
        return failed


@contextmanager
def _restored() -> Iterator[_Restorer]:
    r = _Restorer()
    try:
        yield r
    finally:
        failed = r.restore()
        if failed:
            print(f"genart: capture could not restore {failed}")


def _view_layer(scene: bpy.types.Scene, name: str | None) -> bpy.types.ViewLayer:
    if name is not None:
        vl = scene.view_layers.get(name)
        if vl is None:
            raise CaptureError(
                f"no view layer {name!r} in scene {scene.name!r} "
                f"(it has {[v.name for v in scene.view_layers]})",
                field="view_layer",
            )
        return vl
    ctx = bpy.context.view_layer
    if ctx is not None and scene.view_layers.get(ctx.name) == ctx:
        return ctx
    return scene.view_layers[0]


def _size(scene: bpy.types.Scene, width: int | None, height: int | None) -> tuple[int, int]:
    r = scene.render
    w = width if width is not None else round(r.resolution_x * r.resolution_percentage / 100)
    h = height if height is not None else round(r.resolution_y * r.resolution_percentage / 100)
    for name, v in (("width", w), ("height", h)):
        if not (MIN_SIDE <= v <= MAX_SIDE):
            raise CaptureError(
                f"capture {name} must be {MIN_SIDE}..{MAX_SIDE} pixels, got {v}", field=name
            )
    return int(w), int(h)


def _renderable(view_layer: bpy.types.ViewLayer) -> list[bpy.types.Object]:
    return [
        ob
        for ob in view_layer.objects
        if ob.type in RENDERABLE and not ob.hide_render and ob.visible_get(view_layer=view_layer)
    ]


def _bounds(
    objects: list[bpy.types.Object], depsgraph: Any
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for ob in objects:
        ev = ob.evaluated_get(depsgraph)
        corners = np.array([tuple(c) for c in ev.bound_box], dtype=np.float64)
        if corners.size == 0 or not np.isfinite(corners).all():
            continue
        boxes.append((corners.min(axis=0), corners.max(axis=0), _matrix(ev.matrix_world)))
    return boxes


def viewport_view(area: Any, max_side: int = 1024) -> ViewSpec | None:
    """A 3D viewport area's current view as a `ViewSpec`, its size scaled so the longer
    side is at most `max_side` (same aspect); None when the viewport looks through the
    scene camera (capture that camera instead: it has the render's size and aspect)."""
    space = area.spaces.active
    rv3d = getattr(space, "region_3d", None)
    region = next((r for r in area.regions if r.type == "WINDOW"), None)
    if rv3d is None or region is None:
        raise CaptureError("this area is not a 3D viewport", field="area")
    if rv3d.view_perspective == "CAMERA":
        return None
    w, h = region.width, region.height
    scale = min(1.0, max_side / max(w, h))
    return ViewSpec(
        matrix_world=_flat(np.linalg.inv(_matrix(rv3d.view_matrix))),
        projection=_flat(_matrix(rv3d.window_matrix)),
        width=max(MIN_SIDE, round(w * scale)),
        height=max(MIN_SIDE, round(h * scale)),
    )


def view_camera(scene: bpy.types.Scene, view: ViewSpec) -> bpy.types.Object:
    """A temporary camera object reproducing `view` (perspective or orthographic).

    The caller removes it (capture does). Blender's projection for a camera whose sensor
    fits the larger image side: x scale = 2·lens/sensor (perspective) or 2/ortho_scale,
    centre offsets = 2·shift scaled to that side.
    """
    p = np.array(view.projection, dtype=np.float64).reshape(4, 4)
    data = bpy.data.cameras.new("genart capture view")
    horizontal = view.width >= view.height
    data.sensor_fit = "HORIZONTAL" if horizontal else "VERTICAL"
    data.sensor_width = data.sensor_height = 36.0
    aspect = view.width / view.height
    fit = p[0, 0] if horizontal else p[1, 1]
    to_fit_x = 1.0 if horizontal else aspect  # shift is in units of the larger side
    to_fit_y = aspect if horizontal else 1.0
    if abs(p[3, 3]) > 0.5:  # orthographic: w stays 1
        data.type = "ORTHO"
        data.ortho_scale = 2.0 / fit
        near, far = (p[2, 3] + 1) / p[2, 2], (p[2, 3] - 1) / p[2, 2]
        data.shift_x = -p[0, 3] / 2 * to_fit_x
        data.shift_y = -p[1, 3] / 2 / to_fit_y
    else:
        data.type = "PERSP"
        data.lens = fit * 36.0 / 2
        near, far = p[2, 3] / (p[2, 2] - 1), p[2, 3] / (p[2, 2] + 1)
        data.shift_x = p[0, 2] / 2 * to_fit_x
        data.shift_y = p[1, 2] / 2 / to_fit_y
    data.clip_start, data.clip_end = float(min(near, far)), float(max(near, far))
    ob = bpy.data.objects.new("genart capture view", data)
    scene.collection.objects.link(ob)
    ob.matrix_world = Matrix([list(row) for row in np.array(view.matrix_world).reshape(4, 4)])
    return ob


def capture(
    scene: bpy.types.Scene,
    out_dir: Path,
    *,
    camera: bpy.types.Object | None = None,
    view: ViewSpec | None = None,
    width: int | None = None,
    height: int | None = None,
    passes: tuple[str, ...] = DATA_PASSES,
    view_layer: str | None = None,
    frame: int | None = None,
    stem: str = "capture",
) -> Capture:
    """Render the camera's (or `view`'s) image and passes into `out_dir`; see the module."""
    unknown = [p for p in passes if p not in DATA_PASSES]
    if unknown:
        raise CaptureError(f"unknown passes {unknown}; allowed {list(DATA_PASSES)}", field="passes")
    if view is not None:
        width, height = view.width, view.height
    w, h = _size(scene, width, height)
    cam = camera or scene.camera
    if view is None and (cam is None or cam.type != "CAMERA"):
        raise CaptureError(
            f"scene {scene.name!r} has no active camera: add one (Add > Camera) "
            "and make it active (Ctrl+Numpad 0), or capture the viewport's view",
            field="camera",
        )
    out_dir = Path(bpy.path.abspath(str(out_dir))).resolve()
    if "#" in str(out_dir):
        raise CaptureError(
            f"capture folder {out_dir} contains '#', which Blender reads as a frame number",
            field="out_dir",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    vl = _view_layer(scene, view_layer)
    engine = scene.render.engine
    supported = ENGINE_PASSES.get(engine, frozenset(DATA_PASSES))
    missing = [p for p in passes if p not in supported]
    notes: list[str] = []
    if missing:
        notes.append(
            f"{engine.replace('BLENDER_', '').title()} has no {', '.join(missing)} pass: "
            "the colour image is from it, the data passes from a one-sample Cycles render"
        )
    color_path, exr_path = out_dir / f"{stem}.png", out_dir / f"{stem}.exr"
    tmp_color = out_dir / f".{stem}-{uuid.uuid4().hex[:8]}.png"
    tmp_exr = out_dir / f".{stem}-{uuid.uuid4().hex[:8]}.exr"
    r, fmt = scene.render, scene.render.image_settings
    t_start = time.perf_counter()
    rendering = [0.0]
    with _restored() as saved:
        saved.keep(scene, ("frame_current",))
        saved.keep(fmt, compat.image_format_attrs())
        if frame is not None and frame != scene.frame_current:
            orig, sub = scene.frame_current, scene.frame_subframe
            saved.undo.append(lambda: scene.frame_set(orig, subframe=sub))
            scene.frame_set(frame)
        if view is not None:
            cam = view_camera(scene, view)
            data = cam.data
            assert isinstance(data, bpy.types.Camera)

            def remove_view_camera() -> None:
                bpy.data.objects.remove(cam)
                bpy.data.cameras.remove(data)

            saved.undo.append(remove_view_camera)
        assert cam is not None
        saved.set(scene, "camera", cam)
        for attr, value in (
            ("resolution_x", w),
            ("resolution_y", h),
            ("resolution_percentage", 100),
            ("use_border", False),
            ("use_motion_blur", False),
            ("use_compositing", False),
            ("use_sequencer", False),
            ("use_stamp", False),
            ("use_single_layer", True),
            ("use_file_extension", False),
            ("use_persistent_data", False),
        ):
            saved.set(r, attr, value)
        saved.keep(r, ("filepath",))
        selection = {ob.name for ob in vl.objects.selected}
        active = vl.objects.active
        saved.undo.append(lambda: _restore_selection(vl, selection, active))

        objects = _renderable(vl)
        ids: dict[int, str] = {}
        for i, ob in enumerate(objects if "object_index" in passes else (), start=1):
            if ob.library is not None or not getattr(ob, "is_editable", True):
                notes.append(
                    f"{ob.name} is linked from a library and keeps pass index {ob.pass_index}"
                )
                continue
            saved.set(ob, "pass_index", i)
            ids[i] = ob.name

        nf, projection, cam_to_world = _view_depth(scene, cam, objects, w, h)
        if nf is None:
            cam_data = cam.data
            assert isinstance(cam_data, bpy.types.Camera)  # cam.type == "CAMERA", checked above
            clip = (cam_data.clip_start, cam_data.clip_end)
            notes.append("no object in view: near/far are the camera's clip range")
            nf = clip

        for p in DATA_PASSES:
            saved.set(vl, VIEW_LAYER_FLAGS[p], p in passes and p in supported)
        if missing:
            for p in DATA_PASSES:  # the colour render needs none
                setattr(vl, VIEW_LAYER_FLAGS[p], False)
            compat.set_png(fmt)
            _render(scene, vl, tmp_color, rendering)
            _cycles_passes(scene, vl, passes, saved)
            compat.set_multilayer_exr(fmt)
            _render(scene, vl, tmp_exr, rendering)
        else:
            compat.set_multilayer_exr(fmt)
            _render(scene, vl, tmp_exr, rendering)
            compat.set_png(fmt)
            _save_render(scene, tmp_color)
        os.replace(tmp_exr, exr_path)
        os.replace(tmp_color, color_path)

    rot = cam_to_world[:3, :3] / np.linalg.norm(cam_to_world[:3, :3], axis=0, keepdims=True)
    view_settings = scene.view_settings
    assert view_settings is not None  # never None in Blender; the stubs type it Optional
    return Capture(
        color_path=color_path,
        passes_path=exr_path,
        width=w,
        height=h,
        camera_matrix=_flat(cam_to_world),
        projection=_flat(projection),
        camera_rotation=_flat(rot),
        near=float(nf[0]),
        far=float(nf[1]),
        ids=ids,
        view_layer=vl.name,
        view_transform=view_settings.view_transform,
        render_engine=engine,
        passes_engine=compat.CYCLES if missing else engine,
        frame=int(frame if frame is not None else scene.frame_current),
        notes=tuple(notes),
        timings={"render": rendering[0], "total": time.perf_counter() - t_start},
    )


def _view_depth(
    scene: bpy.types.Scene, cam: bpy.types.Object, objects: list[bpy.types.Object], w: int, h: int
) -> tuple[tuple[float, float] | None, np.ndarray, np.ndarray]:
    """(near/far of `objects` in the camera's view or None, projection, camera to world)
    at the scene's current frame."""
    r = scene.render
    depsgraph = bpy.context.evaluated_depsgraph_get()
    cam_eval = cam.evaluated_get(depsgraph)
    projection = _matrix(
        cam_eval.calc_matrix_camera(
            depsgraph, x=w, y=h, scale_x=r.pixel_aspect_x, scale_y=r.pixel_aspect_y
        )
    )
    cam_to_world = _matrix(cam_eval.matrix_world)
    data = cam.data
    assert isinstance(data, bpy.types.Camera)
    clip = (data.clip_start, data.clip_end)
    nf = near_far(_bounds(objects, depsgraph), np.linalg.inv(cam_to_world), projection, clip)
    return nf, projection, cam_to_world


def range_near_far(
    scene: bpy.types.Scene, frames: list[int], width: int, height: int
) -> tuple[float, float] | None:
    """Near/far over `frames` of the active camera's view from the objects' bounds, as a
    capture computes them, without rendering (a sequence's one mapping, DESIGN §9: a
    farm's chunk spans the frames it does not render). None when nothing is in view."""
    cam = scene.camera
    if cam is None or cam.type != "CAMERA" or not frames:
        return None
    objects = _renderable(_view_layer(scene, None))
    orig, sub = scene.frame_current, scene.frame_subframe
    spans = []
    try:
        for f in frames:
            scene.frame_set(f)
            nf = _view_depth(scene, cam, objects, width, height)[0]
            if nf is not None:
                spans.append(nf)
    finally:
        scene.frame_set(orig, subframe=sub)
    if not spans:
        return None
    return min(a for a, _ in spans), max(b for _, b in spans)


def _restore_selection(
    vl: bpy.types.ViewLayer, selection: set[str], active: bpy.types.Object | None
) -> None:
    now = {ob.name for ob in vl.objects.selected}
    for name in now ^ selection:  # only what changed: cheap with thousands of objects
        ob = vl.objects.get(name)
        if ob is not None:
            ob.select_set(name in selection, view_layer=vl)
    if vl.objects.active != active:
        vl.objects.active = active


def _cycles_passes(
    scene: bpy.types.Scene, vl: bpy.types.ViewLayer, passes: tuple[str, ...], saved: _Restorer
) -> None:
    """Switch to a one-sample Cycles render of the data passes (restored afterwards)."""
    saved.set(scene.render, "engine", compat.CYCLES)
    cy = scene.cycles
    for attr, value in (("samples", 1), ("use_denoising", False), ("use_adaptive_sampling", False)):
        saved.set(cy, attr, value)
    for p in DATA_PASSES:
        flag = VIEW_LAYER_FLAGS[p]
        if getattr(vl, flag) != (p in passes):
            setattr(vl, flag, p in passes)  # already recorded with its user value


def _render(
    scene: bpy.types.Scene, vl: bpy.types.ViewLayer, path: Path, spent: list[float]
) -> None:
    scene.render.filepath = str(path)
    t0 = time.perf_counter()
    try:
        result = bpy.ops.render.render(write_still=True, layer=vl.name, scene=scene.name)
    except RuntimeError as exc:
        raise CaptureError(f"the render failed: {str(exc).strip()}") from None
    finally:
        spent[0] += time.perf_counter() - t0
    if result != {"FINISHED"} or not path.is_file():
        raise CaptureError(f"the render did not write {path} (is the folder writable?)")


def _save_render(scene: bpy.types.Scene, path: Path) -> None:
    img = bpy.data.images.get("Render Result")
    if img is None:
        raise CaptureError("the render left no Render Result image")
    try:
        img.save_render(str(path), scene=scene)
    except RuntimeError as exc:
        raise CaptureError(f"cannot write the colour image {path}: {exc}") from None
    if not path.is_file():
        raise CaptureError(f"the colour image was not written to {path}")


def read_pass(path: Path, name: str) -> np.ndarray:
    """One pass of a capture's EXR as float32 (H, W) or (H, W, C), rows top to bottom,
    read with Blender's own OpenImageIO (the add-on needs depth to mask projections).
    `name` is the Blender pass name ("Depth", "Object Index", "Normal"...)."""
    oiio = compat.openimageio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise CaptureError(f"cannot open the capture's passes {path}: {oiio.geterror()}")
    try:
        sub = 0
        while inp.seek_subimage(sub, 0):
            names = list(inp.spec().channelnames)
            wanted = [i for i, c in enumerate(names) if c.rsplit(".", 2)[-2:-1] == [name]]
            if not wanted and name in PASS_ALIASES:  # 4.5's "IndexOB"
                alias = PASS_ALIASES[name]
                wanted = [i for i, c in enumerate(names) if c.rsplit(".", 2)[-2:-1] == [alias]]
            if wanted:
                pixels = inp.read_image(oiio.FLOAT)
                arr = np.asarray(pixels, dtype=np.float32)[..., wanted]
                return arr[..., 0] if arr.shape[-1] == 1 else arr
            sub += 1
    finally:
        inp.close()
    raise CaptureError(f"no {name} pass in {path}", field="passes")


def capture_camera(scene: bpy.types.Scene, out_dir: Path, **options: Any) -> Capture:
    """What the scene's active camera (or `camera=`) sees; options as `capture`."""
    return capture(scene, out_dir, **options)


def capture_view(scene: bpy.types.Scene, out_dir: Path, view: ViewSpec, **options: Any) -> Capture:
    """What a viewport's view sees (see `ViewSpec`); options as `capture`."""
    return capture(scene, out_dir, view=view, **options)


__all__ = [
    "DATA_PASSES",
    "Capture",
    "CaptureError",
    "ViewSpec",
    "box_depth_range",
    "capture",
    "capture_camera",
    "capture_view",
    "near_far",
    "range_near_far",
    "read_pass",
    "view_camera",
    "viewport_view",
]
