"""The generating operators end to end in the `bpy` wheel: Texture from camera, Tileable,
Background, Re-generate, undo, cancel, bad values and a sidecar that is down, against a
real sidecar running tiny Stable Diffusion models (tests/blender/operator_scenes.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from sdtiny import build_tiny_controlnet, build_tiny_sd
from test_blender_addon import build_addon, run_in_blender, scene_script

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = Path(__file__).parent / "blender" / "operator_scenes.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("operators")
    sd = build_tiny_sd(tmp / "models" / "sd")
    cn = build_tiny_controlnet(sd, tmp / "models" / "cn")
    sc = SidecarProcess(tmp / "state").start()
    try:
        out = tmp / "out"
        out.mkdir()
        body = (
            f"OUT = {str(out)!r}\nSD = {str(sd)!r}\nCN = {str(cn)!r}\n"
            f"MISSING = {str(tmp / 'missing' / 'connection.json')!r}\n" + scene_script(SCRIPT)
        )
        env = {"GENART_CONNECTION_FILE": str(sc.connection_file)}
        proc = run_in_blender(tmp, build_addon.build(tmp / "zip"), body, extra_env=env, timeout=400)
        log = proc.stdout[-5000:] + proc.stderr[-3000:]
        assert proc.returncode == 0 and "GENART-OPERATORS-OK" in proc.stdout, log
        results = json.loads((out / "results.json").read_text())
        results["_log"] = proc.stdout
        return results
    finally:
        sc.stop()


def test_texture_from_camera_makes_image_uv_map_and_material(run: dict[str, Any]) -> None:
    tex = run["texture"]
    assert tex["result"][0] == ["FINISHED"], tex["result"]
    after = tex["after"]
    for ob in ("Ball", "Ground"):
        assert "genart projection" in after["uv"][ob], after["uv"]
        assert all(m and m != f"User {ob}" for m in after["slots"][ob]), after["slots"]
    image = tex["image"]
    assert image["size"] == [64, 40] or image["size"][0] == 64, image  # the camera's aspect
    assert image["colorspace"] == "sRGB" and not image["packed"]
    assert image["filepath"].startswith("//genart/"), image["filepath"]
    recipe = image["recipe"]
    assert recipe["action"] == "texture_from_camera" and recipe["engine"] == "sd"
    assert recipe["params"]["prompt"] == "red brick wall, weathered"
    assert recipe["params"]["seed"] == 1234 and recipe["options"]["size"] == 64
    assert 0 < recipe["near"] < recipe["far"]
    # The PNG on disk carries the recipe as Automatic1111's "parameters".
    text = tex["png_text"]["parameters"]
    assert text.startswith("red brick wall, weathered\n") and "Seed: 1234" in text, text
    # The user's data is untouched: UVs, materials (their nodes), World.
    assert tex["ball_uv_same"] is True
    assert tex["user_materials_same"] is True


def test_undo_removes_the_result(run: dict[str, Any]) -> None:
    tex = run["texture"]
    after_undo = tex["after_undo"]
    assert after_undo["slots"] == {"Ball": ["User Ball"], "Ground": ["User Ground"]}
    assert all("genart projection" not in uvs for uvs in after_undo["uv"].values())
    assert not any("from camera" in name for name in after_undo["images"]), after_undo["images"]


def test_regenerate_reruns_the_recipe(run: dict[str, Any]) -> None:
    regen = run["regenerate"]
    assert regen["result"][0] == ["FINISHED"], regen["result"]
    assert len(regen["images"]) >= 2 and regen["same_pixels"] is True


def test_tileable_and_backgrounds(run: dict[str, Any]) -> None:
    assert run["tileable"]["result"][0] == ["FINISHED"], run["tileable"]["result"]
    assert all("tileable" in (m or "") for m in run["tileable"]["slots"]["Ball"])
    world = run["world"]
    assert world["result"][0] == ["FINISHED"], world["result"]
    assert world["scene_world"] != world["before"] and world["user_world_kept"] is True
    backdrop = run["backdrop"]
    assert backdrop["result"][0] == ["FINISHED"], backdrop["result"]
    assert any("backdrop" in name for name in backdrop["objects"]), backdrop["objects"]
    assert len(run["saved_files"]) >= 5, run["saved_files"]


def test_cancel_leaves_the_scene_unchanged(run: dict[str, Any]) -> None:
    cancel = run["cancel"]
    assert cancel["result"][0] == ["CANCELLED"] and cancel["unchanged"] is True, cancel


def test_errors_name_the_field_and_change_nothing(run: dict[str, Any]) -> None:
    bad = run["bad"]
    assert bad["result"][0] == ["CANCELLED"] and bad["unchanged"] is True
    assert "no-such-controlnet" in bad["result"][1], bad["result"][1]
    uncontrolled = run["uncontrolled"]
    assert uncontrolled["result"][0] == ["FINISHED"], uncontrolled
    assert any("no depth or normal ControlNet" in w for w in uncontrolled["warnings"]), uncontrolled
    assert "Traceback" not in bad["result"][1]
    down = run["down"]
    assert down["result"][0] == ["CANCELLED"] and down["unchanged"] is True
    assert "not ready" in down["result"][1] and "Preferences" in down["result"][1]
    assert down["result"][2] < 20, f"took {down['result'][2]:.1f} s"


def test_headless_progress_lines(run: dict[str, Any]) -> None:
    lines = [x for x in run["_log"].splitlines() if x.startswith("genart: texture from camera:")]
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False)), lines  # no repeats
    assert any(re.search(r"step \d/2", x) for x in lines) and any(
        x.endswith("done (100%)") for x in lines
    ), lines
