"""The Blender half of the demo: runs in the `bpy` wheel, started by dev/demo.py.

Installs the add-on zip into the throwaway Blender user that dev/demo.py set up (the
BLENDER_USER_* variables), builds an animated scene (Spot the cow and the Utah teapot on a
ground plane, a camera orbiting them, a sun and a sky-coloured World), connects to the
running sidecar (GENART_CONNECTION_FILE) and runs the add-on's operators as a script would:

1. Texture from camera on Spot and the teapot: the `sd` engine, depth-controlled (by the
   embedded model's own ControlNet, or a --depth-controlnet with --sd);
2. Tileable texture on the ground: the `texsynth` engine (procedural, no model);
3. Background: a 360° panorama World, seen by the camera only (`sd`);
4. a Cycles render of frame 1 (scene.png);
5. Stylize animation over the whole range (`sd` as the sequence engine: img2img with
   depth control, depth normalised once for the sequence), with a keyframed strength
   and a prompt that changes through the prompt schedule and a `prompt:` marker: frames in
   genart/<name>/####.png, an image strip on the Video Sequencer and <name>.mp4 beside
   the frames.

The .blend is saved after each step that changes it (the generated files sit beside it
under genart/) and opened again at the end to check the strip is in it. Progress lines
start with `demo:` (the operators print `genart:` lines of their own), each step ends with
a `DEMO-TIME<TAB>seconds<TAB>label` line for dev/demo.py's table; a failure is one line
`demo: error: <reason>` and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

T_START = time.monotonic()

import bpy  # noqa: E402 (timed: importing the wheel is part of Blender's start)
from mathutils import Vector  # noqa: E402

MODULE = "bl_ext.user_default.genart"


def log(message: str) -> None:
    print(f"demo: {message}", flush=True)


def fail(message: str) -> NoReturn:
    print(f"demo: error: {message}", flush=True)
    sys.exit(1)


def timed(label: str, seconds: float) -> None:
    """One row of dev/demo.py's time table (the line itself is not shown)."""
    print(f"DEMO-TIME\t{seconds:.2f}\t{label}", flush=True)


def run_operator(label: str, operator: Any, **kwargs: Any) -> None:
    """Runs a genart operator (it blocks in the background and prints progress lines);
    any result but FINISHED is a failure, with the operator's own report."""
    log(f"{label}...")
    t0 = time.monotonic()
    try:
        result = operator(**kwargs)
    except RuntimeError as exc:  # bpy.ops raises on an ERROR report: the report is the text
        text = " ".join(str(exc).split()).removeprefix("Error: ")
        fail(f"{label}: {text}")
    if result != {"FINISHED"}:
        fail(f"{label}: the operator returned {sorted(result)}")
    seconds = time.monotonic() - t0
    log(f"{label}: done in {seconds:.1f} s")
    timed(label, seconds)


def install_addon(zip_path: Path) -> Any:
    result = bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=str(zip_path), enable_on_install=True
    )
    if result != {"FINISHED"}:
        fail(f"installing {zip_path} returned {sorted(result)}")
    return importlib.import_module(MODULE)


def import_obj(path: Path, name: str) -> bpy.types.Object:
    before = set(bpy.data.objects)
    bpy.ops.wm.obj_import(filepath=str(path))  # Y-up OBJ -> Blender's Z-up
    new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    if len(new) != 1:
        fail(f"{path.name}: expected one mesh, got {[o.name for o in new]}")
    ob = new[0]
    ob.name = ob.data.name = name
    for poly in ob.data.polygons:
        poly.use_smooth = True
    return ob


def place_on_ground(ob: bpy.types.Object, x: float, y: float, height: float, turn: float) -> None:
    """Scale `ob` to `height`, turn it about Z (degrees) and stand it on z = 0 at (x, y)."""
    zs = [v[2] for v in ob.bound_box]
    ob.scale = (height / (max(zs) - min(zs)),) * 3
    ob.rotation_euler[2] = math.radians(turn)
    bpy.context.view_layer.update()
    corners = [ob.matrix_world @ Vector(c) for c in ob.bound_box]
    centre = sum(corners, Vector()) / 8
    ob.location += Vector((x - centre.x, y - centre.y, -min(c.z for c in corners)))


def build_scene(assets: Path, width: int, height: int, samples: int) -> bpy.types.Scene:
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.device = "CPU"
    sc.cycles.samples = samples
    sc.cycles.use_denoising = True
    sc.render.resolution_x, sc.render.resolution_y = width, height
    sc.render.resolution_percentage = 100
    # Generated images are sRGB pictures: the Standard view shows them as generated
    # (AgX or Filmic would desaturate them).
    sc.view_settings.view_transform = "Standard"

    bpy.ops.mesh.primitive_plane_add(size=40)
    ground = bpy.context.object
    ground.name = ground.data.name = "Ground"
    spot = import_obj(assets / "spot.obj", "Spot")
    place_on_ground(spot, -0.95, 0.1, 1.35, 150)
    teapot = import_obj(assets / "teapot.obj", "Teapot")
    place_on_ground(teapot, 1.15, 0.35, 1.05, 25)
    for ob in (ground, spot, teapot):  # the user's own (plain) materials, kept by genart
        mat = bpy.data.materials.new(f"{ob.name} material")
        ob.data.materials.append(mat)

    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    sc.collection.objects.link(cam)
    cam.data.lens = 35
    cam.location = (0.5, -5.6, 1.9)
    target = Vector((0.1, 0.2, 0.55))
    cam.rotation_euler = (target - cam.location).to_track_quat("-Z", "Y").to_euler()
    sc.camera = cam

    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sc.collection.objects.link(sun)
    sun.data.energy = 3.5
    sun.data.angle = math.radians(8)
    sun.rotation_euler = (math.radians(50), 0, math.radians(-35))

    world = bpy.data.worlds.new("Sky")  # lights the scene; the panorama is camera-only
    if world.node_tree is None:  # Blender 5.0 gives new Worlds nodes already
        world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (0.55, 0.7, 1.0, 1.0)
    bg.inputs["Strength"].default_value = 0.6
    sc.world = world
    return sc


def animate(sc: bpy.types.Scene, frames: int) -> None:
    """Frames 1..`frames`: the camera orbits the pair by 30° (parented to a pivot that
    turns); frame 1 is the still's view. The objects stay put: Texture from camera projects
    from a projector fixed in the world, so a textured object that moved would leave its
    texture behind."""
    sc.frame_start, sc.frame_end = 1, frames
    sc.frame_set(1)
    pivot = bpy.data.objects.new("Orbit pivot", None)
    sc.collection.objects.link(pivot)
    pivot.location = (0.1, 0.2, 0.55)  # the camera's target
    bpy.context.view_layer.update()
    cam = sc.camera
    cam.parent = pivot
    cam.matrix_parent_inverse = pivot.matrix_world.inverted()  # stays where it is
    for frame, angle in ((1, 0.0), (frames, 30.0)):
        pivot.rotation_euler[2] = math.radians(angle)
        pivot.keyframe_insert("rotation_euler", index=2, frame=frame)
    sc.frame_set(1)


def select_only(*objects: bpy.types.Object) -> None:
    for ob in bpy.context.scene.objects:
        ob.select_set(ob in objects)
    bpy.context.view_layer.objects.active = objects[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, required=True, help="the add-on zip")
    ap.add_argument("--out", type=Path, required=True, help="scene.blend, scene.png, genart/")
    ap.add_argument("--assets", type=Path, required=True, help="spot.obj and teapot.obj")
    ap.add_argument("--sd", default="", help="the SD model (default: the embedded micro model)")
    ap.add_argument("--depth-controlnet", default="", help="a depth ControlNet (default: none)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--texture-size", type=int, default=512)
    ap.add_argument("--ground-size", type=int, default=512)
    ap.add_argument("--world-size", type=int, default=256)
    ap.add_argument("--render", default="640x360", help="WxH of the final render")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument(
        "--animation-samples", type=int, default=4, help="Cycles samples of the frames' renders"
    )
    ap.add_argument("--frames", type=int, default=24, help="the animation: frames 1..N")
    ap.add_argument("--stylize-size", type=int, default=256, help="long side of the frames")
    ap.add_argument("--name", default="orbit", help="genart/<name>/####.png, <name>.mp4")
    args = ap.parse_args()
    rw, rh = (int(v) for v in args.render.split("x"))

    bpy.ops.wm.read_factory_settings(use_empty=True)  # first: it would unload the add-on
    addon = install_addon(args.zip)
    log(f"Blender {bpy.app.version_string}, add-on {MODULE} installed from {args.zip.name}")
    # New keys interpolate linearly (this throwaway user's preference, never saved).
    bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
    sc = build_scene(args.assets, rw, rh, args.samples)
    animate(sc, args.frames)
    blend = args.out / "scene.blend"
    # Saved first: generated images are written beside the .blend, under //genart/.
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    log(
        f"scene: Spot, the Utah teapot, a ground plane, sun; the camera orbits them over "
        f"frames 1-{args.frames} -> {blend.name}"
    )
    timed("Blender: start, add-on install, the animated scene", time.monotonic() - T_START)

    try:
        bpy.ops.genart.check_sidecar()
    except RuntimeError as exc:
        fail(f"check sidecar: {' '.join(str(exc).split())}")
    session = addon.runtime.session()
    # In a script the engines' settings are built from the sidecar's welcome on demand.
    addon.properties.sync_engines(session.welcome)
    offered = {e["name"] for e in session.welcome.get("engines", [])}
    for needed in ("sd", "texsynth"):
        if needed not in offered:
            fail(f"the sidecar offers no {needed!r} engine (it has {sorted(offered)})")
    g = sc.genart
    sd = g.engines.sd
    sd.model = args.sd
    sd.depth_controlnet = args.depth_controlnet
    sd.steps = args.steps
    sd.seed = 7
    # The embedded micro model keeps a render's light and dark masses up to a strength of
    # about 0.6 (docs/micro-models.md).
    sd.strength = 0.5

    # 1. Texture from camera: the `control` task's engine (depth-controlled: by the
    # embedded model's depth ControlNet, or --depth-controlnet with --sd).
    g.control_engine = "sd"
    sd.prompt = "polished red marble"
    select_only(bpy.data.objects["Spot"], bpy.data.objects["Teapot"])
    run_operator(
        "texture from camera (sd) on Spot and the teapot",
        bpy.ops.genart.texture_from_camera,
        size=args.texture_size,
    )

    # 2. Tileable ground: the `txt2img` task's engine is texsynth for this call.
    g.txt2img_engine = "texsynth"
    ts = g.engines.texsynth
    ts.noise = "perlin"
    ts.palette = "moss"
    ts.scale = 6
    ts.octaves = 6
    ts.persistence = 0.55
    ts.seed = 11
    select_only(bpy.data.objects["Ground"])
    run_operator(
        "tileable texture (texsynth) on the ground",
        bpy.ops.genart.tileable,
        size=args.ground_size,
        mapping="BOX",
        scale=0.3,
    )

    # 3. A 360° World: txt2img with sd again, as a panorama seen by the camera only
    # (the Sky World keeps lighting the scene).
    g.txt2img_engine = "sd"
    sd.prompt = "blue sky"
    run_operator(
        "360° background (sd, panorama)",
        bpy.ops.genart.background,
        kind="WORLD",
        size=args.world_size,
        camera_only=True,
    )

    bpy.ops.wm.save_mainfile()
    images = sorted(
        bpy.path.abspath(i.filepath) for i in bpy.data.images if i.filepath.startswith("//genart")
    )
    log(f"saved {blend.name} with {len(images)} generated image(s) under genart/")

    log(f"rendering {rw}x{rh}, {args.samples} samples (Cycles, CPU)...")
    t0 = time.monotonic()
    sc.render.filepath = str(args.out / "scene.png")
    sc.render.image_settings.file_format = "PNG"
    sc.render.image_settings.color_mode = "RGB"
    sc.render.image_settings.compression = 100  # the README shows it: small beats fast
    bpy.ops.render.render(write_still=True)
    seconds = time.monotonic() - t0
    sc.render.filepath = "//render/"  # the saved scene's own animation output
    log(f"rendered scene.png in {seconds:.1f} s")
    timed(f"Cycles render of frame 1 ({rw}x{rh}, {args.samples} samples)", seconds)

    # 5. Stylize animation: the `sequence` task's engine is sd, img2img on each frame's
    # render (depth-controlled: the passes go with every frame), exact-flow
    # coherence. The prompt changes over time (a schedule entry, then a marker) and
    # strength is keyframed.
    n = args.frames
    g.sequence_engine = "sd"
    sd.prompt = "polished red marble"
    schedule_at, marker_at = 1 + n // 3, 1 + 2 * n // 3
    key = g.prompt_schedule.add()
    key.frame, key.prompt = schedule_at, "green wood"
    sc.timeline_markers.new("prompt: blue brick wall", frame=marker_at)
    for frame, value in ((1, 0.4), (n, 0.6)):
        sd.strength = value
        sd.keyframe_insert("strength", frame=frame)
    sc.frame_set(1)
    # The frames are rendered with the scene's settings; fewer samples (denoised) are
    # enough for what img2img redraws. The still's samples are back before saving.
    sc.cycles.samples = args.animation_samples
    log(
        f"stylize settings: prompt 'polished red marble', 'green wood' from frame "
        f"{schedule_at} (prompt schedule), 'blue brick wall' from frame {marker_at} (marker); "
        f"strength keyed 0.4 -> 0.6; frames rendered with {args.animation_samples} samples"
    )
    run_operator(
        f"stylize animation (sd, {n} frames at {args.stylize_size}px, MP4)",
        bpy.ops.genart.stylize_animation,
        frame_start=1,
        frame_end=n,
        size=args.stylize_size,
        name=args.name,
        mp4=True,
    )
    sc.cycles.samples = args.samples
    bpy.ops.wm.save_mainfile()
    check_saved(blend, args.name, n)
    print("DEMO-BLENDER-OK", flush=True)


def check_saved(blend: Path, name: str, frames: int) -> None:
    """Opens the saved .blend again: the strip of the stylized frames is in it (in any of
    its scenes: the add-on may keep the strips in a review scene of their own)."""
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    found = []
    for scene in bpy.data.scenes:
        se = scene.sequence_editor
        if se is None:
            continue
        strips = se.strips_all if hasattr(se, "strips_all") else se.sequences_all  # 4.5
        found += [(scene, s) for s in strips if s.name == f"genart {name}"]
    if len(found) != 1 or len(found[0][1].elements) != frames:
        fail(f"{blend.name}: expected one 'genart {name}' strip of {frames} frames, got {found}")
    scene, strip = found[0]
    log(
        f"saved {blend.name}: strip '{strip.name}' in scene '{scene.name}', channel "
        f"{strip.channel}, frames {strip.frame_final_start}-{strip.frame_final_end - 1}, "
        f"images {strip.directory}####.png"
    )


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as exc:  # one line, never a traceback (the log keeps Blender's output)
        fail(f"{type(exc).__name__}: {exc}")
