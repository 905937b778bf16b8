"""Runs inside the bpy wheel (tests/test_blender_cli.py): the `genart` Blender command, called
the way `blender -b scene.blend --command genart ...` calls it (the extension's registered
handler with an argv list), case after case in one process against a real sidecar with
tiny Stable Diffusion models. Each case's return code, stdout and stderr go into
OUT/results.json. `ZIP`, `OUT`, `SD`, `CN`, `CONN` (the running sidecar's connection file)
and `MISSING` (a connection file that does not exist) are prepended by the test.
"""

import contextlib
import importlib
import io
import json
import math
import os
import time
from pathlib import Path

import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)  # first: it would unload the add-on
assert bpy.ops.extensions.package_install_files(
    repo="user_default",
    filepath=ZIP,  # noqa: F821 (prepended by the test)
    enable_on_install=True,
) == {"FINISHED"}
MOD = "bl_ext.user_default.genart"
importlib.import_module(MOD)
cli = importlib.import_module(MOD + ".cli")
images = importlib.import_module(MOD + ".images")
addon_pngio = importlib.import_module(MOD + ".pngio")
out = Path(OUT)  # noqa: F821
conn, sd_path, cn_path, missing = CONN, SD, CN, MISSING  # noqa: F821
results: dict = {"registered": cli.registered()}

# Disabling the extension unregisters the command; enabling registers it again.
bpy.ops.preferences.addon_disable(module=MOD)
results["registered_when_disabled"] = cli.registered()
bpy.ops.preferences.addon_enable(module=MOD)
cli = importlib.import_module(MOD + ".cli")
results["registered_again"] = cli.registered()


def run(*argv: str) -> dict:
    """One `--command genart ...` call: its return code (Blender's exit status) and output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = cli.main(list(argv))
    case = {
        "argv": list(argv),
        "rc": rc,
        "out": stdout.getvalue(),
        "err": stderr.getvalue(),
        "seconds": time.monotonic() - t0,
    }
    print(f"--- genart {' '.join(argv)} -> {rc} in {case['seconds']:.1f} s")
    print(case["out"] + case["err"], flush=True)
    return case


def slots(name: str) -> list:
    return [s.material.name if s.material else None for s in bpy.data.objects[name].material_slots]


# The scene: a camera looking at a sphere on a plane; only Ground selected, Ball active.
sc = bpy.context.scene
sc.render.engine = "CYCLES"
sc.cycles.samples = 1
sc.cycles.device = "CPU"
sc.render.resolution_x, sc.render.resolution_y = 96, 64
sc.frame_start, sc.frame_end = 1, 2
bpy.ops.mesh.primitive_plane_add(size=20)
bpy.context.object.name = "Ground"
bpy.ops.mesh.primitive_uv_sphere_add(radius=1.5, location=(0, 0, 1.5))
bpy.context.object.name = "Ball"
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
sc.collection.objects.link(cam)
cam.location, cam.rotation_euler = (0, -9, 4), (math.radians(70), 0, 0)
sc.camera = cam
for ob in sc.objects:
    ob.select_set(ob.name == "Ground")
bpy.context.view_layer.objects.active = bpy.data.objects["Ball"]
blend = out / "scene.blend"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))

# Usage: help, bad flags and values (no sidecar needed), one line each, status 2.
results["help"] = run("--help")
results["check_help"] = run("check", "--help")
results["no_subcommand"] = run()
results["unknown_subcommand"] = run("frobnicate")
results["bad_flag"] = run("tileable", "--bogus")
results["bad_int"] = run("tileable", "--seed", "x")
results["bad_param_syntax"] = run("tileable", "--param", "octaves")

# A sidecar that cannot be reached or started: status 1 quickly, one line.
results["unreachable"] = run("check", "--sidecar", missing)
results["cannot_launch"] = run("check", "--sidecar", str(out / "no-such-sidecar"))
results["no_token"] = run("check", "--sidecar", "127.0.0.1:9")

# Engine and parameter mistakes, named against the engine's schema.
results["bad_engine"] = run("tileable", "--sidecar", conn, "--engine", "nope")
results["bad_value"] = run(
    "tileable",
    "--sidecar",
    conn,
    "--engine",
    "texsynth",
    "--param",
    "octaves=99",
)
results["unknown_param"] = run(
    "tileable",
    "--sidecar",
    conn,
    "--engine",
    "texsynth",
    "--model",
    sd_path,
)
results["bad_objects"] = run(
    "tileable",
    "--sidecar",
    conn,
    "--engine",
    "texsynth",
    "--objects",
    "Nope",
)

# Tileable with the texsynth engine (no model), saved.
mtime = blend.stat().st_mtime_ns
results["tileable"] = run(
    "tileable",
    "--sidecar",
    conn,
    "--engine",
    "texsynth",
    "--size",
    "64",
    "--objects",
    "Ball",
    "--param",
    "octaves=3",
    "--param",
    "color_a=200, 40, 40",
    "--save",
)
copy = out / "saved-copy.blend"  # Blender loads no library from the open file itself
copy.write_bytes(blend.read_bytes())
with bpy.data.libraries.load(str(copy)) as (data_from, _data_to):
    saved_materials = list(data_from.materials)
results["tileable"].update(
    slots=slots("Ball"),
    ground_slots=slots("Ground"),
    saved=blend.stat().st_mtime_ns != mtime,
    saved_materials=saved_materials,
    octaves=sc.genart.engines.texsynth.octaves,
    color_a=sc.genart.engines.texsynth.color_a,
    txt2img_engine=sc.genart.txt2img_engine,
    selected=sorted(o.name for o in sc.objects if o.select_get()),
    active=bpy.context.view_layer.objects.active.name,
)

# A 360° World with texsynth.
worlds_before = sorted(w.name for w in bpy.data.worlds)
results["background"] = run(
    "background",
    "--sidecar",
    conn,
    "--kind",
    "world",
    "--size",
    "32",
    "--no-camera-only",
)
results["background"]["worlds"] = sorted(w.name for w in bpy.data.worlds)
results["background"]["worlds_before"] = worlds_before

# Texture from camera with tiny SD + its depth ControlNet; the model given as a path
# relative to the current folder (sent absolute), saved.
relative_sd = "./" + os.path.relpath(sd_path)
results["texture"] = run(
    "texture",
    "--sidecar",
    conn,
    "--engine",
    "sd",
    "--model",
    relative_sd,
    "--depth-controlnet",
    cn_path,
    "--prompt",
    "red brick wall",
    "--steps",
    "2",
    "--seed",
    "7",
    "--size",
    "64",
    "--objects",
    "Ball",
    "Ground",
    "--param",
    "preview_every=1",
    "--save",
)
tex = [i for i in bpy.data.images if i.get(images.PROP) is not None and "from camera" in i.name]
tex = [i for i in tex if "depth" not in i.name]
results["texture"]["images"] = [i.name for i in tex]
results["texture"]["recipe"] = images.recipe_of(tex[0]) if tex else None
results["texture"]["relative_sd"] = relative_sd
results["texture"]["uv"] = {
    n: [uv.name for uv in bpy.data.objects[n].data.uv_layers] for n in ("Ball", "Ground")
}

# check: everything present (and by hash); restricted to one task; then one thing wrong
# at a time, each named in the one error line.
results["check_ok"] = run("check", "--sidecar", conn)
results["check_txt2img"] = run("check", "--sidecar", conn, "--task", "txt2img", "--no-hash")
sd = sc.genart.engines.sd
missing_cn = str(Path(cn_path).parent / "missing-controlnet")
sd.depth_controlnet = missing_cn
results["check_missing"] = run("check", "--sidecar", conn)
results["check_missing"]["path"] = missing_cn
sd.depth_controlnet = cn_path
sd.model = "//models/sd"
results["check_relative"] = run("check", "--sidecar", conn)
sd.model = sd_path
recipe = images.recipe_of(tex[0])
images.set_recipe(tex[0], {**recipe, "model": sd_path, "model_sha256": "0" * 64})
results["check_other_model"] = run("check", "--sidecar", conn)
sha = next(m["sha256"] for m in cli.runtime.session().models if m["path"] == sd_path)
images.set_recipe(tex[0], {**recipe, "model": sd_path, "model_sha256": sha})
results["check_same_model"] = run("check", "--sidecar", conn)
results["check_same_model"]["sha256"] = sha
sc.genart.txt2img_engine_name = "nosuch"  # an engine this sidecar lacks
results["check_no_engine"] = run("check", "--sidecar", conn)
sc.genart.txt2img_engine_name = "texsynth"

# stylize: the operator is another part of the extension; run it if it is there.
has_stylize = True
try:
    bpy.ops.genart.stylize_animation.get_rna_type()
except KeyError:
    has_stylize = False
results["stylize_available"] = has_stylize
results["stylize_bad_engine"] = run("stylize", "--sidecar", conn, "--engine", "nope")
if has_stylize:  # frames 1-2 (the scene's range) with tiny SD, into a folder of our choosing
    results["stylize"] = run(
        "stylize",
        "--sidecar",
        conn,
        "--engine",
        "sd",
        "--size",
        "64",
        "--output",
        str(out / "frames"),
        "--coherence",
        "off",
    )
    results["stylize"]["frames"] = sorted(p.name for p in (out / "frames").glob("*.png"))
    results["stylize"]["coherence"] = sorted(
        {
            json.loads(addon_pngio.read_text(p)["genart"])["params"].get("coherence")
            for p in (out / "frames").glob("*.png")
        }
    )

(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-CLI-OK")
