"""Capture in the real `bpy` wheel: the add-on's `capture` module renders scenes the test
builds (tests/blender/capture_scenes.py, one Blender process for the module), and the
passes it wrote are decoded by genart_core and checked against the known geometry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_blender_addon import build_addon, run_in_blender

from genart_core.imaging.control import normals_to_bae
from genart_core.imaging.passes import (
    Passes,
    camera_space_normals,
    object_ids,
    read_passes,
    write_passes,
)

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = Path(__file__).parent / "blender" / "capture_scenes.py"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("capture")
    zip_path = build_addon.build(tmp / "zip")
    out = tmp / "out"
    proc = run_in_blender(tmp, zip_path, f"OUT = {str(out)!r}\n" + SCRIPT.read_text())
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "GENART-CAPTURE-OK" in proc.stdout, log
    return json.loads((out / "results.json").read_text())


def passes(rec: dict[str, Any]) -> Passes:
    return read_passes(Path(rec["passes"]))


def rays(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space origin and direction of the ray through each pixel centre (H, W, 3)."""
    w, h = rec["size"]
    inv = np.linalg.inv(np.array(rec["projection"]).reshape(4, 4))
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    ys = 1 - (np.arange(h) + 0.5) / h * 2  # rows top to bottom
    gx, gy = np.meshgrid(xs, ys)
    ends = []
    for z in (-1.0, 1.0):
        ndc = np.stack([gx, gy, np.full_like(gx, z), np.ones_like(gx)], axis=2)
        p = ndc @ inv.T
        ends.append(p[..., :3] / p[..., 3:4])
    return ends[0], ends[1] - ends[0]


def test_plane_depth_is_planar_z_and_rows_run_top_down(scenes: dict[str, Any]) -> None:
    rec = scenes["plane"]
    p = passes(rec)
    assert p.size == (64, 48) and set(p.present()) >= {"depth", "normal", "vector", "object_index"}
    ids = {v: int(k) for k, v in rec["ids"].items()}
    plane = p.object_index == ids["Plane"]
    cube = p.object_index == ids["Cube"]
    assert plane.sum() > 0.8 * plane.size
    # Planar Z: 10 at the centre and the corners alike (a distance would grow outwards).
    np.testing.assert_allclose(p.depth[plane], 10.0, atol=1e-3)
    # The cube (top face at z = 2.5, so 7.5 from the camera) sits top-left in the frame.
    rows, cols = np.nonzero(cube)
    assert rows.mean() < 24 and cols.mean() < 32, (rows.mean(), cols.mean())
    assert p.depth[cube].min() == pytest.approx(7.5, abs=1e-3)  # its top face
    # Near/far come from the objects' bounds: the cube's top and the plane.
    assert rec["near"] == pytest.approx(7.5, abs=1e-4)
    assert rec["far"] == pytest.approx(10.0, abs=1e-3)
    assert 0 < rec["timings"]["render"] < rec["timings"]["total"]
    # The add-on reads the same depth itself (Blender's OpenImageIO) to mask projections.
    shape, centre, nearest = scenes["plane_depth_in_blender"]
    assert shape == [48, 64] and centre == float(p.depth[24, 32]) and nearest == pytest.approx(7.5)
    inner = plane.copy()  # away from the cube's edge, where samples mix both normals
    for axis in (0, 1):
        for shift in (1, -1):
            inner &= np.roll(plane, shift, axis=axis)
    np.testing.assert_allclose(p.normal[inner], [[0.0, 0.0, 1.0]] * int(inner.sum()), atol=1e-4)


def test_sphere_normals_match_the_geometry_in_camera_space(scenes: dict[str, Any]) -> None:
    rec = scenes["sphere"]
    p = passes(rec)
    cam = np.array(rec["camera_matrix"]).reshape(4, 4)
    centre = np.linalg.inv(cam) @ np.r_[scenes["sphere_centre"], 1.0]
    radius = scenes["sphere_radius"]
    origin, direction = rays(rec)
    # Ray-sphere intersection in camera space: |o + t d - c|^2 = r^2.
    oc = origin - centre[:3]
    a = (direction**2).sum(2)
    b = 2 * (oc * direction).sum(2)
    disc = b**2 - 4 * a * ((oc**2).sum(2) - radius**2)
    hit = disc > 0
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    point = origin + t[..., None] * direction
    expected = (point - centre[:3]) / radius
    # Pixels well inside the silhouette (edge pixels mix sphere and background).
    inner = hit & (disc > 0.15 * disc.max()) & (p.object_index == 1)
    assert inner.sum() > 400
    got = camera_space_normals(p.normal, rec["camera_rotation"])
    cos = (got[inner] * expected[inner]).sum(1) / np.linalg.norm(got[inner], axis=1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 1.0 and angle.max() < 4.0, (np.median(angle), angle.max())
    # Planar depth too: the hit point's -z.
    np.testing.assert_allclose(p.depth[inner], -point[inner][:, 2], rtol=2e-3)
    # And NormalBAE from the world normals: the sphere's left half is red > 0.5.
    bae = normals_to_bae(p.normal, np.array(rec["camera_rotation"]))
    left = inner & (expected[..., 0] < -0.3)
    assert (bae[left][:, 0] > 0.6).all()
    assert not np.isfinite(p.depth[~hit & (disc < -0.1 * disc.max())]).any()  # background


def test_every_object_gets_a_unique_id_and_the_user_settings_come_back(
    scenes: dict[str, Any],
) -> None:
    rec = scenes["ids"]
    p = passes(rec)
    assert rec["ids"] == {"1": "Box0", "2": "Box1", "3": "Box2"}  # Hidden is not rendered
    assert object_ids(p) == [1, 2, 3]
    for i, name in rec["ids"].items():  # each id is where its box is: x = -2, 0, 2
        cols = np.nonzero(p.object_index == int(i))[1]
        expected = {"Box0": 0, "Box1": 1, "Box2": 2}[name]
        assert cols.mean() / p.size[0] == pytest.approx((expected + 0.5) / 3, abs=0.12)
    # 200×100 at 50 %: the capture used the effective size and frame 3.
    assert rec["size"] == [100, 50] and rec["frame"] == 3
    before, after = scenes["ids_before"], scenes["ids_after"]
    assert after == before
    assert before["pass_index"]["Box2"] == 7 and before["frame"] == 5
    assert before["format"][1] == "JPEG" and before["render"]["use_motion_blur"] is True


def test_a_failed_capture_still_restores_everything(scenes: dict[str, Any]) -> None:
    assert "did not write" in scenes["failure"]
    assert scenes["fail_after"] == scenes["ids_before"]
    assert scenes["fail_files"] == []  # no half-written files left behind


def test_colour_is_display_referred(scenes: dict[str, Any]) -> None:
    std, agx = scenes["colour_Standard"], scenes["colour_AgX"]
    assert (std["view_transform"], agx["view_transform"]) == ("Standard", "AgX")
    png = np.asarray(Image.open(std["color"]).convert("RGB"), dtype=np.float64) / 255
    linear = passes(std).combined[..., :3].astype(np.float64)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert np.abs(png - srgb).max() < 3 / 255  # Standard = the sRGB curve on scene-linear
    agx_png = np.asarray(Image.open(agx["color"]).convert("RGB"), dtype=np.float64) / 255
    assert np.abs(agx_png - png).mean() > 0.03  # AgX's look is what the PNG carries


def test_workbench_colour_with_cycles_passes(scenes: dict[str, Any]) -> None:
    rec = scenes["workbench"]
    assert rec["render_engine"] == "BLENDER_WORKBENCH" and rec["passes_engine"] == "CYCLES"
    assert "Workbench has no" in rec["notes"][0]
    p = passes(rec)
    assert set(p.present()) >= {"depth", "normal", "vector", "object_index"}
    assert object_ids(p) == [1]
    assert scenes["workbench_after"] == scenes["workbench_before"]
    assert Image.open(rec["color"]).size == (64, 48)


@pytest.mark.parametrize("kind", ["persp", "ortho"])
def test_viewport_view_reproduces_the_camera(scenes: dict[str, Any], kind: str) -> None:
    cam, view = scenes[f"cam_{kind}"], scenes[f"view_{kind}"]
    np.testing.assert_allclose(view["projection"], cam["projection"], atol=1e-5)
    np.testing.assert_allclose(view["camera_matrix"], cam["camera_matrix"], atol=1e-5)
    assert (view["near"], view["far"]) == pytest.approx((cam["near"], cam["far"]), rel=1e-5)
    a, b = passes(cam), passes(view)
    np.testing.assert_allclose(b.depth, a.depth, rtol=1e-4)
    state = scenes[f"view_{kind}_state"]
    assert state["objects"] == sorted(["Camera", "Cube", "Plane"])  # temporary camera gone
    assert state["camera"] == "Camera"


def test_the_3d_viewports_view_is_captured_as_the_artist_sees_it(scenes: dict[str, Any]) -> None:
    vp, rec = scenes["viewport"], scenes["viewport_capture"]
    (rw, rh), (w, h) = vp["region"], vp["spec"]
    assert max(w, h) == 96 and abs(w / h - rw / rh) < 0.02  # scaled, same aspect
    view = np.array(vp["view_matrix"]).reshape(4, 4)
    np.testing.assert_allclose(
        np.array(rec["camera_matrix"]).reshape(4, 4) @ view, np.eye(4), atol=1e-5
    )
    # Same field of view as the viewport (its clip range is the viewport's too).
    np.testing.assert_allclose(
        np.array(rec["projection"]).reshape(4, 4)[:2, :3],
        np.array(vp["window_matrix"]).reshape(4, 4)[:2, :3],
        rtol=0.02,
    )
    assert rec["size"] == [w, h] and object_ids(passes(rec)) == [1]  # the cube is in view
    assert vp["through_camera"] is True


def test_near_is_where_the_ground_enters_the_view(scenes: dict[str, Any]) -> None:
    # A level camera 2 up, 36 mm sensor, 50 mm lens, square: the ground enters the frame
    # at 2 / tan(half the field of view) = 2 / (18 / 50), not at the clip start.
    rec = scenes["ground"]
    assert rec["near"] == pytest.approx(2 / (18 / 50), rel=1e-4)
    assert rec["far"] == pytest.approx(110.0, rel=1e-4)  # the plane's far edge
    p = passes(rec)
    ground = np.isfinite(p.depth)
    assert p.depth[ground].min() >= rec["near"] - 1e-3
    assert not ground[:30].any()  # the sky above the horizon


def test_near_far_one_pass_agrees_with_the_exact_per_box_path(scenes: dict[str, Any]) -> None:
    fast, slow, in_view = scenes["near_far_agree"]
    assert in_view > 20  # enough boxes in (and crossing) the view to mean something
    assert fast[0] == pytest.approx(max(slow[0], 0.1), rel=1e-9)
    assert fast[1] == pytest.approx(min(slow[1], 1000.0), rel=1e-9)


def test_bad_captures_say_what_to_change(scenes: dict[str, Any]) -> None:
    errors = scenes["errors"]
    assert errors["camera"][0] == "camera" and "no active camera" in errors["camera"][1]
    assert errors["width"][0] == "width" and "8..8192" in errors["width"][1]
    assert errors["passes"][0] == "passes" and "mist" in errors["passes"][1]


def test_passes_read_single_and_multi_part_files(tmp_path: Path) -> None:
    depth = np.full((6, 8), 4.0, dtype=np.float32)
    depth[0, 0] = 1e10  # Cycles' background Z
    ids = np.zeros((6, 8), dtype=np.float32)
    ids[2:4, 2:4] = 3
    path = tmp_path / "p.exr"
    write_passes(path, {"depth": depth, "object_index": ids, "normal": np.ones((6, 8, 3))})
    p = read_passes(path.read_bytes())
    assert p.layer == "ViewLayer" and p.size == (8, 6)
    assert np.isinf(p.depth[0, 0]) and p.depth[1, 1] == 4.0
    assert p.object_index.dtype == np.int32 and object_ids(p) == [3]
    assert p.vector is None and p.normal.shape == (6, 8, 3)

    import OpenEXR

    single = tmp_path / "single.exr"
    chans = {"RL.Depth.Z": depth, "Other.Depth.Z": depth}
    with OpenEXR.File({"compression": OpenEXR.NO_COMPRESSION}, chans) as f:
        f.write(str(single))
    from genart_core.protocol.errors import InvalidParams

    with pytest.raises(InvalidParams) as exc:
        read_passes(single)
    assert exc.value.field == "params.view_layer" and exc.value.allowed == ["Other", "RL"]
    assert np.isinf(read_passes(single, layer="RL").depth[0, 0])
    with pytest.raises(InvalidParams) as exc:
        read_passes(b"not an exr")
    assert exc.value.field == "inputs.passes"


def test_passes_read_a_file_output_nodes_layout(tmp_path: Path) -> None:
    """Stylize renders' passes come from a compositor File Output node: no view layer,
    channels named by socket type (`Depth.V`, `Vector.R`..., measured in the 5.0 wheel)."""
    import OpenEXR

    rng = np.random.default_rng(0)
    vector = rng.normal(size=(6, 8, 4)).astype(np.float32)
    depth = np.full((6, 8), 3.0, np.float32)
    depth[5, 7] = 1e10
    chans = {"Depth.V": depth, "Object Index.V": np.full((6, 8), 2.0, np.float32)}
    chans |= {f"Vector.{c}": np.ascontiguousarray(vector[..., i]) for i, c in enumerate("RGBA")}
    path = tmp_path / "fo.exr"
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, chans) as f:
        f.write(str(path))
    p = read_passes(path)
    assert p.layer == "" and p.present() == ["depth", "vector", "object_index"]
    assert np.array_equal(p.vector, vector) and np.isinf(p.depth[5, 7]) and p.depth[0, 0] == 3.0
    assert object_ids(p) == [2]
