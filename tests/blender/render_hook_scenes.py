"""Runs inside the bpy wheel (tests/test_blender_render_hook.py): Blender's own renders
(`bpy.ops.render.render`, background mode) with the stylize-renders toggle, against a real
sidecar with a tiny SD model. `ZIP`, `OUT`, `SD` and `MODE` are prepended by the test;
GENART_CONNECTION_FILE points at the sidecar. MODE "main" writes OUT/results.json; MODE
"fail" renders with a model that is not there and must make the process exit non-zero."""

import hashlib
import importlib
import json
from pathlib import Path

import bpy
from prologue import MOD, install_addon, six_frame_scene

addon = install_addon(ZIP)  # noqa: F821 (prepended by the test)
pngio = importlib.import_module(MOD + ".pngio")
capture = importlib.import_module(MOD + ".capture")
out = Path(OUT)  # noqa: F821
results: dict = {}

sc, cube = six_frame_scene(out)
sc.frame_end = 6 if MODE == "main" else 2  # noqa: F821
sc.render.image_settings.file_format = "PNG"
sc.render.filepath = "//render/shot_"

assert bpy.ops.genart.check_sidecar() == {"FINISHED"}
session = addon.runtime.session()
addon.properties.sync_engines(session.welcome)
g = sc.genart
g.sequence_engine = "sd"
sd = g.engines.sd
sd.steps = 4
sd.seed = 7
sd.prompt = "first prompt"
render_dir = out / "render"
folder = render_dir / "genart"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if MODE == "fail":  # noqa: F821
    sd.model = str(out / "no-such-model")
    g.stylize_renders = True
    bpy.ops.render.render(animation=True)
    sd.model = SD  # noqa: F821
    sc.render.image_settings.file_format = "OPEN_EXR"  # scene-linear: not an image input
    sc.render.filepath = "//exr/e_"
    bpy.ops.render.render(write_still=True)
    print("GENART-AFTER-RENDER", flush=True)  # the script goes on; the exit status says it
    raise SystemExit(0)

sd.model = SD  # noqa: F821
for f, v in ((1, 0.5), (6, 1.0)):  # keyframed like any property
    sd.strength = v
    sd.keyframe_insert("strength", frame=f)
key = g.prompt_schedule.add()
key.frame, key.prompt = 3, "scheduled prompt"
sc.timeline_markers.new("prompt: marker prompt", frame=5)

# Blender's own files, hashed the moment they are written (this handler runs after the
# add-on's), to show nothing touches them afterwards.
at_write: dict[str, str] = {}


def remember(scene, *_):
    p = Path(scene.render.frame_path(frame=scene.frame_current))
    if p.is_file():
        at_write[p.name] = sha(p)


bpy.app.handlers.render_write.append(remember)


def render(**kw) -> dict:
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} if folder.exists() else {}
    n_jobs = len(session.jobs.jobs)
    res = sorted(bpy.ops.render.render(**kw))
    new_jobs = session.jobs.jobs[n_jobs:]
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} if folder.exists() else {}
    return {
        "result": res,
        "jobs": len(new_jobs),
        "generated": sum(j.frames_done for j in new_jobs),
        "states": [j.state for j in new_jobs],
        "rewritten": sorted(n for n in after if before.get(n) != after[n]),
        "files": sorted(after),
        "status": addon.render_hook.STATE.status,
    }


def strips(scene_name: str) -> list:
    scene = bpy.data.scenes.get(scene_name)
    se = scene.sequence_editor if scene is not None else None
    return [
        {
            "name": s.name,
            "start": s.frame_final_start,
            "end": s.frame_final_end,
            "n": len(s.elements),
            "dir": s.directory,
            "first": s.elements[0].filename,
        }
        for s in (addon.compat.strips(se) if se is not None else [])
    ]


def recipe(path: Path) -> dict:
    text = pngio.read_text(path)
    r = json.loads(text["genart"])
    return {
        "hash": text.get("genart_hash"),
        "frame": r["frame"],
        "prompt": r["params"]["prompt"],
        "strength": r["params"]["strength"],
        "size": [r["params"]["width"], r["params"]["height"]],
        "action": r["action"],
        "source": r.get("source"),
        "coherence": r["params"].get("coherence"),
        "warping_error": r.get("warping_error"),
    }


def compositor() -> list:
    tree = addon.compat.compositor(sc)
    return sorted(n.name for n in tree.nodes) if tree is not None else []


# 1. The toggle off: Blender renders, nothing is sent.
g.stylize_renders = False
results["off"] = render(animation=True)
results["off"]["blender"] = sorted(p.name for p in render_dir.glob("*.png"))
results["off"]["folder"] = folder.exists()
off_pixels = {p.name: addon.render_hook.read_pixels(p)[0] for p in render_dir.glob("*.png")}
results["off"]["compositor"] = compositor()

# 2. On: the animation, stylized beside Blender's frames, the strip in "<scene> genart".
g.stylize_renders = True
at_write.clear()
results["first"] = render(animation=True)
results["blender"] = {
    p.name: {
        "sha_at_write": at_write.get(p.name),
        "sha_now": sha(p),
        "genart_text": "genart" in pngio.read_text(p),
    }
    for p in sorted(render_dir.glob("*.png"))
}
results["frames"] = {p.name: recipe(p) for p in sorted(folder.glob("*.png"))}
results["picture_change"] = {
    p.name: int(abs(addon.render_hook.read_pixels(p)[0].astype(int) - off_pixels[p.name]).max())
    for p in sorted(render_dir.glob("*.png"))
}
results["passes"] = sorted(p.name for p in (folder / "passes").glob("*.exr"))
results["compositor"] = compositor()
results["strips"] = strips(sc.name + " genart")
results["scene_strips"] = strips(sc.name)

# 3. Rendering again: every stylized frame is up to date; the strip is replaced, not added.
results["again"] = render(animation=True)
results["again"]["strips"] = strips(sc.name + " genart")

# 4. An interrupted run left 3 frames: only the missing 3 are stylized.
for name in ("shot_0004.png", "shot_0005.png", "shot_0006.png"):
    (folder / name).unlink()
results["resume"] = render(animation=True)
results["resume"]["frames"] = {p.name: recipe(p) for p in sorted(folder.glob("*.png"))}

# 4b. F12 frame by frame: frame 3 alone (its stylized file gone) carries on from frame 2's
# stylized file and passes on disk.
(folder / "shot_0003.png").unlink()
sc.frame_set(3)
results["f12"] = render()
results["f12"]["frame"] = recipe(folder / "shot_0003.png")

# 5. A still written by Blender (write_still) at frame 2, as a JPEG.
sc.frame_set(2)
sc.render.filepath = "//still/pic_"
sc.render.image_settings.file_format = "JPEG"
results["still"] = render(write_still=True)
results["still"]["blender"] = sorted(p.name for p in (out / "still").glob("*.*"))
results["still"]["frames"] = {p.name: recipe(p) for p in (out / "still" / "genart").glob("*.png")}

# 6. A still Blender writes nowhere (F12): the Render Result is stylized (saved as PNG
# whatever the output format, which is left as it was).
sc.frame_set(4)
sc.render.filepath = "//nowrite/n_"
sc.render.image_settings.color_mode = "BW"
results["nowrite"] = render()
results["nowrite"]["blender"] = sorted(p.name for p in (out / "nowrite").glob("*.*"))
fmt = sc.render.image_settings
results["nowrite"]["format_after"] = [fmt.file_format, fmt.color_mode, fmt.color_depth]
results["nowrite"]["frames"] = {
    p.name: recipe(p) for p in (out / "nowrite" / "genart").glob("*.png")
}
results["review_scenes"] = sorted(s.name for s in bpy.data.scenes)

# 7. The add-on's own renders (a capture) are not stylized, toggle on or not.
n_jobs = len(session.jobs.jobs)
capture.capture_camera(sc, out / "cap", width=32, height=24)
results["capture"] = {
    "jobs": len(session.jobs.jobs) - n_jobs,
    "folder": (out / "cap" / "genart").exists(),
}

# 8. Stylize renders off: the passes node (and the compositor made for it) is gone.
g.stylize_renders = False
results["compositor_after_off"] = compositor()

(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-RENDER-HOOK-OK")
