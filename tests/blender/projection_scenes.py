"""Runs inside the bpy wheel (tests/test_blender_projection.py): builds scenes, captures them
with the installed add-on, makes a "generated" image from the capture's object ids, applies
the projection and renders witness cameras (one Cycles sample, so every pass of a pixel comes
from the same ray) into multilayer EXRs the test checks. What Blender itself can tell
(data-blocks, links, UVs, before/after) goes to results.json.

Not collected by pytest (no test_ prefix); `ZIP`, `OUT` and `MESHES` are prepended.
"""

import importlib
import json
import math
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

assert bpy.ops.extensions.package_install_files(
    repo="user_default",
    filepath=ZIP,  # noqa: F821 (prepended by the test)
    enable_on_install=True,
) == {"FINISHED"}
cap = importlib.import_module("bl_ext.user_default.genart.capture")
compat = importlib.import_module("bl_ext.user_default.genart.compat")
proj = importlib.import_module("bl_ext.user_default.genart.projection")
images = importlib.import_module("bl_ext.user_default.genart.images")
out = Path(OUT)  # noqa: F821
meshes = Path(MESHES)  # noqa: F821
results: dict = {}

# Colours of the generated image, as sRGB bytes; the test converts them to linear.
OCCLUDER_RGB = (0, 255, 0)
RED = (0.8, 0.0, 0.0, 1.0)  # the user's own material on the partly hidden box


def fresh() -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.samples = 1
    sc.cycles.use_denoising = False
    sc.cycles.device = "CPU"
    sc.world = bpy.data.worlds.new("World")
    sc.world.color = (1.0, 1.0, 1.0)
    return sc


def camera(sc, name, location, target, lens=40.0):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.data.lens = lens
    sc.collection.objects.link(cam)
    cam.location = location
    direction = Vector(target) - Vector(location)
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    return cam


def diffuse(name, rgba):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # 4.5: new materials start without nodes
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    bsdf = nt.nodes.new("ShaderNodeBsdfDiffuse")
    bsdf.inputs["Color"].default_value = rgba
    outn = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(bsdf.outputs[0], outn.inputs["Surface"])
    return mat


def quads(name, faces):
    """One mesh object of axis-aligned quads facing -Y: (x0, x1, y, z0, z1) each."""
    verts, polys = [], []
    for x0, x1, y, z0, z1 in faces:
        i = len(verts)
        verts += [(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)]
        polys.append((i, i + 1, i + 2, i + 3))
    me = bpy.data.meshes.new(name)
    me.from_pydata(verts, [], polys)
    ob = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(ob)
    return ob


def generated_image(c, name):
    """The stand-in for a model's output: the occluder green, every other object a red-blue
    gradient across x, the background black; sRGB bytes, rows bottom-up as Blender's."""
    ids = cap.read_pass(c.passes_path, "Object Index").astype(int)  # (H, W), top-down
    h, w = ids.shape
    occ = [i for i, n in c.ids.items() if n == "Occluder"]
    rgb = np.zeros((h, w, 3), dtype=np.float32)
    x = (np.arange(w) + 0.5) / w
    rgb[..., 0] = x[None, :]
    rgb[..., 2] = 1 - x[None, :]
    rgb[ids == 0] = 0.0
    if occ:
        rgb[ids == occ[0]] = np.array(OCCLUDER_RGB) / 255
    img = bpy.data.images.new(name, w, h)
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[..., :3] = rgb[::-1]
    img.pixels.foreach_set(rgba.reshape(-1))
    results[f"{name}_pixels"] = rgba[::-1, :, :3].round(5).tolist()  # top-down again
    return img


def witness(sc, cam, stem, ids):
    """Render `cam` with the mask AOV and the data passes (one sample: one ray per pixel)."""
    vl = sc.view_layers[0]
    for flag in (
        "use_pass_position",
        "use_pass_normal",
        "use_pass_diffuse_color",
        "use_pass_object_index",
        "use_pass_z",
    ):
        setattr(vl, flag, True)
    if vl.aovs.get(proj.AOV) is None:
        aov = vl.aovs.add()
        aov.name, aov.type = proj.AOV, "VALUE"
    for name, i in ids.items():
        sc.objects[name].pass_index = i
    sc.camera = cam
    sc.render.resolution_x, sc.render.resolution_y = 120, 90
    compat.set_multilayer_exr(sc.render.image_settings)
    sc.render.filepath = str(out / f"{stem}.exr")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    results[stem] = {
        "path": str(out / f"{stem}.exr"),
        "ids": ids,
        "camera": [list(r) for r in cam.matrix_world],
    }


def record_capture(key, c):
    results[key] = {
        "passes": str(c.passes_path),
        "size": [c.width, c.height],
        "camera_matrix": list(c.camera_matrix),
        "projection": list(c.projection),
        "ids": {str(k): v for k, v in c.ids.items()},
    }


def tree_summary(mat):
    nt = mat.node_tree
    return {
        "nodes": sorted(n.bl_idname for n in nt.nodes),
        "links": sorted(
            f"{lk.from_node.bl_idname}.{lk.from_socket.identifier}->"
            f"{lk.to_node.bl_idname}.{lk.to_socket.identifier}"
            for lk in nt.links
        ),
        "values": sorted(
            f"{n.name}.{s.identifier}={list(s.default_value)}"
            for n in nt.nodes
            for s in n.inputs
            if hasattr(s, "default_value") and hasattr(s.default_value, "__len__")
        ),
    }


def user_data():
    """Everything of the user's that a projection must leave alone."""
    state = {"meshes": {}, "materials": {}, "images": sorted(i.name for i in bpy.data.images)}
    for me in bpy.data.meshes:
        uvs = {}
        for lay in me.uv_layers:
            if lay.name == proj.UV_MAP:
                continue
            a = np.empty(len(lay.data) * 2, dtype=np.float32)
            lay.data.foreach_get("uv", a)
            uvs[lay.name] = [float(a.sum()), float(np.abs(a).sum()), a[:12].tolist()]
        state["meshes"][me.name] = {
            "uvs": uvs,
            "active_uv": me.uv_layers.active.name if me.uv_layers.active else None,
            "render_uv": next((lay.name for lay in me.uv_layers if lay.active_render), None),
            "materials": [m.name if m else None for m in me.materials],
            "vertices": len(me.vertices),
        }
    for mat in bpy.data.materials:
        if "(genart" not in mat.name and not mat.name.startswith("genart"):
            state["materials"][mat.name] = tree_summary(mat)
    return state


def copy_links(mat):
    """How the copy's surface is wired: output <- mix <- (original, principled <- group)."""
    nt = mat.node_tree
    outn = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputMaterial")
    mix = outn.inputs["Surface"].links[0].from_node
    group = mix.inputs[0].links[0].from_node
    first = mix.inputs[1].links[0].from_node.bl_idname if mix.inputs[1].is_linked else None
    second = mix.inputs[2].links[0].from_node
    aov = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputAOV")
    gnodes = group.node_tree.nodes
    return {
        "mix": mix.bl_idname,
        "fac_from": [group.bl_idname, mix.inputs[0].links[0].from_socket.name],
        "original": first,
        "projected": second.bl_idname,
        "base_color_from": second.inputs["Base Color"].links[0].from_socket.name,
        "group": group.node_tree.name,
        "aov": [aov.aov_name, aov.inputs["Value"].links[0].from_socket.name],
        "texcoord_object": next(
            n for n in gnodes if n.bl_idname == "ShaderNodeTexCoord"
        ).object.name,
        "images": sorted(
            f"{n.image.name}:{n.interpolation}:{n.extension}"
            for n in gnodes
            if n.bl_idname == "ShaderNodeTexImage"
        ),
    }


def result_dict(r):
    return {
        "projector": r.projector,
        "collection": r.collection,
        "node_group": r.node_group,
        "materials": list(r.materials),
        "uv_maps": list(r.uv_maps),
        "objects": list(r.objects),
        "slots": [[s.object, s.index, s.link, s.material, s.copy] for s in r.slots],
        "added_slots": list(r.added_slots),
        "notes": list(r.notes),
    }


def uv_check(ob, c):
    """The 'genart projection' UVs against the projection of the evaluated corners, and how
    far the undeformed corners would have been (so a map from the wrong mesh shows)."""
    dg = bpy.context.evaluated_depsgraph_get()
    ev = ob.evaluated_get(dg)
    em = ev.to_mesh()
    co = np.array([tuple(ev.matrix_world @ v.co) for v in em.vertices])
    vi = np.array([lp.vertex_index for lp in em.loops])
    ev.to_mesh_clear()
    orig = np.array([tuple(ob.matrix_world @ v.co) for v in ob.data.vertices])
    lay = ob.data.uv_layers[proj.UV_MAP]
    got = np.empty(len(lay.data) * 2, dtype=np.float32)
    lay.data.foreach_get("uv", got)
    got = got.reshape(-1, 2)
    exp, _ = proj.project(co[vi], c.camera_matrix, c.projection)
    und, _ = proj.project(orig[vi], c.camera_matrix, c.projection)
    return [float(np.abs(got - exp).max()), float(np.abs(und - exp).max())]


# 1. Boxes, a ball, a shelf: occlusion by another object, self-occlusion from behind and
# in front (the shelf's back quad faces the camera but its own front quad hides part of it).
sc = fresh()
bpy.ops.mesh.primitive_cube_add(size=2, location=(0, 0, 1))
target = bpy.context.object
target.name = "Target"
target.data.materials.append(diffuse("UserRed", RED))
disp = target.modifiers.new("Inflate", "DISPLACE")  # keeps the topology, moves the corners
disp.strength = 0.3
bpy.ops.mesh.primitive_cube_add(size=0.8, location=(0.4, -2.6, 1.2))
bpy.context.object.name = "Occluder"  # no material: gets the default surface
bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=0.9, location=(-2.4, 0, 1))
ball = bpy.context.object
ball.name = "Ball"
bpy.ops.object.shade_smooth()
while ball.data.uv_layers:  # no UVs at all (the teapot case, on a primitive)
    ball.data.uv_layers.remove(ball.data.uv_layers[0])
ball.data.materials.append(diffuse("UserGrey", (0.5, 0.5, 0.5, 1.0)))
sub = ball.modifiers.new("Smooth", "SUBSURF")  # changes the topology
sub.levels = sub.render_levels = 1
shelf = quads("Shelf", [(2.0, 2.8, -0.6, 0.8, 1.6), (1.6, 3.2, 0.6, 0.2, 1.8)])
shelf.data.materials.append(diffuse("UserShelf", (0.1, 0.1, 0.8, 1.0)))
# One quad under everything, tilted up towards the back: a coarse mesh at a low angle.
bpy.ops.mesh.primitive_plane_add(
    size=10, location=(0, 1.5, -0.4), rotation=(math.radians(25), 0, 0)
)
floor = bpy.context.object
floor.name = "Floor"
floor.data.materials.append(diffuse("UserFloor", (0.3, 0.3, 0.3, 1.0)))
label = bpy.data.objects.new("Label", bpy.data.curves.new("Label", "FONT"))
sc.collection.objects.link(label)
capcam = camera(sc, "Capture", (0.3, -9.0, 3.2), (0.0, 0.0, 1.0))
sc.camera = capcam
sc.render.resolution_x, sc.render.resolution_y = 80, 60
c = cap.capture_camera(sc, out / "scene1")
record_capture("capture1", c)
# Linked data: an object and a mesh written to a library .blend and linked back; a local
# object uses the linked mesh (it gets the material, not a UV map). Far below every view.
lib_me = bpy.data.meshes.new("RemoteMesh")
lib_me.from_pydata([(0, 0, -50), (1, 0, -50), (1, 1, -50)], [], [(0, 1, 2)])
lib_me.materials.append(diffuse("RemoteMat", (0.2, 0.7, 0.2, 1.0)))
lib_ob = bpy.data.objects.new("Remote", lib_me)
bpy.data.libraries.write(str(out / "lib.blend"), {lib_ob})
bpy.data.objects.remove(lib_ob)
bpy.data.meshes.remove(lib_me)
bpy.data.materials.remove(bpy.data.materials["RemoteMat"])
with bpy.data.libraries.load(str(out / "lib.blend"), link=True) as (src, dst):
    dst.objects = ["Remote"]
remote = dst.objects[0]
sc.collection.objects.link(remote)
borrowed = bpy.data.objects.new("Borrowed", remote.data)
sc.collection.objects.link(borrowed)

image = generated_image(c, "generated1")
# The depth image as the operator makes it; here with the background as +inf (DESIGN §9).
raw = cap.read_pass(c.passes_path, "Depth")
depth = images.store_float_image("depth1", np.where(raw >= 1e9, np.inf, raw))
results["depth1"] = [depth.is_float, depth.colorspace_settings.name, int(np.isinf(raw).sum())]
before = user_data()
objs = [target, bpy.data.objects["Occluder"], ball, shelf, floor, label, remote, borrowed, target]
r = proj.apply_projection(sc, objs, c, image, depth, name="one")
results["result1"] = result_dict(r)
results["skipped1"] = list(r.skipped)
results["user1"] = [before, user_data()]
results["uv_target"] = uv_check(target, c)
results["copy_red"] = copy_links(bpy.data.materials[r.slots[0].copy])
results["copy_default"] = copy_links(
    bpy.data.materials[next(s.copy for s in r.slots if s.object == "Occluder")]
)
results["borrowed"] = [
    [s.link, s.material.name if s.material else None] for s in borrowed.material_slots
] + [[lay.name for lay in remote.data.uv_layers]]
results["ball_uv"] = [lay.name for lay in ball.data.uv_layers]
results["slot_state"] = {
    ob.name: [[s.link, s.material.name if s.material else None] for s in ob.material_slots]
    for ob in (target, ball, bpy.data.objects["Occluder"])
}
projector = bpy.data.objects[r.projector]
results["projector"] = {
    "type": projector.type,
    "collections": [col.name for col in projector.users_collection],
    "hide_render": projector.hide_render,
    "matrix": [v for row in projector.matrix_world for v in row],
    "camera_is_scene": sc.camera == projector,
}
# How far a per-corner UV map would drift from the exact projection on the floor's two
# triangles (the material projects per shading point instead; the test renders the floor).
corners = np.array([tuple(floor.matrix_world @ v.co) for v in floor.data.vertices])
results["uv_drift_px"] = max(
    proj.uv_drift(corners[list(t)], c.camera_matrix, c.projection, (c.width, c.height))
    for t in ((0, 1, 3), (0, 3, 2))
)
ids1 = {"Target": 1, "Occluder": 2, "Ball": 3, "Shelf": 4, "Floor": 5}
witness(sc, camera(sc, "W1", (6.0, -7.0, 5.0), (0.0, 0.0, 1.0)), "w1", ids1)
witness(sc, camera(sc, "W2", (-2.0, 8.0, 5.0), (0.0, 0.0, 1.0)), "w2", ids1)

# Clear errors: nothing usable, a bad depth image.
errors = {}
try:
    proj.apply_projection(sc, [label, remote], c, image, depth, name="none")
except proj.ProjectionError as exc:
    errors["objects"] = [exc.field, str(exc)]
try:
    proj.apply_projection(sc, [target], c, image, image, name="bad")
except proj.ProjectionError as exc:
    errors["not_float"] = [exc.field, str(exc)]
square = bpy.data.images.new("square", 32, 32)
try:
    proj.apply_projection(sc, [target], c, square, depth, name="bad")
except proj.ProjectionError as exc:
    errors["aspect"] = [exc.field, str(exc)]
results["errors"] = errors
results["after_errors"] = sorted(m.name for m in bpy.data.materials)

# 2. The real meshes: the Utah teapot (no UVs) behind Spot the cow (with UVs).
sc = fresh()
for name in ("teapot", "spot"):
    bpy.ops.wm.obj_import(filepath=str(meshes / f"{name}.obj"))
teapot, spot = bpy.data.objects["teapot"], bpy.data.objects["spot"]
spot.location, spot.scale = (-2.2, -3.2, 0.8), (1.3, 1.3, 1.3)
spot.rotation_euler = (0.0, 0.0, math.radians(-30))
teapot.data.materials.append(diffuse("Porcelain", (0.8, 0.8, 0.8, 1.0)))
capcam = camera(sc, "Capture", (-8.0, -9.0, 5.0), (0.0, 0.0, 1.3), lens=45)
sc.camera = capcam
sc.render.resolution_x, sc.render.resolution_y = 96, 72
c = cap.capture_camera(sc, out / "scene2")
record_capture("capture2", c)
image = generated_image(c, "generated2")
depth = images.store_float_image("depth2", cap.read_pass(c.passes_path, "Depth"))  # 1e10 bg
before = user_data()
r = proj.apply_projection(sc, [teapot, spot], c, image, depth, name="pot")
results["result2"] = result_dict(r)
results["user2"] = [before, user_data()]
results["uv_teapot"] = uv_check(teapot, c)
results["teapot_uv"] = [lay.name for lay in teapot.data.uv_layers]
ids2 = {"teapot": 1, "spot": 2}
witness(sc, capcam, "w0", ids2)  # the capture's own view: everything it saw is covered
witness(sc, camera(sc, "W3", (9.0, 6.0, 6.0), (0.0, 0.0, 1.3)), "w3", ids2)
witness(sc, camera(sc, "W4", (-4.0, -1.5, 11.0), (0.0, 0.0, 1.3)), "w4", ids2)
witness(sc, camera(sc, "W5", (-1.0, -11.0, 3.0), (0.0, 0.0, 1.3)), "w5", ids2)

# Projecting again, from another view, layers over the first: its copy gets copied, the
# new mask takes the AOV, and both groups stay in the chain.
second = camera(sc, "Capture2", (7.0, -8.0, 4.0), (0.0, 0.0, 1.3), lens=45)
c2 = cap.capture_camera(sc, out / "scene2b", camera=second)
depth2b = images.store_float_image("depth2b", cap.read_pass(c2.passes_path, "Depth"))
r2 = proj.apply_projection(sc, [teapot], c2, image, depth2b, name="pot2")
layered = teapot.material_slots[0].material
results["layered"] = {
    "slots": [[s.object, s.index, s.link, s.material, s.copy] for s in r2.slots],
    "aovs": [n.aov_name for n in layered.node_tree.nodes if n.bl_idname == "ShaderNodeOutputAOV"],
    "groups": sorted(
        n.node_tree.name for n in layered.node_tree.nodes if n.bl_idname == "ShaderNodeGroup"
    ),
    "uv_note": [n for n in r2.notes if "rewritten" in n],
}

(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-PROJECTION-OK")
