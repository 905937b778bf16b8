"""Runs in the bpy wheel for bench/temporal.py: renders two shots with the genart add-on's
capture (colour PNG + multilayer EXR with depth, vector and object-index passes) into
OUT/<shot>/: `turntable` (a checkered cube and a sphere turning on a disc in front of a
still camera) and `dolly` (the camera tracking sideways past still objects). FRAMES
frames each at SIZE; `ZIP`, `OUT`, `FRAMES`, `SIZE` are prepended by the bench.
"""

import importlib
import json
import math
from pathlib import Path

import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
assert bpy.ops.extensions.package_install_files(
    repo="user_default",
    filepath=ZIP,  # noqa: F821
    enable_on_install=True,
) == {"FINISHED"}
cap = importlib.import_module("bl_ext.user_default.genart.capture")
out = Path(OUT)  # noqa: F821
n, (w, h) = FRAMES, SIZE  # noqa: F821


def material(name, colour, scale):
    m = bpy.data.materials.new(name)
    m.use_nodes = True
    nodes, links = m.node_tree.nodes, m.node_tree.links
    tex = nodes.new("ShaderNodeTexChecker")
    tex.inputs["Scale"].default_value = scale
    tex.inputs["Color1"].default_value = colour
    tex.inputs["Color2"].default_value = (0.85, 0.85, 0.8, 1.0)
    links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    return m


def base_scene():
    for ob in list(bpy.data.objects):  # a fresh set (a new file would unload the add-on)
        bpy.data.objects.remove(ob)
    bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.samples = 16
    sc.cycles.device = "CPU"
    sc.render.resolution_x, sc.render.resolution_y = w, h
    sc.frame_start, sc.frame_end = 1, n
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    sc.world = world
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(35), math.radians(15), math.radians(30))
    sc.collection.objects.link(sun)
    bpy.ops.mesh.primitive_plane_add(size=40)
    bpy.context.object.data.materials.append(material("Ground", (0.3, 0.4, 0.25, 1), 30))
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    sc.collection.objects.link(cam)
    sc.camera = cam
    return sc, cam


def shot(name, sc):
    folder = out / name
    frames = []
    for f in range(1, n + 1):
        c = cap.capture_camera(sc, folder, frame=f, stem=f"{f:04d}")
        frames.append({"frame": f, "color": str(c.color_path), "passes": str(c.passes_path),
                       "near": c.near, "far": c.far})  # fmt: skip
    return frames


results = {}
# 1. turntable: the objects turn 6 degrees a frame on a disc, the camera stands still
sc, cam = base_scene()
cam.location, cam.rotation_euler = (0, -7, 3.2), (math.radians(68), 0, 0)
pivot = bpy.data.objects.new("Turntable", None)
sc.collection.objects.link(pivot)
bpy.ops.mesh.primitive_cylinder_add(radius=2.2, depth=0.2, location=(0, 0, 0.1))
disc = bpy.context.object
disc.data.materials.append(material("Disc", (0.7, 0.5, 0.2, 1), 12))
bpy.ops.mesh.primitive_cube_add(size=1.4, location=(0.9, 0, 0.9))
cube = bpy.context.object
cube.data.materials.append(material("Cube", (0.8, 0.1, 0.1, 1), 6))
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.7, location=(-0.9, 0.3, 0.9))
sphere = bpy.context.object
sphere.data.materials.append(material("Sphere", (0.1, 0.2, 0.8, 1), 8))
for ob in (disc, cube, sphere):
    ob.parent = pivot
for f in (1, n):
    pivot.rotation_euler = (0, 0, math.radians(6.0 * (f - 1)))
    pivot.keyframe_insert("rotation_euler", frame=f)
results["turntable"] = shot("turntable", sc)

# 2. dolly: the camera tracks sideways past still objects
sc, cam = base_scene()
for i, (x, y, colour) in enumerate(((-2, 1, (0.8, 0.1, 0.1, 1)), (0.5, -0.5, (0.1, 0.6, 0.2, 1)),
                                    (2.5, 1.5, (0.1, 0.2, 0.8, 1)))):  # fmt: skip
    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(x, y, 0.6))
    bpy.context.object.data.materials.append(material(f"Box{i}", colour, 6))
cam.rotation_euler = (math.radians(70), 0, 0)
for f, x in ((1, -2.0), (n, 2.0)):
    cam.location = (x, -7, 2.8)
    cam.keyframe_insert("location", frame=f)
results["dolly"] = shot("dolly", sc)
(out / "shots.json").write_text(json.dumps(results, indent=1))
print("GENART-TEMPORAL-SCENES-OK")
