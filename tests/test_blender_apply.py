"""Apply in the real `bpy` wheels (5.0 and the 4.5 LTS): panorama Worlds, camera backdrops
and tileable materials from the installed add-on's `apply` package, on scenes built here,
checked by their node links and data and by small Cycles renders (CPU).

`blender_scenes` runs inside Blender (its source is sent to a fresh `bpy` process with the
add-on zip installed; nothing of genart_core is importable there) and writes what it saw
into OUT: results.json and the renders as .npy (rows top to bottom, linear RGBA or the
Diffuse Color pass). The tests below read them back.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT
from test_blender_addon import build_addon, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

TEAPOT = ROOT / "dev" / "assets" / "teapot.obj"  # a copy of ../shared/meshes/teapot.obj
PYTHONS = {"5.0": ROOT / ".venv" / "bin" / "python", "4.5": ROOT / ".venv-bpy45" / "bin" / "python"}
# Panorama quadrants (bottom-up rows as Blender stores them): what each region shows.
QUADRANTS = {
    "bottom_left": (1.0, 0.0, 0.0),
    "bottom_right": (0.0, 1.0, 0.0),
    "top_left": (0.0, 0.0, 1.0),
    "top_right": (1.0, 1.0, 0.0),
}


def blender_scenes(zip_path: str, out_dir: str, teapot: str, quadrants: dict) -> None:
    """Runs inside Blender: builds the scenes, applies, renders, writes OUT/results.json."""
    import importlib
    import json
    import math
    import time
    from pathlib import Path

    import bpy
    import numpy as np

    bmesh = importlib.import_module("bmesh")  # the 4.5 wheel has it only once bpy is in

    assert bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=zip_path, enable_on_install=True
    ) == {"FINISHED"}
    mod = "bl_ext.user_default.genart"
    world_mod = importlib.import_module(mod + ".apply.world")
    tileable_mod = importlib.import_module(mod + ".apply.tileable")
    apply_pkg = importlib.import_module(mod + ".apply")
    capture = importlib.import_module(mod + ".capture")
    compat = importlib.import_module(mod + ".compat")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"version": bpy.app.version_string, "timings": {}}

    def timed(key, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        results["timings"][key] = time.perf_counter() - t0
        return value

    def fresh(samples=16):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        sc = bpy.context.scene
        sc.render.engine = "CYCLES"
        sc.cycles.device = "CPU"
        sc.cycles.samples = samples
        sc.cycles.use_denoising = False
        sc.cycles.seed = 1
        sc.render.resolution_x, sc.render.resolution_y = 48, 32
        sc.render.resolution_percentage = 100
        return sc

    def add_camera(sc, location, rotation, **data):
        cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
        for key, value in data.items():
            setattr(cam.data, key, value)
        sc.collection.objects.link(cam)
        cam.location, cam.rotation_euler = location, rotation
        sc.camera = cam
        return cam

    def diffuse(name, colour):
        mat = bpy.data.materials.new(name)
        if mat.node_tree is None:
            mat.use_nodes = True  # 4.5
        tree = mat.node_tree
        tree.nodes.clear()
        bsdf = tree.nodes.new("ShaderNodeBsdfDiffuse")
        bsdf.inputs["Color"].default_value = (*colour, 1.0)
        output = tree.nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
        return mat

    def mesh_object(sc, name, build, location=(0.0, 0.0, 0.0)):
        me = bpy.data.meshes.new(name)
        bm = bmesh.new()
        build(bm)
        bm.to_mesh(me)
        bm.free()
        obj = bpy.data.objects.new(name, me)
        sc.collection.objects.link(obj)
        obj.location = location
        return obj

    def image(name, width, height, rgb):
        """A float (linear) image from an (H, W, 3) array, rows bottom-up like Blender."""
        img = bpy.data.images.new(name, width, height, float_buffer=True)
        px = np.ones((height, width, 4), np.float32)
        px[..., :3] = rgb
        img.pixels.foreach_set(px.ravel())
        return img

    def render(sc, tag, albedo=False):
        compat.set_multilayer_exr(sc.render.image_settings)
        sc.render.filepath = str(out / f"{tag}.exr")
        t0 = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        results["timings"]["render " + tag] = time.perf_counter() - t0
        if albedo:  # the Diffuse Color pass: 5.0 spells it out, 4.5 calls it DiffCol
            try:
                data = capture.read_pass(Path(sc.render.filepath), "Diffuse Color")
            except capture.CaptureError:
                data = capture.read_pass(Path(sc.render.filepath), "DiffCol")
            np.save(out / f"{tag}_albedo.npy", data)
        else:
            np.save(out / f"{tag}.npy", capture.read_pass(Path(sc.render.filepath), "Combined"))

    def value(v):
        if hasattr(v, "__len__") and not isinstance(v, str):
            return [round(float(x), 5) for x in v]
        if isinstance(v, float):
            return round(v, 5)
        return v if isinstance(v, (int, str, bool)) or v is None else getattr(v, "name", str(v))

    def signature(tree):
        """Everything that defines a node tree: nodes, their settings, inputs and links."""
        nodes = []
        for n in tree.nodes:
            props = {
                p.identifier: value(getattr(n, p.identifier))
                for p in n.bl_rna.properties
                if p.type in {"ENUM", "FLOAT", "INT", "BOOLEAN", "POINTER"}
                and not p.is_readonly
                and p.identifier not in {"select", "location", "width", "height"}
            }
            inputs = [
                [s.identifier, value(s.default_value)]
                for s in n.inputs
                if hasattr(s, "default_value")
            ]
            nodes.append([n.name, n.bl_idname, sorted(props.items()), inputs])
        links = [
            [lk.from_node.name, lk.from_socket.identifier, lk.to_node.name, lk.to_socket.identifier]
            for lk in tree.links
        ]
        return {"nodes": sorted(nodes), "links": sorted(links)}

    def linked(tree):
        """(from node type, output, to node type, input) for each link; the Mix Shader's
        factor is "Fac" as 4.5 names it (5.0: "Factor")."""
        fac = {"Factor": "Fac"}
        return sorted(
            [
                lk.from_node.bl_idname,
                lk.from_socket.name,
                lk.to_node.bl_idname,
                fac.get(lk.to_socket.name, lk.to_socket.name)
                if lk.to_node.bl_idname == "ShaderNodeMixShader"
                else lk.to_socket.name,
            ]
            for lk in tree.links
        )

    def errors(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except apply_pkg.ApplyError as exc:
            return [str(exc), exc.field]
        return None

    # --- Panorama: a white diffuse sphere lit only by the World -------------------------
    sc = fresh()
    user = bpy.data.worlds.new("User Sky")  # lighting from above, dark below
    if user.node_tree is None:
        user.use_nodes = True  # 4.5
    tree = user.node_tree
    tree.nodes.clear()
    coords = tree.nodes.new("ShaderNodeTexCoord")
    sep = tree.nodes.new("ShaderNodeSeparateXYZ")
    ramp = tree.nodes.new("ShaderNodeMapRange")
    ramp.inputs["From Min"].default_value = -1.0
    mix = tree.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = (0.15, 0.08, 0.03, 1.0)
    mix.inputs["B"].default_value = (0.6, 0.8, 1.6, 1.0)
    bg = tree.nodes.new("ShaderNodeBackground")
    wout = tree.nodes.new("ShaderNodeOutputWorld")
    tree.links.new(coords.outputs["Generated"], sep.inputs["Vector"])
    tree.links.new(sep.outputs["Z"], ramp.inputs["Value"])
    tree.links.new(ramp.outputs["Result"], mix.inputs["Factor"])
    tree.links.new(mix.outputs["Result"], bg.inputs["Color"])
    tree.links.new(bg.outputs["Background"], wout.inputs["Surface"])
    sc.world = user
    user_before = signature(user.node_tree)
    sphere = mesh_object(
        sc,
        "Sphere",
        lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1),
    )
    sphere.data.polygons.foreach_set("use_smooth", [True] * len(sphere.data.polygons))
    sphere.data.materials.append(diffuse("White", (1.0, 1.0, 1.0)))
    # Looking towards -Y, 45° up: the panorama's top-right quadrant (u 0.75, v 0.75).
    view = (0.0, -math.cos(math.pi / 4), math.sin(math.pi / 4))
    add_camera(sc, tuple(-6 * c for c in view), (math.radians(135), 0.0, math.pi))
    quad = np.zeros((32, 64, 3), np.float32)
    quad[:16, :32], quad[:16, 32:] = quadrants["bottom_left"], quadrants["bottom_right"]
    quad[16:, :32], quad[16:, 32:] = quadrants["top_left"], quadrants["top_right"]
    pano = image("pano", 64, 32, quad)

    render(sc, "pano_user")
    w1 = timed(
        "apply_panorama camera_only",
        world_mod.apply_panorama,
        sc,
        pano,
        camera_only=True,
        name="sky",
    )
    w2 = world_mod.apply_panorama(sc, pano, camera_only=True, name="sky again")  # over w1
    results["pano_camera_only"] = {
        "scene_world": sc.world.name,
        "names": [w1.name, w2.name],
        "previous": [getattr(w.get(world_mod.PREVIOUS), "name", None) for w in (w1, w2)],
        "links": linked(w2.node_tree),
        "mixes": sum(n.bl_idname == "ShaderNodeMixShader" for n in w2.node_tree.nodes),
        "env_image": [
            [n.image.name, n.projection]
            for n in w2.node_tree.nodes
            if n.bl_idname == "ShaderNodeTexEnvironment"
        ],
        "user_nodes_kept": sorted(
            n.name for n in w2.node_tree.nodes if not n.name.startswith("genart ")
        ),
    }
    render(sc, "pano_camera_only")
    sc.world = user
    w3 = timed("apply_panorama", world_mod.apply_panorama, sc, pano, camera_only=False, name="full")
    results["pano_full"] = {
        "name": w3.name,
        "links": linked(w3.node_tree),
        "mark": w3.get("genart"),
    }
    render(sc, "pano_full")
    results["user_world_after"] = {
        "tree_same": signature(user.node_tree) == user_before,
        "fake_user": user.use_fake_user,
    }
    results["pano_errors"] = {
        "square": errors(
            world_mod.apply_panorama, sc, image("square", 32, 32, 0.5), camera_only=False, name="x"
        ),
        "not_image": errors(world_mod.apply_panorama, sc, "pano", camera_only=False, name="x"),
    }
    # Saved and opened again: the user's World survives although no scene uses it, the
    # earlier genart Worlds (w1, w2: no users) do not.
    blend = out / "panorama.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    reloaded = bpy.data.worlds.get("User Sky")
    results["pano_reload"] = {
        "worlds": sorted(w.name for w in bpy.data.worlds),
        "scene_world": bpy.context.scene.world.name,
        "user_tree_same": reloaded is not None and signature(reloaded.node_tree) == user_before,
        "user_fake_user": reloaded is not None and reloaded.use_fake_user,
    }
    # No World before: the lighting is a Background of the default World colour.
    sc = fresh()
    sc.world = None
    pano = image("pano", 64, 32, quad)  # the file loaded above replaced all data
    w4 = world_mod.apply_panorama(sc, pano, camera_only=True, name="no world")
    lighting = [
        list(n.inputs["Color"].default_value)[:3]
        for n in w4.node_tree.nodes
        if n.bl_idname == "ShaderNodeBackground" and n.name != "genart background"
    ]
    # Camera-only over a genart World that lights with an earlier panorama: that one
    # stays the lighting, the new one is what the camera sees.
    w5 = world_mod.apply_panorama(sc, image("pano2", 64, 32, quad), camera_only=False, name="a")
    w6 = world_mod.apply_panorama(sc, image("pano3", 64, 32, quad), camera_only=True, name="b")
    mixer = next(n for n in w6.node_tree.nodes if n.bl_idname == "ShaderNodeMixShader")

    def env_feeding(socket):
        node = socket.links[0].from_node  # a Background
        return node.inputs["Color"].links[0].from_node.image.name

    results["pano_over_genart"] = {
        "lighting": env_feeding(mixer.inputs[1]),
        "camera": env_feeding(mixer.inputs[2]),
        "previous": [w5.get(world_mod.PREVIOUS), w6.get(world_mod.PREVIOUS)],
    }
    results["pano_no_world"] = {
        "links": linked(w4.node_tree),
        "lighting": lighting,
        "default": list(bpy.types.World.bl_rna.properties["color"].default_array),
        "previous": w4.get(world_mod.PREVIOUS),
    }

    # --- Backdrop: the plane fills the frame exactly ------------------------------------
    gradient = np.zeros((32, 64, 3), np.float32)  # R = u, G = v at texel centres
    gradient[..., 0] = (np.arange(64) + 0.5) / 64
    gradient[..., 1] = ((np.arange(32) + 0.5) / 32)[:, None]
    gradient[..., 2] = 0.5
    cases = {
        "persp": {
            "data": {"lens": 35.0, "sensor_fit": "VERTICAL", "shift_x": 0.1, "shift_y": -0.05},
            "scale": (2.0, 2.0, 2.0),
            "aspect": 1.5,
        },
        "ortho": {
            "data": {"type": "ORTHO", "ortho_scale": 5.0, "shift_x": -0.1, "clip_end": 30.0},
            "scale": (1.5, 1.5, 1.5),
            "aspect": 1.0,
        },
    }
    for case, spec in cases.items():
        sc = fresh(samples=2)
        sc.world = None
        sc.cycles.filter_width = 0.01  # each pixel sampled at its centre: exact edges
        sc.render.pixel_aspect_x = spec["aspect"]
        cam = add_camera(sc, (1.0, -3.0, 2.0), (1.2, 0.1, 0.3), **spec["data"])
        cam.scale = spec["scale"]
        backdrop = timed(
            f"apply_backdrop {case}",
            world_mod.apply_backdrop,
            sc,
            cam,
            image("grad", 64, 32, gradient),
            name=case,
        )
        results[f"backdrop_{case}"] = {
            "parent": backdrop.parent.name,
            "visibility": {
                k: getattr(backdrop, k)
                for k in (
                    "visible_camera",
                    "visible_diffuse",
                    "visible_glossy",
                    "visible_transmission",
                    "visible_volume_scatter",
                    "visible_shadow",
                )
            },
            "links": linked(backdrop.active_material.node_tree),
            "depth": -backdrop.data.vertices[0].co.z,
            "clip_end": cam.data.clip_end,
        }
        render(sc, f"backdrop_{case}")

    # Casting no shadow and lighting nothing: a ground plane lit by a sun from behind the
    # backdrop, rendered without it, with it, and with its shadow switched back on.
    sc = fresh(samples=16)
    sc.world = None
    cam = add_camera(sc, (0.0, 6.0, 1.5), (math.radians(85), 0.0, math.pi), lens=50.0)
    ground = mesh_object(
        sc, "Ground", lambda bm: bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=50)
    )
    ground.data.materials.append(diffuse("Ground", (0.8, 0.8, 0.8)))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 4.0
    sun.data.angle = 0.0
    sc.collection.objects.link(sun)
    sun.rotation_euler = (math.radians(80), 0.0, 0.0)  # light travels +Y and down, grazing
    render(sc, "shadow_without")
    backdrop = world_mod.apply_backdrop(
        sc, cam, image("grad", 64, 32, gradient), name="wall", distance=20.0
    )
    render(sc, "shadow_with")
    backdrop.visible_shadow = True  # the control: what a shadow would do here
    render(sc, "shadow_control")
    results["backdrop_errors"] = {
        "not_camera": errors(world_mod.apply_backdrop, sc, ground, image("g", 8, 8, 0.5), name="x"),
        "distance": errors(
            world_mod.apply_backdrop, sc, cam, image("g", 8, 8, 0.5), name="x", distance=5000.0
        ),
    }

    # --- Tileable ------------------------------------------------------------------------
    sc = fresh(samples=2)
    sc.world = None
    sc.cycles.filter_width = 0.01
    bpy.context.view_layer.use_pass_diffuse_color = True
    # Seamless: one sine period across the image in each direction.
    yy, xx = np.meshgrid((np.arange(64) + 0.5) / 64, (np.arange(64) + 0.5) / 64, indexing="ij")
    seamless = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * xx),
            0.5 + 0.4 * np.cos(2 * np.pi * yy),
            np.full_like(xx, 0.2),
        ],
        axis=2,
    )
    tile = image("tile", 64, 64, seamless)
    red, blue, green = (
        diffuse(n, c)
        for n, c in (("UserRed", (1, 0, 0)), ("UserBlue", (0, 0, 1)), ("UserGreen", (0, 1, 0)))
    )
    user_mats = {m.name: signature(m.node_tree) for m in (red, blue, green)}

    def grid(bm):
        bm.loops.layers.uv.new("UVMap")
        bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=1.0, calc_uvs=True)

    floor = mesh_object(sc, "Floor", grid)  # object coordinates -1..1
    floor.data.materials.append(red)
    boxy = mesh_object(sc, "Boxy", lambda bm: bmesh.ops.create_cube(bm, size=1.0), (10.0, 0.0, 0.0))
    boxy.data.materials.append(red)
    boxy.data.materials.append(blue)
    boxy.data.polygons[0].material_index = 1
    objlinked = mesh_object(
        sc, "ObjLinked", lambda bm: bmesh.ops.create_cube(bm, size=1.0), (14.0, 0.0, 0.0)
    )
    objlinked.data.materials.append(red)
    objlinked.material_slots[0].link = "OBJECT"
    objlinked.material_slots[0].material = green  # green's only user
    green_users = green.users
    bpy.ops.wm.obj_import(filepath=teapot)
    pot = bpy.context.selected_objects[0]
    pot.location = (20.0, 0.0, 0.0)
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    sc.collection.objects.link(lamp)
    lamp.location = (60.0, 0.0, 0.0)
    add_camera(sc, (0.0, 0.0, 5.0), (0.0, 0.0, 0.0), type="ORTHO", ortho_scale=2.0)
    results["teapot_before"] = {
        "uv_layers": len(pot.data.uv_layers),
        "slots": len(pot.material_slots),
    }

    box = timed(
        "apply_tileable BOX",
        tileable_mod.apply_tileable,
        [floor, boxy, objlinked, pot, lamp, floor],
        tile,
        name="stone",
        mapping="BOX",
        scale=1.5,
    )
    (box_mat,) = box.materials
    tex = next(n for n in box_mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    mapping_node = next(n for n in box_mat.node_tree.nodes if n.bl_idname == "ShaderNodeMapping")
    results["tile_box"] = {
        "materials": [m.name for m in box.materials],
        "objects": [o.name for o in box.objects],
        "notes": list(box.notes),
        "slots": {
            o.name: [[s.link, s.material.name] for s in o.material_slots]
            for o in (floor, boxy, objlinked, pot)
        },
        "data_materials": {
            o.name: [m.name if m else None for m in o.data.materials]
            for o in (floor, boxy, objlinked, pot)
        },
        "image": [tex.image.name, tex.extension, tex.projection],
        "scale": list(mapping_node.inputs["Scale"].default_value),
        "links": linked(box_mat.node_tree),
        "green_users": [green_users, green.users],
        "replaced": sorted(box_mat.get(tileable_mod.REPLACED, {}).keys()),
    }
    render(sc, "tile_box", albedo=True)

    # UV mode: map "A" renders, "B" is the one being edited; B must not be used.
    def two_maps(bm):
        bm.loops.layers.uv.new("UVMap")
        bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=1.0, calc_uvs=True)

    for ob in (floor, boxy, objlinked, pot):
        ob.hide_render = True
    planar = mesh_object(sc, "TwoMaps", two_maps)
    planar.data.uv_layers[0].name = "A"
    planar.data.uv_layers.new(name="B")  # reallocates the layers: look them up again
    uv_a, uv_b = planar.data.uv_layers["A"], planar.data.uv_layers["B"]
    uv_b.uv.foreach_set("vector", [0.3, 0.7] * len(planar.data.loops))
    planar.data.uv_layers.active = uv_b
    uv_a.active_render = True
    # Corners laid out as u = (x + 1) / 2, v = (y + 1) / 2 for the check below.
    corner_uv = [((v.co.x + 1) / 2, (v.co.y + 1) / 2) for v in planar.data.vertices]
    for loop in planar.data.loops:
        uv_a.uv[loop.index].vector = corner_uv[loop.vertex_index]
    before_uv = {
        layer.name: [round(x, 6) for lp in layer.uv for x in lp.vector]
        for layer in planar.data.uv_layers
    }

    def udim_grid(bm):  # three faces in tiles 1001, 1002 and 1011
        bm.loops.layers.uv.new("UVMap")
        bmesh.ops.create_grid(bm, x_segments=3, y_segments=1, size=1.0, calc_uvs=True)

    udim = mesh_object(sc, "Udim", udim_grid, (30.0, 0.0, 0.0))
    layer = udim.data.uv_layers[0]
    for poly, (du, dv) in zip(udim.data.polygons, ((0, 0), (1, 0), (0, 1)), strict=True):
        corners = ((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9))
        for k, li in enumerate(poly.loop_indices):
            layer.uv[li].vector = (corners[k][0] + du, corners[k][1] + dv)
    twin_mesh = mesh_object(sc, "Shared", grid, (40.0, 0.0, 0.0))
    twin_mesh.data.materials.append(blue)
    twin = bpy.data.objects.new("SharedTwin", twin_mesh.data)  # not selected
    sc.collection.objects.link(twin)
    twin.location = (44.0, 0.0, 0.0)
    bpy.ops.wm.obj_import(filepath=teapot)
    pot2 = bpy.context.selected_objects[0]
    pot2.location = (50.0, 0.0, 0.0)

    uv = timed(
        "apply_tileable UV",
        tileable_mod.apply_tileable,
        [planar, udim, twin_mesh, pot2],
        tile,
        name="bricks",
        mapping="UV",
        scale=2.0,
    )
    uv_mat = uv.materials[0]
    results["tile_uv"] = {
        "materials": [m.name for m in uv.materials],
        "objects": [o.name for o in uv.objects],
        "notes": list(uv.notes),
        "slots": {
            o.name: [[s.link, s.material.name] for s in o.material_slots]
            for o in (planar, udim, twin_mesh, twin, pot2)
        },
        "links": linked(uv_mat.node_tree),
        "fallback_links": linked(uv.materials[1].node_tree) if len(uv.materials) > 1 else None,
        "uv_same": before_uv
        == {
            layer.name: [round(x, 6) for lp in layer.uv for x in lp.vector]
            for layer in planar.data.uv_layers
        },
        "uv_flags": [
            planar.data.uv_layers.active.name,
            [lyr.name for lyr in planar.data.uv_layers if lyr.active_render],
        ],
        "uv_nodes": [n.uv_map for n in uv_mat.node_tree.nodes if n.bl_idname == "ShaderNodeUVMap"],
    }
    render(sc, "tile_uv", albedo=True)
    results["tile_errors"] = {
        "mapping": errors(tileable_mod.apply_tileable, [planar], tile, name="x", mapping="PLANAR"),
        "scale": errors(
            tileable_mod.apply_tileable, [planar], tile, name="x", mapping="BOX", scale=0.0
        ),
        "nothing": errors(tileable_mod.apply_tileable, [lamp], tile, name="x", mapping="BOX"),
    }
    # A library object is refused before anything changes.
    library = out / "library.blend"
    bpy.data.libraries.write(str(library), {boxy})
    with bpy.data.libraries.load(str(library), link=True) as (_, into):
        into.objects = ["Boxy"]
    linked_box = into.objects[0]
    sc.collection.objects.link(linked_box)
    count = len(bpy.data.materials)
    results["tile_linked"] = {
        "error": errors(
            tileable_mod.apply_tileable, [planar, linked_box], tile, name="x", mapping="UV"
        ),
        "unchanged": len(bpy.data.materials) == count
        and planar.material_slots[0].material == uv_mat,
    }
    results["user_materials_same"] = {
        m.name: signature(m.node_tree) == user_mats[m.name] for m in (red, blue, green)
    }
    blend = out / "tileable.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    results["tile_reload"] = {
        "materials": sorted(m.name for m in bpy.data.materials),
        "same": {
            name: name in bpy.data.materials
            and signature(bpy.data.materials[name].node_tree) == sig
            for name, sig in user_mats.items()
        },
        "fake_users": [m.name for m in bpy.data.materials if m.use_fake_user],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("GENART-APPLY-OK")


@pytest.fixture(scope="module", params=sorted(PYTHONS))
def scenes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One Blender process per wheel runs `blender_scenes`; its results.json, with `out`."""
    python = PYTHONS[request.param]
    assert python.is_file(), f"{python} is missing: `source dev/env.sh` builds it"
    tmp = tmp_path_factory.mktemp(f"apply-{request.param}")
    zip_path = build_addon.build(tmp / "zip")
    out = tmp / "out"
    call = f"\nblender_scenes(ZIP, {str(out)!r}, {str(TEAPOT)!r}, {QUADRANTS!r})\n"
    proc = run_in_blender(
        tmp, zip_path, inspect.getsource(blender_scenes) + call, python=python, timeout=400
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0 and "GENART-APPLY-OK" in proc.stdout, log
    results = json.loads((out / "results.json").read_text())
    assert results["version"].startswith(request.param), results["version"]
    return {**results, "out": out}


def pixels(scenes: dict[str, Any], tag: str) -> np.ndarray:
    """A render from the Blender side, (H, W, C) float, rows top to bottom."""
    return np.load(Path(scenes["out"]) / f"{tag}.npy")


def centre_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres as fractions of the frame, (H, W) each: x left to right, y bottom up."""
    x = (np.arange(width) + 0.5) / width
    y = 1 - (np.arange(height) + 0.5) / height
    return np.meshgrid(x, y)


def test_panorama_world_nodes(scenes: dict[str, Any]) -> None:
    cam = scenes["pano_camera_only"]
    assert (
        cam["names"] == ["genart sky", "genart sky again"]
        and cam["scene_world"] == "genart sky again"
    )
    # Applied over a genart World: still one mix, and both point at the user's World.
    assert cam["previous"] == ["User Sky", "User Sky"] and cam["mixes"] == 1
    assert cam["env_image"] == [["pano", "EQUIRECTANGULAR"]]
    links = cam["links"]
    for link in (
        ["ShaderNodeLightPath", "Is Camera Ray", "ShaderNodeMixShader", "Fac"],
        ["ShaderNodeTexEnvironment", "Color", "ShaderNodeBackground", "Color"],
        ["ShaderNodeMixShader", "Shader", "ShaderNodeOutputWorld", "Surface"],
        ["ShaderNodeMix", "Result", "ShaderNodeBackground", "Color"],  # the user's lighting
        ["ShaderNodeTexCoord", "Generated", "ShaderNodeSeparateXYZ", "Vector"],
    ):
        assert link in links, (link, links)
    # The mix's first shader is the user's Background, the second the panorama.
    assert sum(x[2:] == ["ShaderNodeMixShader", "Shader"] for x in links) == 2, links
    assert len(cam["user_nodes_kept"]) == 6, cam["user_nodes_kept"]
    full = scenes["pano_full"]
    assert full["name"] == "genart full" and full["mark"] == "panorama"
    assert full["links"] == [
        ["ShaderNodeBackground", "Background", "ShaderNodeOutputWorld", "Surface"],
        ["ShaderNodeTexEnvironment", "Color", "ShaderNodeBackground", "Color"],
    ]
    assert scenes["pano_over_genart"] == {
        "lighting": "pano2",
        "camera": "pano3",
        "previous": [None, None],
    }
    none = scenes["pano_no_world"]
    assert none["previous"] is None
    assert none["lighting"] == [pytest.approx(none["default"])], none
    assert ["ShaderNodeBackground", "Background", "ShaderNodeMixShader", "Shader"] in none["links"]
    message, field = scenes["pano_errors"]["square"]
    assert field == "image" and "2:1" in message and "64×32" in message, message
    assert scenes["pano_errors"]["not_image"][1] == "image"


def test_user_world_untouched_and_kept_after_save(scenes: dict[str, Any]) -> None:
    assert scenes["user_world_after"] == {"tree_same": True, "fake_user": False}
    reload = scenes["pano_reload"]
    # No scene uses "User Sky" any more; the genart World's reference keeps it in the file,
    # while the two earlier genart Worlds (unused) are dropped as Blender drops any.
    assert reload["worlds"] == ["User Sky", "genart full"], reload
    assert reload["scene_world"] == "genart full"
    assert reload["user_tree_same"] is True and reload["user_fake_user"] is False


def test_camera_only_keeps_the_lighting_and_shows_the_panorama(scenes: dict[str, Any]) -> None:
    user, camera_only, full = (
        pixels(scenes, t)[..., :3] for t in ("pano_user", "pano_camera_only", "pano_full")
    )
    h, w = user.shape[:2]
    # The sphere (radius 1, 6 units away, 50 mm on 36 mm over 48 px) is centred, ~11 px radius.
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx + 0.5 - w / 2, yy + 0.5 - h / 2)
    radius = 50 / 36 * w * np.tan(np.arcsin(1 / 6))
    for half in (yy < h / 2, yy >= h / 2):  # lit from above: two different levels
        inner = (r < radius - 2) & half
        assert inner.sum() > 100
        before, after, relit = user[inner].mean(0), camera_only[inner].mean(0), full[inner].mean(0)
        np.testing.assert_allclose(after, before, rtol=0.04, atol=0.005)
        assert np.abs(relit - before).max() > 0.15, (before, relit)  # the panorama relights
    top, bottom = (user[(r < radius - 2) & m].mean() for m in (yy < h / 2, yy >= h / 2))
    assert top > 1.3 * bottom, (top, bottom)  # the user's World lights from above
    background = r > radius + 2
    assert background.sum() > 500
    expected = QUADRANTS["top_right"]
    np.testing.assert_allclose(
        camera_only[background], [expected] * int(background.sum()), atol=2e-3
    )
    np.testing.assert_allclose(full[background], [expected] * int(background.sum()), atol=2e-3)
    assert np.abs(user[background] - expected).max(1).min() > 0.3  # it was the user's sky


@pytest.mark.parametrize("case", ["persp", "ortho"])
def test_backdrop_fills_the_camera_frame_exactly(scenes: dict[str, Any], case: str) -> None:
    rec = scenes[f"backdrop_{case}"]
    assert rec["parent"] == "Camera"
    assert rec["visibility"] == {
        "visible_camera": True,
        "visible_diffuse": False,
        "visible_glossy": False,
        "visible_transmission": False,
        "visible_volume_scatter": False,
        "visible_shadow": False,
    }
    assert rec["links"] == [
        ["ShaderNodeEmission", "Emission", "ShaderNodeOutputMaterial", "Surface"],
        ["ShaderNodeTexImage", "Color", "ShaderNodeEmission", "Color"],
    ]
    assert rec["depth"] == pytest.approx(0.99 * rec["clip_end"], rel=1e-5)
    img = pixels(scenes, f"backdrop_{case}")
    h, w = img.shape[:2]
    u, v = centre_grid(w, h)
    # The image's R = u and G = v: every pixel shows the image where the frame is, so the
    # plane neither falls short of the frame (black) nor overshoots it (squeezed ramps).
    np.testing.assert_allclose(img[..., 0], u, atol=4e-3)
    np.testing.assert_allclose(img[..., 1], v, atol=4e-3)
    corners = img[[0, 0, -1, -1], [0, -1, 0, -1], :2]
    expected = [
        [0.5 / w, 1 - 0.5 / h],
        [1 - 0.5 / w, 1 - 0.5 / h],
        [0.5 / w, 0.5 / h],
        [1 - 0.5 / w, 0.5 / h],
    ]
    np.testing.assert_allclose(corners, expected, atol=4e-3)


def test_backdrop_casts_no_shadow_and_lights_nothing(scenes: dict[str, Any]) -> None:
    without, with_, control = (
        pixels(scenes, t)[..., :3] for t in ("shadow_without", "shadow_with", "shadow_control")
    )
    near = np.zeros(without.shape[:2], bool)
    near[20:] = True  # ground closer than the backdrop (20 units away)
    lit = without[near].mean()
    assert lit > 0.05, lit  # the sun reaches the ground past where the backdrop will be
    assert with_[near].mean() == pytest.approx(lit, rel=0.03)
    assert control[near].mean() < 0.3 * lit  # the same plane with shadows would darken it
    assert with_[:8].mean() > 0.2  # and the backdrop shows above the horizon


def test_tileable_box_on_all_selected_objects(scenes: dict[str, Any]) -> None:
    assert scenes["teapot_before"] == {"uv_layers": 0, "slots": 0}  # as ../shared/meshes has it
    rec = scenes["tile_box"]
    assert rec["materials"] == ["genart stone"]
    assert rec["objects"] == ["Floor", "Boxy", "ObjLinked", "teapot"]
    assert any(n.startswith("Lamp:") for n in rec["notes"]), rec["notes"]
    assert any(n.startswith("teapot:") and "slot" in n for n in rec["notes"]), rec["notes"]
    for name, slots in rec["slots"].items():
        assert slots and all(s == ["OBJECT", "genart stone"] for s in slots), (name, slots)
    # The meshes keep the user's materials: only the objects' slots changed.
    assert rec["data_materials"] == {
        "Floor": ["UserRed"],
        "Boxy": ["UserRed", "UserBlue"],
        "ObjLinked": ["UserRed"],
        "teapot": [None],
    }
    assert rec["image"] == ["tile", "REPEAT", "BOX"]
    assert rec["scale"] == [1.5, 1.5, 1.5]
    assert ["ShaderNodeTexCoord", "Object", "ShaderNodeMapping", "Vector"] in rec["links"]
    assert ["ShaderNodeTexImage", "Color", "ShaderNodeBsdfPrincipled", "Base Color"] in rec["links"]
    # UserGreen was only on ObjLinked's object slot: the new material holds it instead.
    assert rec["green_users"] == [1, 1] and rec["replaced"] == ["ObjLinked[0]"]


def seamless(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The test's tile at texture coordinates (u, v), wrapped: R and G."""
    return np.stack([0.5 + 0.4 * np.sin(2 * np.pi * u), 0.5 + 0.4 * np.cos(2 * np.pi * v)], axis=2)


def assert_albedo(albedo: np.ndarray, expected: np.ndarray) -> None:
    """The Diffuse Color pass is the base colour times what the Principled BSDF's specular
    layer leaves to diffuse (~0.96): one factor for the whole image, then a match within
    0.01 (a stray filter sample of 4.5's Cycles may move one pixel a little further)."""
    k = float((albedo * expected).sum() / (expected**2).sum())
    assert 0.9 < k <= 1.0, k
    error = np.abs(albedo - k * expected).max(axis=2)
    worst = np.unravel_index(error.argmax(), error.shape)
    assert np.quantile(error, 0.995) < 0.01 and error.max() < 0.05, (worst, error.max())


def test_box_mapping_repeats_continuously_across_tile_edges(scenes: dict[str, Any]) -> None:
    albedo = pixels(scenes, "tile_box_albedo")[..., :2]
    h, w = albedo.shape[:2]
    fx, fy = centre_grid(w, h)
    x, y = 2 * fx - 1, (2 * fy - 1) * h / w  # object coordinates: ortho, 2 units wide
    # Cycles' box mapping on a +Z side reads (u, v) = (1 - y, x). 1.5 repeats per unit: u
    # and v run over three units, across tile edges; clamping or clipping instead of
    # repeating would leave flat or black bands outside 0..1.
    assert_albedo(albedo, seamless(1 - 1.5 * y, 1.5 * x))


def test_tileable_uv_uses_the_active_render_map(scenes: dict[str, Any]) -> None:
    rec = scenes["tile_uv"]
    assert rec["materials"] == ["genart bricks", "genart bricks (box)"]
    assert rec["objects"] == ["TwoMaps", "Udim", "Shared", "teapot.001"]
    assert ["ShaderNodeTexCoord", "UV", "ShaderNodeMapping", "Vector"] in rec["links"]
    assert ["ShaderNodeTexCoord", "Object", "ShaderNodeMapping", "Vector"] in rec["fallback_links"]
    assert rec["uv_nodes"] == []  # no map named: each object's render map is used
    assert rec["uv_same"] is True and rec["uv_flags"] == ["B", ["A"]]
    slots = rec["slots"]
    assert slots["TwoMaps"] == slots["Udim"] == slots["Shared"] == [["OBJECT", "genart bricks"]]
    assert slots["teapot.001"] == [["OBJECT", "genart bricks (box)"]]
    assert slots["SharedTwin"] == [["DATA", "UserBlue"]]  # same mesh, not selected: unchanged
    notes = rec["notes"]
    assert any(n.startswith("teapot.001: no UV map, box-projected") for n in notes), notes
    assert any(n.startswith("Udim:") and "UDIM tiles 1001, 1002, 1011" in n for n in notes), notes
    assert sum("UDIM" in n for n in notes) == 1, notes  # not for maps inside 0..1
    albedo = pixels(scenes, "tile_uv_albedo")[..., :2]
    h, w = albedo.shape[:2]
    fx, fy = centre_grid(w, h)
    x, y = 2 * fx - 1, (2 * fy - 1) * h / w
    # Map A: u = (x + 1) / 2, two repeats per UV unit. Map B would be one flat colour.
    assert_albedo(albedo, seamless(x + 1, y + 1))


def test_errors_name_what_to_change(scenes: dict[str, Any]) -> None:
    errors = {**scenes["tile_errors"], **scenes["backdrop_errors"]}
    expected = {
        "mapping": ("mapping", "one of"),
        "scale": ("scale", "positive"),
        "nothing": ("objects", "select meshes"),
        "not_camera": ("camera", "camera object"),
        "distance": ("distance", "clip range"),
    }
    message, field = scenes["tile_linked"]["error"]
    assert field == "objects" and "library.blend" in message and "make it local" in message
    assert scenes["tile_linked"]["unchanged"] is True
    for key, (field, words) in expected.items():
        message, got = errors[key]
        assert got == field and words in message, (key, message, got)


def test_user_materials_untouched_and_kept_after_save(scenes: dict[str, Any]) -> None:
    assert scenes["user_materials_same"] == {"UserRed": True, "UserBlue": True, "UserGreen": True}
    reload = scenes["tile_reload"]
    assert reload["same"] == {"UserRed": True, "UserBlue": True, "UserGreen": True}, reload
    assert reload["fake_users"] == []  # nothing of the user's was flagged
    assert {"genart stone", "genart bricks", "genart bricks (box)"} <= set(reload["materials"])
