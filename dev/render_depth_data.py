"""Training data for the micro depth ControlNet (issue 8): Blender renders of procedural
objects under procedural textures, each with the depth map the add-on would send.

Run with the bpy wheel's Python (`.venv/bin/python dev/render_depth_data.py --out DIR`).
Every sample is captured with the add-on's own `capture.capture` (Workbench colour under
studio light, depth from the one-sample Cycles data render, near/far from the objects'
bounds), so the control maps are made exactly as at generation time. It writes, per
sample `NNNNN`: `NNNNN.png` (the render), `NNNNN.control.png` (disparity, 8-bit grey, as
`imaging.control.depth_to_disparity` makes it) and `NNNNN.txt` (the texture's caption):
the folder layout `genart train controlnet --data` reads.

A scene: 1-3 primitives (cube, spheres, cylinder, cone, torus, monkey) at random places,
turns and sizes, on a ground plane half of the time, all under one texture of the
procedural train split (its caption is the sample's), before a grey world, seen by a
camera at a random azimuth, elevation, distance and focal length. Deterministic in
--seed; resumes where a previous run stopped (existing samples are kept).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon import capture  # noqa: E402
from genart_core.imaging.control import depth_to_disparity  # noqa: E402
from genart_core.textures import dataset  # noqa: E402

PRIMITIVES = {
    "cube": lambda: bpy.ops.mesh.primitive_cube_add(size=1.6),
    "sphere": lambda: bpy.ops.mesh.primitive_uv_sphere_add(radius=0.9, segments=32, ring_count=16),
    "ico": lambda: bpy.ops.mesh.primitive_ico_sphere_add(radius=0.9, subdivisions=2),
    "cylinder": lambda: bpy.ops.mesh.primitive_cylinder_add(radius=0.7, depth=1.6),
    "cone": lambda: bpy.ops.mesh.primitive_cone_add(radius1=0.9, depth=1.6),
    "torus": lambda: bpy.ops.mesh.primitive_torus_add(major_radius=0.8, minor_radius=0.3),
    "monkey": lambda: bpy.ops.mesh.primitive_monkey_add(size=1.6),
}


def build_scene(
    size: int,
) -> tuple[bpy.types.Scene, dict[str, bpy.types.Object], bpy.types.Object, bpy.types.Image]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.engine = "BLENDER_WORKBENCH"
    shading = sc.display.shading
    shading.light = "STUDIO"
    shading.color_type = "TEXTURE"
    sc.render.resolution_x = sc.render.resolution_y = size
    sc.world = bpy.data.worlds.new("World")
    sc.cycles.samples = 1
    sc.cycles.device = "CPU"
    image = bpy.data.images.new("texture", 128, 128)
    mat = bpy.data.materials.new("texture")
    mat.use_nodes = True
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    mat.node_tree.nodes.active = node
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    mat.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    objects = {}
    for name, add in PRIMITIVES.items():
        add()
        ob = bpy.context.object
        ob.name = name
        ob.data.materials.append(mat)
        if name in ("sphere", "cylinder", "cone", "torus", "monkey"):
            bpy.ops.object.shade_smooth()
        objects[name] = ob
    bpy.ops.mesh.primitive_plane_add(size=30)
    ground = bpy.context.object
    ground.data.materials.append(mat)
    for loop in ground.data.uv_layers.active.data:  # texture at about object scale
        loop.uv = loop.uv * 12.0
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    sc.collection.objects.link(cam)
    sc.camera = cam
    target = bpy.data.objects.new("target", None)
    sc.collection.objects.link(target)
    track = cam.constraints.new("TRACK_TO")
    track.target = target
    return sc, objects, ground, image


def arrange(
    rng: np.random.Generator,
    sc: bpy.types.Scene,
    objects: dict[str, bpy.types.Object],
    ground: bpy.types.Object,
) -> None:
    chosen = set(rng.choice(list(objects), size=int(rng.integers(1, 4)), replace=False))
    for name, ob in objects.items():
        ob.hide_render = name not in chosen
        if name in chosen:
            s = float(rng.uniform(0.6, 1.3))
            ob.scale = (s, s, s)
            ob.location = (float(rng.uniform(-1.3, 1.3)), float(rng.uniform(-1.3, 1.3)), 0.8 * s)
            tilt = rng.uniform(-0.4, 0.4, 3) + [0.0, 0.0, rng.uniform(0, 2 * math.pi)]
            ob.rotation_euler = tuple(float(a) for a in tilt)
    ground.hide_render = bool(rng.random() < 0.5)
    grey = float(rng.uniform(0.05, 0.8))
    sc.world.color = (grey, grey, grey)
    cam = sc.camera
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(5), math.radians(60))
    distance = float(rng.uniform(3.8, 7.0))
    cam.location = (
        distance * math.cos(elevation) * math.cos(azimuth),
        distance * math.cos(elevation) * math.sin(azimuth),
        0.6 + distance * math.sin(elevation),
    )
    cam.data.lens = float(rng.uniform(30, 55))
    target = cam.constraints[0].target
    target.location = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)), 0.6)


def set_texture(image: bpy.types.Image, pixels: np.ndarray) -> None:
    h, w = pixels.shape[:2]
    if image.size[:] != (w, h):
        image.scale(w, h)
    rgba = np.concatenate(
        [pixels[::-1].astype(np.float32) / 255.0, np.ones((h, w, 1), np.float32)], 2
    )
    image.pixels.foreach_set(rgba.ravel())
    image.update()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else None)
    args.out.mkdir(parents=True, exist_ok=True)
    sc, objects, ground, image = build_scene(args.size)
    textures = dataset("train", 128, args.seed + 11, length=10**6)
    t0, done = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            stem = args.out / f"{i:05d}"
            if stem.with_suffix(".txt").is_file():
                continue
            rng = np.random.default_rng([args.seed, i])
            sample = textures[i]
            set_texture(image, sample.image)
            arrange(rng, sc, objects, ground)
            cap = capture.capture(sc, Path(tmp), passes=("depth",), stem="c")
            depth = capture.read_pass(cap.passes_path, "Depth")
            disparity = depth_to_disparity(depth, cap.near, cap.far)
            grey = (disparity * 255.0 + 0.5).astype(np.uint8)
            _write_png(stem.with_suffix(".control.png"), np.repeat(grey[..., None], 3, 2))
            Path(cap.color_path).replace(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(sample.caption + "\n")
            done += 1
            if done % 100 == 0:
                rate = (time.perf_counter() - t0) / done
                print(f"{i + 1}/{args.count} ({rate:.2f} s each)", flush=True)


def _rgba(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3), rows top to bottom → Blender's float RGBA, rows bottom to top."""
    h, w = rgb.shape[:2]
    alpha = np.ones((h, w, 1), np.float32)
    return np.concatenate([rgb[::-1].astype(np.float32) / 255.0, alpha], axis=2)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    img = bpy.data.images.new("png", w, h)
    img.pixels.foreach_set(_rgba(rgb).ravel())
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)


if __name__ == "__main__":
    main()
