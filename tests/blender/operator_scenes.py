"""Runs inside the bpy wheel (tests/test_blender_operators.py): the add-on's generating
operators end to end against a real sidecar with tiny Stable Diffusion models. Writes what
the tests check into OUT/results.json. `ZIP`, `OUT`, `SD`, `CN` and `MISSING` (a
connection file that does not exist) are prepended by the test; GENART_CONNECTION_FILE
points at the running sidecar.
"""

import importlib
import json
import math
import os
import threading
import time
from pathlib import Path

import bpy
import numpy as np
from prologue import MOD, install_addon

addon = install_addon(ZIP)  # noqa: F821 (prepended by the test)
pngio = importlib.import_module(MOD + ".pngio")
images = importlib.import_module(MOD + ".images")
out = Path(OUT)  # noqa: F821
results: dict = {}


def op_result(fn, **kw):
    """Run an operator; (result, error report) — bpy.ops raises on an ERROR report."""
    t0 = time.monotonic()
    try:
        res = fn(**kw)
        return sorted(res), "", time.monotonic() - t0
    except RuntimeError as exc:
        return ["CANCELLED"], str(exc), time.monotonic() - t0


def window_override():
    win = bpy.context.window_manager.windows[0]
    return bpy.context.temp_override(window=win, screen=win.screen, area=win.screen.areas[0])


def datablocks() -> dict:
    return {
        "images": sorted(i.name for i in bpy.data.images),
        "materials": sorted(m.name for m in bpy.data.materials),
        "worlds": sorted(w.name for w in bpy.data.worlds),
        "objects": sorted(o.name for o in bpy.data.objects),
        "slots": {
            o.name: [s.material.name if s.material else None for s in o.material_slots]
            for o in bpy.data.objects
            if o.type == "MESH"
        },
        "uv": {
            o.name: [uv.name for uv in o.data.uv_layers]
            for o in bpy.data.objects
            if o.type == "MESH"
        },
    }


# The scene: a camera looking at a sphere on a plane, user materials on both, a World.
sc = bpy.context.scene
sc.render.engine = "CYCLES"
sc.cycles.samples = 1
sc.cycles.device = "CPU"
sc.render.resolution_x, sc.render.resolution_y = 96, 64
sc.world = bpy.data.worlds.new("User World")
for name, obj_add in (
    ("Ground", lambda: bpy.ops.mesh.primitive_plane_add(size=20)),
    ("Ball", lambda: bpy.ops.mesh.primitive_uv_sphere_add(radius=1.5, location=(0, 0, 1.5))),
):
    obj_add()
    ob = bpy.context.object
    ob.name = name
    mat = bpy.data.materials.new(f"User {name}")
    ob.data.materials.append(mat)
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
sc.collection.objects.link(cam)
cam.location, cam.rotation_euler = (0, -9, 4), (math.radians(70), 0, 0)
sc.camera = cam
bpy.ops.wm.save_as_mainfile(filepath=str(out / "scene.blend"))

# Connect (GENART_CONNECTION_FILE) and choose the tiny models for every task's engine.
assert bpy.ops.genart.check_sidecar() == {"FINISHED"}
session = addon.runtime.session()
addon.properties.sync_engines(session.welcome)
g = sc.genart
for task in ("txt2img", "control"):
    setattr(g, f"{task}_engine", "sd")
sd = g.engines.sd
sd.model = SD  # noqa: F821
sd.depth_controlnet = CN  # noqa: F821
sd.steps = 2
sd.prompt = "red brick wall, weathered"
sd.seed = 1234
sd.preview_every = 1
for ob in sc.objects:
    ob.select_set(ob.type == "MESH")
bpy.context.view_layer.objects.active = bpy.data.objects["Ball"]


def user_materials() -> dict:
    return {
        name: sorted((n.bl_idname, n.name) for n in bpy.data.materials[name].node_tree.nodes)
        if bpy.data.materials[name].node_tree
        else []
        for name in ("User Ball", "User Ground")
    }


materials_before = user_materials()
user_before = datablocks()
with window_override():
    bpy.ops.ed.undo_push(message="scene ready")
ball_uv_before = [tuple(d.uv) for d in bpy.data.objects["Ball"].data.uv_layers[0].data][:50]

# 1. Texture from camera, as one undo step.
with window_override():
    bpy.ops.ed.undo_push(message="before genart")
    res = op_result(bpy.ops.genart.texture_from_camera, size=64)
    # The UI pushes the operator's undo step itself (bl_options UNDO); a script's call
    # does not, so push it here as the UI would.
    bpy.ops.ed.undo_push(message="Texture from camera")
    results["texture"] = {"result": res, "after": datablocks()}
    tex_images = [i for i in bpy.data.images if "genart" in i and "depth" not in i.name]
    img = tex_images[0]
    results["texture"]["image"] = {
        "name": img.name,
        "filepath": img.filepath,
        "size": list(img.size),
        "colorspace": img.colorspace_settings.name,
        "packed": img.packed_file is not None,
        "file": bpy.path.abspath(img.filepath),
        "recipe": images.recipe_of(img),
    }
    results["texture"]["png_text"] = pngio.read_text(Path(bpy.path.abspath(img.filepath)))
    results["texture"]["ball_uv_same"] = (
        ball_uv_before
        == [tuple(d.uv) for d in bpy.data.objects["Ball"].data.uv_layers[0].data][:50]
    )
    results["texture"]["user_materials_same"] = user_materials() == materials_before
    first_pixels = np.array(img.pixels[:])
    bpy.ops.ed.undo()
    results["texture"]["after_undo"] = datablocks()

# Undo reloads the data: every Python reference to it is stale now.
sc = bpy.context.scene
g = sc.genart
sd = g.engines.sd

# 2. Re-generate from the recipe: same engine, model, prompt and seed -> same pixels.
res = op_result(bpy.ops.genart.texture_from_camera, size=64)
img = next(i for i in bpy.data.images if "genart" in i and "depth" not in i.name)
again = op_result(bpy.ops.genart.regenerate, image=img.name)
newest = sorted(
    (i for i in bpy.data.images if "genart" in i and "depth" not in i.name), key=lambda i: i.name
)
results["regenerate"] = {
    "result": again,
    "images": [i.name for i in newest],
    "same_pixels": bool(
        np.array_equal(np.array(newest[0].pixels[:]), np.array(newest[-1].pixels[:]))
    ),
}
results["texture"]["undo_redo_same_pixels"] = bool(
    np.allclose(first_pixels, np.array(img.pixels[:]))
)

# 3. Tileable and background.
results["tileable"] = {"result": op_result(bpy.ops.genart.tileable, size=64, mapping="BOX")}
results["tileable"]["slots"] = datablocks()["slots"]
world_before = sc.world.name
results["world"] = {
    "result": op_result(bpy.ops.genart.background, kind="WORLD", size=32, camera_only=True)
}
results["world"].update(
    scene_world=sc.world.name, user_world_kept=world_before in bpy.data.worlds, before=world_before
)
results["backdrop"] = {"result": op_result(bpy.ops.genart.background, kind="BACKDROP", size=64)}
results["backdrop"]["objects"] = datablocks()["objects"]

# 4. Cancel: a long job cancelled from another thread leaves the scene unchanged.
sd.steps = 400
before = datablocks()


def cancel_soon():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        active = [j for j in session.jobs.jobs if j.id and j.state == "running"]
        if active:
            session.client.request("cancel", {"job": active[0].id})
            return
        time.sleep(0.05)


threading.Thread(target=cancel_soon, daemon=True).start()
res = op_result(bpy.ops.genart.tileable, size=64)
results["cancel"] = {"result": res, "unchanged": datablocks() == before}
sd.steps = 2

# 5. A bad value: a clear error naming the field, nothing changed.
sd.depth_controlnet = str(out / "no-such-controlnet")
before = datablocks()
res = op_result(bpy.ops.genart.texture_from_camera, size=64)
results["bad"] = {"result": res, "unchanged": datablocks() == before}
# No ControlNet at all: image-to-image on the render, and the report says so.
sd.depth_controlnet = ""
known = {im.name for im in bpy.data.images}
res = op_result(bpy.ops.genart.texture_from_camera, size=64)
made = [im for im in bpy.data.images if im.name not in known]
results["uncontrolled"] = {
    "result": res,
    "warnings": [
        w for im in made if "genart" in im for w in json.loads(im["genart"]["recipe"])["warnings"]
    ],
}
sd.depth_controlnet = CN  # noqa: F821

# 6. The sidecar down: a clear error, no hang.
os.environ["GENART_CONNECTION_FILE"] = MISSING  # noqa: F821
session.stop()
before = datablocks()
res = op_result(bpy.ops.genart.tileable, size=64)
results["down"] = {"result": res, "unchanged": datablocks() == before}

bpy.ops.wm.save_mainfile()
results["saved_files"] = sorted(p.name for p in (out / "genart").rglob("*.png"))
(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-OPERATORS-OK")
