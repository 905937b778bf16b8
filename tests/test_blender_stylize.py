"""Stylize animation in the `bpy` wheel against a real sidecar with a tiny SD model:
frames on disk with their recipes, the strip on the timeline, per-frame prompts and
keyframed strength, resuming only what is missing or changed, the MP4
(tests/blender/stylize_scenes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from sdtiny import build_tiny_sd
from test_blender_addon import build_addon, run_in_blender, scene_script

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = Path(__file__).parent / "blender" / "stylize_scenes.py"
FILES = [f"{i:04d}.png" for i in range(1, 7)]


@pytest.fixture(scope="module")
def res(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("stylize")
    sd = build_tiny_sd(tmp / "models" / "sd")
    sc = SidecarProcess(tmp / "state").start()
    try:
        out = tmp / "out"
        out.mkdir()
        body = f"OUT = {str(out)!r}\nSD = {str(sd)!r}\n" + scene_script(SCRIPT)
        env = {"GENART_CONNECTION_FILE": str(sc.connection_file)}
        proc = run_in_blender(tmp, build_addon.build(tmp / "zip"), body, extra_env=env, timeout=500)
        log = proc.stdout[-5000:] + proc.stderr[-3000:]
        assert proc.returncode == 0 and "GENART-STYLIZE-OK" in proc.stdout, log
        return json.loads((out / "results.json").read_text())
    finally:
        sc.stop()


def test_frames_recipes_and_the_strip(res: dict[str, Any]) -> None:
    first = res["first"]
    assert first["result"] == ["FINISHED"], first["error"]
    assert first["files"] == FILES and first["sent_frames"] == 6
    frames = res["frames"]
    assert [frames[f]["frame"] for f in FILES] == [1, 2, 3, 4, 5, 6]
    assert all(len(frames[f]["hash"]) == 64 for f in FILES)
    # One depth mapping for the whole sequence.
    assert len({tuple(frames[f]["near_far"]) for f in FILES}) == 1
    strips = res["strips"]
    assert len(strips) == 1 and strips[0]["start"] == 1 and strips[0]["n"] == 6
    assert strips[0]["end"] == 7 and strips[0]["dir"].startswith("//genart/anim")
    # In the review scene "Scene genart": the rendered scene keeps rendering its camera.
    assert res["rendered_scene_has_strips"] is False


def test_prompts_follow_the_schedule_and_strength_its_keys(res: dict[str, Any]) -> None:
    frames = res["frames"]
    prompts = [frames[f]["prompt"] for f in FILES]
    assert prompts == ["first prompt"] * 2 + ["scheduled prompt"] * 2 + ["marker prompt"] * 2
    strengths = [frames[f]["strength"] for f in FILES]
    assert strengths[0] == pytest.approx(0.5, abs=1e-3)
    assert strengths[-1] == pytest.approx(1.0, abs=1e-3)
    assert strengths == sorted(strengths) and len(set(strengths)) >= 4  # interpolated
    assert frames["0003.png"]["parameters"].startswith("scheduled prompt")


def test_rerunning_costs_only_what_is_missing_or_changed(res: dict[str, Any]) -> None:
    again = res["again"]
    assert again["result"] == ["FINISHED"] and again["sent_frames"] == 0
    assert again["rewritten"] == []
    resume = res["resume"]
    assert resume["sent_frames"] == 3 and resume["rewritten"] == FILES[3:], resume
    # Deleted frames 4-6: frame 4 is built on frame 3 from disk (previous_image/passes),
    # so it has a warping error like every frame after the first.
    errors = resume["errors"]
    assert errors["0001.png"] is None and all(errors[f] is not None for f in FILES[1:]), errors
    # Exact flow: moving the cube on frames 5-6 also changes frame 4's motion vectors
    # (towards frame 5), so 4, 5 and 6 are redone.
    moved = res["moved"]
    assert moved["sent_frames"] == 3 and moved["rewritten"] == FILES[3:], moved
    # Coherence off: another mode, everything once; then a change on frame 6 alone
    # redoes frame 6 alone (no vectors, no chain).
    assert res["off_first"]["sent_frames"] == 6
    off = res["off_moved"]
    assert off["sent_frames"] == 1 and off["rewritten"] == FILES[5:], off


def test_coherence_is_on_by_default_and_its_error_is_reported(res: dict[str, Any]) -> None:
    frames = res["frames"]
    assert {f["coherence"] for f in frames.values()} == {"exact_flow"}
    assert frames["0001.png"]["warping_error"] is None  # nothing before it
    assert all(frames[f]["warping_error"] >= 0 for f in FILES[1:])
    assert "warping error" in res["report"] and "over 5 frames" in res["report"], res["report"]


def test_mp4_and_bad_range(res: dict[str, Any]) -> None:
    mp4 = res["mp4"]
    assert mp4["result"] == ["FINISHED"], mp4["error"]
    assert mp4["file"] == ["anim.mp4"] and mp4["size"] > 1000
    assert mp4["sent_frames"] == 0  # nothing to regenerate
    bad = res["bad_range"]
    assert bad["result"] == ["CANCELLED"] and "fix frame_end" in bad["error"]


def test_a_farm_chunk_warms_up_and_shares_the_shots_depth_mapping(res: dict[str, Any]) -> None:
    """Frames 4-6 of 1-6 as a chunk: two warm-up frames stylized first and not written,
    frame 4 carried on from them (a warping error); without warm-up frame 4 starts afresh;
    after an earlier chunk wrote 1-3, frame 4 carries on from frame 3's file and nothing
    is warmed up. Every chunk uses the whole shot's near/far (DESIGN §9)."""
    chunk = res["chunk"]
    assert chunk["result"] == ["FINISHED"], chunk["error"]
    assert chunk["files"] == FILES[3:] and chunk["sent_frames"] == 5, chunk
    assert all(r["error"] is not None for r in chunk["recipes"].values()), chunk["recipes"]
    mappings = {
        tuple(r["near_far"])
        for name in ("chunk", "chunk0", "chunks_b")
        for r in res[name]["recipes"].values()
    }
    assert len(mappings) == 1, mappings  # chunk 1-3's and chunk 4-6's alike
    cold = res["chunk0"]
    assert cold["sent_frames"] == 3 and cold["recipes"]["0004.png"]["error"] is None, cold
    after = res["chunks_b"]
    assert after["sent_frames"] == 3 and after["rewritten"] == FILES[3:], after
    assert after["recipes"]["0004.png"]["error"] is not None, after
