"""Stylize renders (blender_addon/render_hook.py) in the `bpy` wheel against a real sidecar
with a tiny SD model: Blender's own `render.render` in background mode with the toggle on
stylizes every frame beside Blender's output with its recipe, adds the strip to the review
scene, skips frames already up to date, stylizes stills (written or not), leaves Blender's
files and the add-on's own renders alone, sends nothing with the toggle off, and makes the
process exit non-zero with one line when a frame fails (tests/blender/render_hook_scenes.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from sdtiny import build_tiny_sd
from test_blender_addon import build_addon, run_in_blender, scene_script

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = Path(__file__).parent / "blender" / "render_hook_scenes.py"
FILES = [f"shot_{i:04d}.png" for i in range(1, 7)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("render_hook")
    sd = build_tiny_sd(tmp / "models" / "sd")
    sc = SidecarProcess(tmp / "state").start()
    zip_path = build_addon.build(tmp / "zip")

    def run(mode: str) -> tuple[Any, Path]:
        out = tmp / f"out-{mode}"
        out.mkdir()
        body = f"OUT = {str(out)!r}\nSD = {str(sd)!r}\nMODE = {mode!r}\n" + scene_script(SCRIPT)
        conn = {"GENART_CONNECTION_FILE": str(sc.connection_file)}
        work = tmp / f"work-{mode}"
        work.mkdir()
        return run_in_blender(work, zip_path, body, extra_env=conn, timeout=500), out

    try:
        yield run
    finally:
        sc.stop()


@pytest.fixture(scope="module")
def res(env: Any) -> dict[str, Any]:
    proc, out = env("main")
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "GENART-RENDER-HOOK-OK" in proc.stdout, log
    return json.loads((out / "results.json").read_text())


def test_toggle_off_sends_nothing(res: dict[str, Any]) -> None:
    off = res["off"]
    assert off["result"] == ["FINISHED"] and off["blender"] == FILES
    assert off["jobs"] == 0 and off["generated"] == 0 and off["folder"] is False


def test_animation_frames_beside_blenders_with_recipes(res: dict[str, Any]) -> None:
    first = res["first"]
    assert first["result"] == ["FINISHED"], first
    assert first["files"] == FILES and first["generated"] == 6, first
    assert first["states"] == ["done"], first
    frames = res["frames"]
    assert [frames[f]["frame"] for f in FILES] == [1, 2, 3, 4, 5, 6]
    assert all(len(frames[f]["hash"]) == 64 for f in FILES)
    assert all(frames[f]["size"] == [64, 48] for f in FILES)
    assert all(frames[f]["action"] == "stylize_renders" for f in FILES)
    assert [Path(frames[f]["source"]).name for f in FILES] == FILES  # Blender's frame is the input
    # Per-frame values: the prompt schedule and the keyframed strength, evaluated per frame.
    prompts = [frames[f]["prompt"] for f in FILES]
    assert prompts == ["first prompt"] * 2 + ["scheduled prompt"] * 2 + ["marker prompt"] * 2
    strengths = [frames[f]["strength"] for f in FILES]
    assert strengths[0] == pytest.approx(0.5, abs=1e-3)
    assert strengths[-1] == pytest.approx(1.0, abs=1e-3)
    assert strengths == sorted(strengths) and len(set(strengths)) == 6
    assert "6 stylized" in first["status"] and "0 failed" in first["status"], first["status"]


def test_blenders_own_frames_are_untouched(res: dict[str, Any]) -> None:
    blender = res["blender"]
    assert sorted(blender) == FILES
    for name, info in blender.items():
        assert info["sha_at_write"] == info["sha_now"], name
        assert info["genart_text"] is False, name


def test_strip_in_the_review_scene(res: dict[str, Any]) -> None:
    strips = res["strips"]
    assert len(strips) == 1, strips
    strip = strips[0]
    assert (strip["start"], strip["end"], strip["n"]) == (1, 7, 6), strip
    assert strip["dir"].rstrip("/").endswith("render/genart") and strip["first"] == FILES[0]
    assert res["scene_strips"] == []  # the rendered scene keeps rendering its camera


def test_rerendering_skips_what_is_up_to_date(res: dict[str, Any]) -> None:
    again = res["again"]
    assert again["result"] == ["FINISHED"] and again["generated"] == 0, again
    assert again["rewritten"] == [] and again["jobs"] == 0, again
    assert "6 up to date" in again["status"], again["status"]
    assert len(again["strips"]) == 1  # replaced, not stacked
    resume = res["resume"]
    assert resume["generated"] == 3 and resume["rewritten"] == FILES[3:], resume


def test_stills_written_or_not(res: dict[str, Any]) -> None:
    still = res["still"]
    assert still["result"] == ["FINISHED"] and still["generated"] == 1, still
    assert still["blender"] == ["pic_.jpg"]  # write_still: the output path, unnumbered
    assert list(still["frames"]) == ["pic_0002.png"]
    frame = still["frames"]["pic_0002.png"]
    assert frame["frame"] == 2 and frame["prompt"] == "first prompt"
    assert Path(frame["source"]).name == "pic_.jpg" and frame["size"] == [64, 48]
    nowrite = res["nowrite"]
    assert nowrite["result"] == ["FINISHED"] and nowrite["generated"] == 1, nowrite
    assert nowrite["blender"] == []  # Blender wrote nothing
    frame = nowrite["frames"]["n_0004.png"]
    assert frame["frame"] == 4 and frame["prompt"] == "scheduled prompt"
    assert frame["source"] == "Render Result" and frame["size"] == [64, 48]
    assert nowrite["format_after"] == ["JPEG", "BW", "8"]  # the scene's output, restored
    assert res["review_scenes"] == ["Scene", "Scene genart"]  # stills add no strip


def test_the_addons_own_renders_are_not_stylized(res: dict[str, Any]) -> None:
    assert res["capture"] == {"jobs": 0, "folder": False}


def test_a_failed_frame_fails_the_process_with_one_line(env: Any) -> None:
    proc, out = env("fail")
    log = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 1, log
    assert "GENART-AFTER-RENDER" in proc.stdout, log  # the render and the script went on
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("genart: stylize renders failed: frame 1: "), log
    assert "no-such-model" in last, last
    assert not (out / "render" / "genart").exists() or not any(
        (out / "render" / "genart").glob("*.png")
    )
    assert sorted(p.name for p in (out / "render").glob("*.png")) == FILES[:2]
    # A second failure in the same process: an output the model cannot take, said so.
    assert "frame 1 failed: the output format OPEN_EXR is scene-linear" in proc.stdout, log
    assert not (out / "exr" / "genart").exists()


def test_coherence_from_the_renders_own_passes(res: dict[str, Any]) -> None:
    """Exact flow by default: the render writes its passes through the compositor node
    (Blender's picture unchanged), every frame after the first is carried on from the one
    before (a warping error), within the render and from disk (a resumed render, an F12
    frame), and turning the toggle off removes the node."""
    assert res["off"]["compositor"] == []
    assert "genart passes" in res["compositor"], res["compositor"]
    assert res["passes"] == [f.replace(".png", ".exr") for f in FILES]
    assert res["picture_change"] == {f: 0 for f in FILES}, res["picture_change"]
    frames = res["frames"]
    assert {frames[f]["coherence"] for f in FILES} == {"exact_flow"}
    assert frames[FILES[0]]["warping_error"] is None
    assert all(frames[f]["warping_error"] >= 0 for f in FILES[1:]), frames
    assert "warping error" in res["first"]["status"], res["first"]["status"]
    # Resumed at frame 4: frame 4 is the job's first, built on frame 3 from disk.
    assert res["resume"]["frames"]["shot_0004.png"]["warping_error"] is not None
    f12 = res["f12"]
    assert f12["generated"] == 1 and f12["rewritten"] == ["shot_0003.png"], f12
    assert f12["frame"]["warping_error"] is not None and f12["frame"]["source"] == "Render Result"
    assert res["compositor_after_off"] == []
