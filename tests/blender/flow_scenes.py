"""Runs inside the bpy wheel (tests/test_temporal_blender.py): a scene whose motion is
known, captured with the installed add-on on frames 1-8; RESULTS (JSON) lists the files.

An orthographic camera looks straight down (-Z) at a ground plane, 8 px per unit
(ortho_scale 8 over 64 px). A cube slides +0.5 units in X and +0.25 in Y per frame
(4 px right, 2 px up on screen); a flat square turns 15 degrees per frame about +Z around
its centre at (-2.2, -0.8). Checker materials, a sun. Keys are linear, so each frame's
motion is exactly that.
Not collected by pytest; `ZIP` and `OUT` are prepended by the test.
"""

import importlib
import json
import math
from pathlib import Path

import bpy
from prologue import MOD, install_addon

install_addon(ZIP)  # noqa: F821 (prepended by the test); factory settings first
cap = importlib.import_module(MOD + ".capture")
out = Path(OUT)  # noqa: F821

bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
sc = bpy.context.scene
sc.render.engine = "CYCLES"
sc.cycles.device = "CPU"
sc.cycles.use_denoising = False
sc.render.resolution_x, sc.render.resolution_y = 64, 48
sc.frame_start, sc.frame_end = 1, 8


def material(name, colour, checker=False):
    m = bpy.data.materials.new(name)
    m.use_nodes = True
    bsdf = m.node_tree.nodes["Principled BSDF"]
    if checker:
        tex = m.node_tree.nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = 12.0
        tex.inputs["Color1"].default_value = colour
        tex.inputs["Color2"].default_value = (0.9, 0.9, 0.85, 1.0)
        m.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        bsdf.inputs["Base Color"].default_value = colour
    return m


world = bpy.data.worlds.new("World")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.5
sc.world = world
sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
sun.data.energy = 3.0
sun.rotation_euler = (math.radians(30), math.radians(20), 0.0)
sc.collection.objects.link(sun)
sc.cycles.samples = 4
bpy.ops.mesh.primitive_plane_add(size=30)
bpy.context.object.data.materials.append(material("Ground", (0.2, 0.5, 0.2, 1.0), True))
bpy.ops.mesh.primitive_cube_add(size=2, location=(1.0, 0.5, 1.0))
cube = bpy.context.object
cube.name = "Slider"
cube.data.materials.append(material("Red", (0.8, 0.1, 0.1, 1.0), True))
for f in range(1, 9):
    cube.location = (1.0 + 0.5 * (f - 1), 0.5 + 0.25 * (f - 1), 1.0)
    cube.keyframe_insert("location", frame=f)
bpy.ops.mesh.primitive_plane_add(size=2.8, location=(-2.2, -0.8, 0.5))
turner = bpy.context.object
turner.name = "Turner"
turner.data.materials.append(material("Blue", (0.1, 0.2, 0.8, 1.0), True))
for f in range(1, 9):
    turner.rotation_euler = (0.0, 0.0, math.radians(15.0 * (f - 1)))
    turner.keyframe_insert("rotation_euler", frame=f)
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
cam.data.type = "ORTHO"
cam.data.ortho_scale = 8.0
sc.collection.objects.link(cam)
cam.location, cam.rotation_euler = (0.0, 0.0, 10.0), (0.0, 0.0, 0.0)
sc.camera = cam

results = {"frames": {}}
for f in range(1, 9):
    c = cap.capture_camera(sc, out / f"f{f}", frame=f)
    results["frames"][str(f)] = {
        "passes": str(c.passes_path),
        "ids": {k: v for k, v in c.ids.items()},
    }
(out / "results.json").write_text(json.dumps(results))
print("GENART-FLOW-OK")
