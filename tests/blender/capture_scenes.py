"""Runs inside the bpy wheel (tests/test_capture.py): builds scenes, captures them with the
installed add-on's `capture` module and writes what the tests check into RESULTS (JSON).

Not collected by pytest (no test_ prefix); `ZIP` and `OUT` are prepended by the test.
"""

import importlib
import json
import math
from pathlib import Path

import bpy
import numpy as np

assert bpy.ops.extensions.package_install_files(
    repo="user_default",
    filepath=ZIP,  # noqa: F821 (prepended by the test)
    enable_on_install=True,
) == {"FINISHED"}
cap = importlib.import_module("bl_ext.user_default.genart.capture")
out = Path(OUT)  # noqa: F821
results: dict = {}


def fresh(engine: str = "CYCLES") -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = engine
    if engine == "CYCLES":
        sc.cycles.samples = 2
        sc.cycles.device = "CPU"
    sc.render.resolution_x, sc.render.resolution_y = 64, 48
    return sc


def camera(sc, location, rotation=(0.0, 0.0, 0.0), **data):
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    for k, v in data.items():
        setattr(cam.data, k, v)
    sc.collection.objects.link(cam)
    cam.location, cam.rotation_euler = location, rotation
    sc.camera = cam
    return cam


def record(name: str, c) -> None:
    results[name] = {
        "color": str(c.color_path),
        "passes": str(c.passes_path),
        "size": [c.width, c.height],
        "camera_matrix": list(c.camera_matrix),
        "projection": list(c.projection),
        "camera_rotation": list(c.camera_rotation),
        "near": c.near,
        "far": c.far,
        "ids": {str(k): v for k, v in c.ids.items()},
        "view_transform": c.view_transform,
        "render_engine": c.render_engine,
        "passes_engine": c.passes_engine,
        "frame": c.frame,
        "notes": list(c.notes),
        "timings": c.timings,
    }


def user_state(sc) -> dict:
    r, vl = sc.render, bpy.context.view_layer
    return {
        "render": {
            k: getattr(r, k)
            for k in (
                "engine",
                "resolution_x",
                "resolution_y",
                "resolution_percentage",
                "filepath",
                "use_motion_blur",
                "use_compositing",
                "use_sequencer",
                "use_border",
                "use_stamp",
                "use_single_layer",
                "use_file_extension",
            )
        },
        "format": [
            getattr(r.image_settings, k)
            for k in ("media_type", "file_format", "color_mode", "color_depth", "exr_codec")
        ],
        "passes": [vl.use_pass_z, vl.use_pass_normal, vl.use_pass_vector, vl.use_pass_object_index],
        "frame": sc.frame_current,
        "camera": sc.camera.name if sc.camera else None,
        "pass_index": {o.name: o.pass_index for o in sc.objects},
        "selected": sorted(o.name for o in sc.objects if o.select_get()),
        "active": vl.objects.active.name if vl.objects.active else None,
        "cycles": [sc.cycles.samples, sc.cycles.use_denoising],
        "objects": sorted(o.name for o in bpy.data.objects),
        "cameras": sorted(c.name for c in bpy.data.cameras),
    }


# 1. A plane 10 units below a camera looking straight down, a cube in the top-left.
sc = fresh()
sc.view_settings.view_transform = "Standard"
bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 0, 0))
bpy.ops.mesh.primitive_cube_add(size=1, location=(-3.0, 2.0, 2.0))
camera(sc, (0, 0, 10))
plane_capture = cap.capture_camera(sc, out / "plane")
record("plane", plane_capture)
depth = cap.read_pass(plane_capture.passes_path, "Depth")
results["plane_depth_in_blender"] = [list(depth.shape), float(depth[24, 32]), float(depth.min())]

# 2. A smooth sphere seen from an oblique camera.
sc = fresh()
bpy.ops.mesh.primitive_uv_sphere_add(
    segments=96, ring_count=48, radius=1.5, location=(0.3, -0.2, 0.1)
)
bpy.ops.object.shade_smooth()
cam = camera(sc, (4.0, -5.0, 3.0), (math.radians(65), 0.0, math.radians(40)), lens=40)
results["sphere_centre"], results["sphere_radius"] = [0.3, -0.2, 0.1], 1.5
sc.render.resolution_x, sc.render.resolution_y = 80, 60
record("sphere", cap.capture_camera(sc, out / "sphere"))

# 3. Unique ids and the user's settings restored: every object at pass index 0 but one.
sc = fresh()
for i, loc in enumerate([(-2, 0, 0), (0, 0, 0), (2, 0, 0)]):
    bpy.ops.mesh.primitive_cube_add(size=1, location=loc)
    bpy.context.object.name = f"Box{i}"
bpy.data.objects["Box2"].pass_index = 7
hidden = bpy.data.objects.new("Hidden", bpy.data.meshes.new("Hidden"))
sc.collection.objects.link(hidden)
hidden.hide_render = True
camera(sc, (0, -8, 0), (math.radians(90), 0, 0))
sc.render.resolution_percentage = 50
sc.render.resolution_x, sc.render.resolution_y = 200, 100
sc.render.filepath = "//renders/frame_"
sc.render.image_settings.file_format = "JPEG"
sc.render.use_motion_blur = True
sc.render.use_compositing = True
sc.frame_current = 5
for o in sc.objects:
    o.select_set(o.name == "Box0")
bpy.context.view_layer.objects.active = bpy.data.objects["Box1"]
results["ids_before"] = user_state(sc)
record("ids", cap.capture_camera(sc, out / "ids", frame=3))
results["ids_after"] = user_state(sc)


# 4. A failure in the middle (a handler deletes what the render wrote): still restored.
def sabotage(scene, *args):
    for p in Path(scene.render.filepath).parent.glob(".fail*"):
        p.unlink()


bpy.app.handlers.render_write.append(sabotage)
try:
    cap.capture_camera(sc, out / "fail", stem="fail", frame=2)
except cap.CaptureError as exc:
    results["failure"] = str(exc)
bpy.app.handlers.render_write.remove(sabotage)
results["fail_after"] = user_state(sc)
results["fail_files"] = sorted(p.name for p in (out / "fail").iterdir())

# 5. Display-referred colour: the same emissive scene under Standard and AgX.
sc = fresh()
bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 0, 0))
mat = bpy.data.materials.new("Glow")
mat.use_nodes = True
nodes = mat.node_tree.nodes
nodes.clear()
em = nodes.new("ShaderNodeEmission")
em.inputs["Color"].default_value = (0.2, 0.5, 0.05, 1.0)
em.inputs["Strength"].default_value = 1.0
outn = nodes.new("ShaderNodeOutputMaterial")
mat.node_tree.links.new(em.outputs[0], outn.inputs[0])
bpy.context.object.data.materials.append(mat)
camera(sc, (0, 0, 10))
for vt in ("Standard", "AgX"):
    sc.view_settings.view_transform = vt
    record(f"colour_{vt}", cap.capture_camera(sc, out / f"colour_{vt}"))

# 6. Workbench lacks passes: colour from Workbench, data from one-sample Cycles.
sc = fresh("BLENDER_WORKBENCH")
bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0)
camera(sc, (0, -6, 0), (math.radians(90), 0, 0))
results["workbench_before"] = user_state(sc)
record("workbench", cap.capture_camera(sc, out / "workbench"))
results["workbench_after"] = user_state(sc)

# 7. A viewport view: the projection a RegionView3D would give, perspective (with shift,
# portrait) and orthographic; the temporary camera reproduces it and is removed.
sc = fresh()
bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 0, 0))
bpy.ops.mesh.primitive_cube_add(size=2, location=(1, 0.5, 1))
for name, kw, (w, h) in (
    ("persp", {"lens": 35, "shift_x": 0.1, "shift_y": -0.05}, (48, 64)),
    ("ortho", {"type": "ORTHO", "ortho_scale": 12.0, "shift_x": -0.1}, (64, 40)),
):
    cam = camera(
        sc, (0.5, -6, 7), (math.radians(40), 0, math.radians(5)), clip_start=0.5, clip_end=80, **kw
    )
    dg = bpy.context.evaluated_depsgraph_get()
    proj = cam.calc_matrix_camera(dg, x=w, y=h)
    view = cap.ViewSpec(
        matrix_world=tuple(v for row in cam.matrix_world for v in row),
        projection=tuple(v for row in proj for v in row),
        width=w,
        height=h,
    )
    sc.render.resolution_x, sc.render.resolution_y = w, h
    record(f"cam_{name}", cap.capture_camera(sc, out / f"cam_{name}"))
    record(f"view_{name}", cap.capture_view(sc, out / f"view_{name}", view))
    results[f"view_{name}_state"] = user_state(sc)
    bpy.data.objects.remove(cam)

# 8. Near/far from bounds: a ground plane reaching behind a level camera 2 units up.
sc = fresh()
bpy.ops.mesh.primitive_plane_add(size=200, location=(0, 0, 0))
camera(sc, (0, -10, 2), (math.radians(90), 0, 0), lens=50, sensor_width=36, sensor_fit="HORIZONTAL")
sc.render.resolution_x, sc.render.resolution_y = 64, 64
record("ground", cap.capture_camera(sc, out / "ground"))

# 8b. The 3D viewport's own view (the Layout screen's viewport; no window is needed to
# read its region and matrices) and its looking-through-the-camera case.
sc = fresh()
bpy.ops.mesh.primitive_cube_add(size=2)
camera(sc, (0, -8, 0), (math.radians(90), 0, 0))
area = next(a for a in bpy.data.screens["Layout"].areas if a.type == "VIEW_3D")
rv3d = area.spaces.active.region_3d
region = next(r for r in area.regions if r.type == "WINDOW")
rv3d.view_perspective = "PERSP"
view = cap.viewport_view(area, max_side=96)
results["viewport"] = {
    "region": [region.width, region.height],
    "spec": [view.width, view.height],
    "view_matrix": [v for row in rv3d.view_matrix for v in row],
    "window_matrix": [v for row in rv3d.window_matrix for v in row],
}
record("viewport_capture", cap.capture_view(sc, out / "viewport", view))
rv3d.view_perspective = "CAMERA"
results["viewport"]["through_camera"] = cap.viewport_view(area) is None

# 8c. near_far's one-pass classification agrees with the exact per-box path.
rng = np.random.default_rng(7)
proj = np.array(
    bpy.data.objects["Camera"].calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=64, y=48)
)
w2c = np.array(bpy.data.objects["Camera"].matrix_world.inverted())
boxes = []
for _ in range(400):
    m = np.eye(4)
    m[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * rng.uniform(0.2, 3)
    m[:3, 3] = rng.uniform(-20, 20, 3) + [0, 15, 0]
    lo = rng.uniform(-2, 0, 3)
    boxes.append((lo, lo + rng.uniform(0, 4, 3) * (rng.uniform(size=3) > 0.1), m))
fast = cap.near_far(boxes, w2c, proj, (0.1, 1000.0))
slow = [cap.box_depth_range(b[0], b[1], w2c @ b[2], proj) for b in boxes]
slow = [r for r in slow if r is not None]
results["near_far_agree"] = [fast, [min(r[0] for r in slow), max(r[1] for r in slow)], len(slow)]

# 9. Clear errors.
errors = {}
sc = fresh()
try:
    cap.capture_camera(sc, out / "nocam")
except cap.CaptureError as exc:
    errors["camera"] = [exc.field, str(exc)]
camera(sc, (0, 0, 10))
try:
    cap.capture_camera(sc, out / "big", width=100000)
except cap.CaptureError as exc:
    errors["width"] = [exc.field, str(exc)]
try:
    cap.capture_camera(sc, out / "bad", passes=("depth", "mist"))
except cap.CaptureError as exc:
    errors["passes"] = [exc.field, str(exc)]
results["errors"] = errors

(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-CAPTURE-OK")
