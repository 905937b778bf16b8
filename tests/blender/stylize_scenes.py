"""Runs inside the bpy wheel (tests/test_blender_stylize.py): Stylize animation end to end
on a 6-frame scene against a real sidecar with a tiny SD model. `ZIP`, `OUT` and `SD` are
prepended by the test; GENART_CONNECTION_FILE points at the sidecar."""

import importlib
import json
from pathlib import Path

import bpy
from prologue import MOD, install_addon, six_frame_scene

addon = install_addon(ZIP)  # noqa: F821 (prepended by the test)
pngio = importlib.import_module(MOD + ".pngio")
out = Path(OUT)  # noqa: F821
results: dict = {}

sc, cube = six_frame_scene(out)  # linear keys on every frame: frames 1-4 stay put

assert bpy.ops.genart.check_sidecar() == {"FINISHED"}
session = addon.runtime.session()
addon.properties.sync_engines(session.welcome)
g = sc.genart
g.sequence_engine = "sd"
sd = g.engines.sd
sd.model = SD  # noqa: F821
sd.steps = 4
sd.seed = 7
sd.prompt = "first prompt"
for f, v in ((1, 0.5), (6, 1.0)):  # strength is keyframable like any property
    sd.strength = v
    sd.keyframe_insert("strength", frame=f)
key = g.prompt_schedule.add()
key.frame, key.prompt = 3, "scheduled prompt"
sc.timeline_markers.new("prompt: marker prompt", frame=5)

folder = out / "genart" / "anim"


def run(name: str = "anim", **kw) -> dict:
    folder = out / "genart" / name
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} if folder.exists() else {}
    n_jobs = len(session.jobs.jobs)
    try:
        res = sorted(bpy.ops.genart.stylize_animation(name=name, size=64, **kw))
        err = ""
    except RuntimeError as exc:
        res, err = ["CANCELLED"], str(exc)
    new_jobs = session.jobs.jobs[n_jobs:]
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    return {
        "result": res,
        "error": err,
        "sent_frames": sum(j.frames for j in new_jobs),
        "rewritten": sorted(n for n in after if before.get(n) != after[n]),
        "files": sorted(after),
    }


results["first"] = run()
results["report"] = sc.genart.stylize_report
frames = {}
for p in sorted(folder.glob("*.png")):
    text = pngio.read_text(p)
    recipe = json.loads(text["genart"])
    frames[p.name] = {
        "hash": text.get("genart_hash"),
        "prompt": recipe["params"]["prompt"],
        "strength": recipe["params"]["strength"],
        "frame": recipe["frame"],
        "near_far": [recipe["near"], recipe["far"]],
        "parameters": text["parameters"][:80],
        "warping_error": recipe.get("warping_error"),
        "coherence": recipe["params"].get("coherence"),
    }
results["frames"] = frames
se = bpy.data.scenes["Scene genart"].sequence_editor
results["rendered_scene_has_strips"] = bool(
    sc.sequence_editor and len(addon.compat.strips(sc.sequence_editor))
)
strips = [s for s in addon.compat.strips(se) if s.name.startswith("genart")]
results["strips"] = [
    {
        "name": s.name,
        "start": s.frame_final_start,
        "end": s.frame_final_end,
        "channel": s.channel,
        "n": len(s.elements),
        "dir": s.directory,
    }
    for s in strips
]
results["again"] = run()
for name in ("0004.png", "0005.png", "0006.png"):  # an interrupted run left 3 frames
    (folder / name).unlink()
results["resume"] = run()
results["resume"]["errors"] = {
    p.name: json.loads(pngio.read_text(p)["genart"]).get("warping_error")
    for p in sorted(folder.glob("*.png"))
}
cube.location.x = 0.0  # move the cube on frames 5-6 only
cube.keyframe_insert("location", frame=5)
cube.location.x = 0.5
cube.keyframe_insert("location", frame=6)
results["moved"] = run()
results["off_first"] = run(coherence="OFF")
cube.location.x = 0.25  # and again, frame 6 only
cube.keyframe_insert("location", frame=6)
results["off_moved"] = run(coherence="OFF")
results["mp4"] = run(mp4=True, coherence="OFF")  # the frames of the last run
results["mp4"]["file"] = [p.name for p in folder.glob("*.mp4")]
results["mp4"]["size"] = sum(p.stat().st_size for p in folder.glob("*.mp4"))
results["bad_range"] = run(frame_start=5, frame_end=2)


def recipes(name: str) -> dict:
    found = {}
    for p in sorted((out / "genart" / name).glob("*.png")):
        r = json.loads(pngio.read_text(p)["genart"])
        found[p.name] = {"error": r.get("warping_error"), "near_far": [r["near"], r["far"]]}
    return found


# A farm's chunks of the same shot (frames 4-6 of 1-6): warmed up on frames 2-3 (stylized,
# not written); without warm-up; after an earlier chunk wrote frames 1-3 (carried on from
# frame 3's file, nothing warmed up).
# The camera dollies back over the shot, so each chunk alone would see another depth range.
cam = sc.camera
cam.keyframe_insert("location", frame=1)
cam.location.y -= 6.0
cam.keyframe_insert("location", frame=6)
results["chunk"] = run("chunk", frame_start=4, frame_end=6, warmup=2)
results["chunk"]["recipes"] = recipes("chunk")
results["chunk0"] = run("chunk0", frame_start=4, frame_end=6, warmup=0)
results["chunk0"]["recipes"] = recipes("chunk0")
results["chunks_a"] = run("chunks", frame_start=1, frame_end=3)
results["chunks_b"] = run("chunks", frame_start=4, frame_end=6, warmup=2)
results["chunks_b"]["recipes"] = recipes("chunks")
(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
print("GENART-STYLIZE-OK")
