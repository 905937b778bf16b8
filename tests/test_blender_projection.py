"""Texture from camera in the real `bpy` wheel: the add-on's `projection` module projects a
"generated" image onto scenes the test builds (tests/blender/projection_scenes.py, one
Blender process for the module), and second cameras' renders show where it landed.

The oracle is geometry, not the add-on: each witness pixel's world position (Position pass,
one Cycles sample, so it is the same ray as the mask AOV and the diffuse colour) is projected
into the capture and compared with the capture's depth there. A point clearly behind what
the capture saw, or facing away from it, must get mask 0 and keep its material; a point the
capture saw plainly (depth agrees over the texels around it, facing the camera) must get
mask 1 and the image's colour at that spot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_blender_addon import build_addon, run_in_blender

from genart_core.imaging.passes import read_channels, read_passes

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = Path(__file__).parent / "blender" / "projection_scenes.py"
ROOT = Path(__file__).resolve().parent.parent
MESHES = ROOT / "dev" / "assets"  # copies of ../shared/meshes (attribution in its README)
PYTHON45 = ROOT / ".venv-bpy45" / "bin" / "python"  # built by dev/env.sh


@pytest.fixture(scope="module", params=["5.0", "4.5"])
def scenes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The scenes' results, on the 5.0 wheel and on the 4.5 LTS one (the oldest supported)."""
    assert (MESHES / "teapot.obj").is_file(), f"the shared meshes are missing: {MESHES}"
    python = sys.executable if request.param == "5.0" else PYTHON45
    tmp = tmp_path_factory.mktemp(f"projection{request.param}")
    zip_path = build_addon.build(tmp / "zip")
    out = tmp / "out"
    head = f"OUT = {str(out)!r}\nMESHES = {str(MESHES)!r}\n"
    proc = run_in_blender(tmp, zip_path, head + SCRIPT.read_text(), python=python)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "GENART-PROJECTION-OK" in proc.stdout, log
    return json.loads((out / "results.json").read_text())


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def classify(scenes: dict[str, Any], witness: str, capture: str) -> dict[str, np.ndarray]:
    """Per witness pixel: which object, the mask, the diffuse colour, and what the capture
    saw there ('hidden', 'back', 'seen'; see the module)."""
    rec, cap = scenes[witness], scenes[capture]
    wp = read_passes(Path(rec["path"]))
    ch = read_channels(Path(rec["path"]))
    diffuse = next(n for n in ("Diffuse Color", "DiffCol") if f"ViewLayer.{n}.R" in ch)  # 5.0, 4.5
    dif = np.stack([ch[f"ViewLayer.{diffuse}.{a}"] for a in "RGB"], axis=-1)
    mask = ch["ViewLayer.genart_mask.X"]
    pos, nrm = wp.position.astype(np.float64), wp.normal.astype(np.float64)
    index = wp.object_index

    cp = read_passes(Path(cap["passes"]))
    depth = cp.depth.astype(np.float64)  # (H, W) top-down, +inf background
    h, w = depth.shape
    cam = np.array(cap["camera_matrix"]).reshape(4, 4)
    cam[:3, :3] /= np.linalg.norm(cam[:3, :3], axis=0, keepdims=True)
    proj = np.array(cap["projection"]).reshape(4, 4)
    flat = pos.reshape(-1, 3)
    camspace = np.c_[flat, np.ones(len(flat))] @ np.linalg.inv(cam).T
    clip = camspace @ proj.T
    d = -camspace[:, 2]
    ndc = clip[:, :2] / np.where(clip[:, 3:4] == 0, 1e-12, clip[:, 3:4])
    px = (ndc[:, 0] * 0.5 + 0.5) * w
    py = (0.5 - ndc[:, 1] * 0.5) * h  # top-down
    inside = (px > 2) & (px < w - 2) & (py > 2) & (py < h - 2) & (d > 0)
    ix = np.clip(px.astype(int), 1, w - 2)
    iy = np.clip(py.astype(int), 1, h - 2)
    around = np.stack(
        [depth[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1
    )  # (N, 9): every texel a lookup at this point can touch
    view = cam[:3, 3] - flat
    view /= np.linalg.norm(view, axis=1, keepdims=True)
    cos = (nrm.reshape(-1, 3) * view).sum(1)
    # How much depth one texel spans on this slope (capped where the grazing fade-out
    # takes over): the scale of "clearly different" and "plainly the same".
    texel = 2 / min(abs(proj[0, 0]) * w, abs(proj[1, 1]) * h) * d
    tan = np.sqrt(np.clip(1 - cos**2, 0, 1)) / np.clip(cos, 0.25, 1)
    slope = texel * tan
    off = np.abs(around - d[:, None])  # inf where the capture saw background
    behind = (off > 0.01 * d[:, None] + 3 * slope[:, None] + 0.02).all(axis=1)
    behind &= d > np.min(around, axis=1)
    ids_around = np.stack(
        [cp.object_index[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1
    )
    same = (off < 0.003 * d[:, None] + 1.8 * slope[:, None]).all(axis=1)
    obj = index.reshape(-1)
    on = obj > 0
    shape = index.shape
    return {
        "index": index,
        "mask": mask,
        "diffuse": dif,
        "cos": cos.reshape(shape),
        "hidden": (on & inside & behind & (cos > 0.2)).reshape(shape),
        "back": (on & (cos < -0.05)).reshape(shape),
        "seen": (on & inside & same & (ids_around > 0).all(axis=1) & (cos > 0.3)).reshape(shape),
        "position": pos,
        "pixel": np.stack([px, py], axis=1).reshape(*shape, 2),
        "capture_ids": {v: int(k) for k, v in cap["ids"].items()},
        "seen_id": np.where(inside, ids_around[:, 4], -1).reshape(shape),  # id the capture saw
    }


def expected_colour(image: list[Any], pixel: np.ndarray) -> np.ndarray:
    """The generated image (linear) at capture pixel coordinates (N, 2), bilinear."""
    img = srgb_to_linear(np.array(image))  # (H, W, 3) top-down
    h, w = img.shape[:2]
    x = np.clip(pixel[:, 0] - 0.5, 0, w - 1.001)
    y = np.clip(pixel[:, 1] - 0.5, 0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def gradient_error(c: dict[str, np.ndarray], sel: np.ndarray, image: list[Any]) -> float:
    """How far the shown colours are from the generated image's at the projected spots: the
    red share of red + blue, which the gradient sets by the capture's x (lighting and the
    BSDF scale both channels alike). Exact per-point projection: well under 0.01."""
    got = c["diffuse"][sel].astype(np.float64)
    want = expected_colour(image, c["pixel"][sel])
    assert (got[:, 1] < 1e-3).all() and (c["mask"][sel] > 0.999).all()
    ratio = got[:, 0] / (got[:, 0] + got[:, 2])
    return float(np.abs(ratio - want[:, 0] / (want[:, 0] + want[:, 2])).max())


@pytest.mark.parametrize("witness", ["w1", "w2"])
def test_hidden_and_back_facing_points_get_no_projection(
    scenes: dict[str, Any], witness: str
) -> None:
    c = classify(scenes, witness, "capture1")
    ids = scenes[witness]["ids"]
    for cls in ("hidden", "back"):
        sel = c[cls]
        assert (c["mask"][sel] < 1e-6).all(), (cls, c["mask"][sel].max(), sel.sum())
    seen = c["seen"]
    if witness == "w2":  # from behind: the backs
        assert c["back"][c["index"] == ids["Ball"]].sum() > 100
        assert c["back"][c["index"] == ids["Target"]].sum() > 100
    else:
        assert seen.sum() > 300 and c["hidden"].sum() > 100
    bad = seen & (c["mask"] < 0.999)
    assert bad.sum() <= 0.01 * seen.sum(), (bad.sum(), seen.sum(), c["mask"][bad][:10])


def test_a_box_behind_another_gets_no_pixels_from_it(scenes: dict[str, Any]) -> None:
    c = classify(scenes, "w1", "capture1")
    ids = scenes["w1"]["ids"]
    target = c["index"] == ids["Target"]
    hidden = c["hidden"] & target
    assert hidden.sum() > 40, hidden.sum()  # the occluder's shadow, seen from W1
    np.testing.assert_allclose(
        c["diffuse"][hidden], [[0.8, 0.0, 0.0]] * int(hidden.sum()), atol=1e-4
    )
    # No green (the occluder's colour in the image) anywhere on the box, masked or not.
    assert c["diffuse"][target][:, 1].max() < 1e-3, c["diffuse"][target][:, 1].max()
    # Where it was seen it shows the image: the red-blue gradient at the projected spot.
    seen = c["seen"] & target
    assert seen.sum() > 100
    assert gradient_error(c, seen, scenes["generated1_pixels"]) < 0.01


def test_self_occlusion_front_quad_hides_the_back_quad(scenes: dict[str, Any]) -> None:
    # The shelf's back quad faces the capture camera, so only the depth test can tell
    # that its own front quad hides part of it.
    c = classify(scenes, "w1", "capture1")
    shelf = c["index"] == scenes["w1"]["ids"]["Shelf"]
    hidden = c["hidden"] & shelf
    assert hidden.sum() > 20, hidden.sum()
    assert (c["mask"][hidden] == 0).all()
    np.testing.assert_allclose(
        c["diffuse"][hidden], [[0.1, 0.1, 0.8]] * int(hidden.sum()), atol=1e-4
    )
    assert (c["mask"][c["seen"] & shelf] > 0.999).sum() > 30


def test_sphere_front_is_projected_and_back_half_is_not(scenes: dict[str, Any]) -> None:
    for witness in ("w1", "w2"):
        c = classify(scenes, witness, "capture1")
        ball = c["index"] == scenes[witness]["ids"]["Ball"]
        assert (c["mask"][ball & (c["cos"] < 0)] < 1e-6).all()
        np.testing.assert_allclose(
            c["diffuse"][ball & c["back"]],
            [[0.5, 0.5, 0.5]] * int((ball & c["back"]).sum()),
            atol=1e-4,
        )
    c = classify(scenes, "w1", "capture1")
    ball = (c["index"] == scenes["w1"]["ids"]["Ball"]) & c["seen"]
    assert ball.sum() > 30
    assert gradient_error(c, ball, scenes["generated1_pixels"]) < 0.01


def test_from_the_capture_camera_everything_seen_shows_the_image(scenes: dict[str, Any]) -> None:
    # Rendered from the capture's own camera, the projection covers the objects but for a
    # one-texel band at silhouettes (the four-texel test) and faces seen edge-on.
    c = classify(scenes, "w0", "capture2")
    ids = scenes["w0"]["ids"]
    for name, share in (("teapot", 0.75), ("spot", 0.6)):
        on = (c["index"] == ids[name]) & (c["cos"] > 0.3)
        covered = (c["mask"][on] > 0.999).mean()
        assert covered > share, (name, covered)
    shown = (c["index"] > 0) & (c["mask"] > 0.999)
    assert gradient_error(c, shown, scenes["generated2_pixels"]) < 0.01


@pytest.mark.parametrize("witness", ["w3", "w4", "w5"])
def test_teapot_and_spot(scenes: dict[str, Any], witness: str) -> None:
    c = classify(scenes, witness, "capture2")
    ids = scenes[witness]["ids"]
    pot = c["index"] == ids["teapot"]
    for cls in ("hidden", "back"):
        sel = c[cls]
        assert (c["mask"][sel] < 1e-6).all(), (cls, c["mask"][sel].max(), sel.sum())
    # Self-occlusion: teapot points the capture saw the teapot in front of (handle, spout,
    # rim, the body's far side).
    self_hidden = pot & c["hidden"] & (c["seen_id"] == c["capture_ids"]["teapot"])
    handle = pot & (c["position"][..., 0] < -2.1)  # the handle sticks out at -x
    body = pot & (np.abs(c["position"][..., 0]) < 1.9)
    print(
        witness,
        {k: int(c[k].sum()) for k in ("hidden", "back", "seen")},
        int(self_hidden.sum()),
        int((handle & (c["hidden"] | c["back"])).sum()),
        int((body & self_hidden).sum()),
    )
    grey = pot & (c["hidden"] | c["back"])
    np.testing.assert_allclose(c["diffuse"][grey], [[0.8, 0.8, 0.8]] * int(grey.sum()), atol=1e-4)
    seen = c["seen"]
    bad = seen & (c["mask"] < 0.999)
    assert bad.sum() <= 0.01 * seen.sum(), (bad.sum(), seen.sum())


def test_new_data_blocks_and_their_links(scenes: dict[str, Any]) -> None:
    r = scenes["result1"]
    assert r["projector"] == "genart projector one" and r["collection"] == "genart"
    assert r["objects"] == ["Target", "Occluder", "Ball", "Shelf", "Floor", "Borrowed"]
    assert sorted(r["materials"]) == [
        "RemoteMat (genart one)",
        "UserFloor (genart one)",
        "UserGrey (genart one)",
        "UserRed (genart one)",
        "UserShelf (genart one)",
        "genart default (one)",
    ]
    assert r["uv_maps"] == ["Cube", "Cube.001", "Sphere", "Shelf", "Plane"]
    assert r["added_slots"] == ["Cube.001"]
    assert r["slots"][0] == ["Target", 0, "DATA", None, "UserRed (genart one)"]
    notes = "\n".join(r["notes"])
    assert "Label is a font, not a mesh" in notes
    assert "Remote is linked from the library" in notes and "Make Local" in notes
    assert "Ball: its modifiers change the topology" in notes
    assert "Borrowed: its mesh RemoteMesh is linked from a library, so it gets no UV" in notes
    # A local object on a linked mesh: a local copy of the linked material, no UV map.
    assert scenes["borrowed"] == [["OBJECT", "RemoteMat (genart one)"], []]
    p = scenes["projector"]
    assert p["type"] == "CAMERA" and p["collections"] == ["genart"] and p["hide_render"]
    assert not p["camera_is_scene"]
    np.testing.assert_allclose(p["matrix"], scenes["capture1"]["camera_matrix"], atol=1e-5)
    red = scenes["copy_red"]
    assert red["mix"] == "ShaderNodeMixShader"
    assert red["fac_from"] == ["ShaderNodeGroup", "Mask"]
    assert red["original"] == "ShaderNodeBsdfDiffuse"
    assert red["projected"] == "ShaderNodeBsdfPrincipled" and red["base_color_from"] == "Color"
    assert red["group"] == "genart projection one" and red["aov"] == ["genart_mask", "Mask"]
    assert red["texcoord_object"] == "genart projector one"
    assert red["images"] == ["depth1:Closest:CLIP"] * 4 + ["generated1:Linear:EXTEND"]
    assert scenes["copy_default"]["original"] == "ShaderNodeBsdfDiffuse"
    assert scenes["depth1"] == [True, "Non-Color", 0]  # Cycles wrote 1e10 there, made inf
    assert scenes["skipped1"] == ["Label", "Remote"]
    # The slots point at the copies, linked to the object.
    state = scenes["slot_state"]
    assert state["Target"] == [["OBJECT", "UserRed (genart one)"]]
    assert state["Occluder"] == [["OBJECT", "genart default (one)"]]


def test_uv_map_projects_the_evaluated_mesh(scenes: dict[str, Any]) -> None:
    err, undeformed = scenes["uv_target"]
    assert err < 1e-5 and undeformed > 0.01, (err, undeformed)  # the Displace is applied
    err, _ = scenes["uv_teapot"]
    assert err < 1e-5
    assert scenes["ball_uv"] == ["genart projection"]
    assert scenes["teapot_uv"] == ["genart projection"]


def test_a_coarse_floor_shows_the_image_exactly(scenes: dict[str, Any]) -> None:
    # The floor is one quad seen at a low angle: a per-corner UV map interpolated across
    # its two triangles would land pixels away from the projection; the material projects
    # per shading point, so what renders matches the image where the capture saw it.
    assert scenes["uv_drift_px"] > 10, scenes["uv_drift_px"]
    c = classify(scenes, "w1", "capture1")
    floor = (c["index"] == scenes["w1"]["ids"]["Floor"]) & c["seen"]
    assert floor.sum() > 200, floor.sum()
    assert gradient_error(c, floor, scenes["generated1_pixels"]) < 0.01


def test_projecting_again_layers_over_the_first(scenes: dict[str, Any]) -> None:
    layered = scenes["layered"]
    assert layered["slots"] == [
        ["teapot", 0, "OBJECT", "Porcelain (genart pot)", "Porcelain (genart pot) (genart pot2)"]
    ]
    assert layered["aovs"] == ["genart_mask"]  # the newest mask only
    assert layered["groups"] == ["genart projection pot", "genart projection pot2"]
    assert layered["uv_note"] == [
        "teapot: its UV map 'genart projection' was rewritten by this projection"
    ]


@pytest.mark.parametrize("key", ["user1", "user2"])
def test_user_data_is_untouched(scenes: dict[str, Any], key: str) -> None:
    before, after = scenes[key]
    assert after["materials"] == before["materials"]
    assert after["images"] == before["images"]
    result = scenes["result1" if key == "user1" else "result2"]
    added, uv_maps = result["added_slots"], result["uv_maps"]
    for name, mesh in before["meshes"].items():
        now = dict(after["meshes"][name])
        if name in added:  # it had no slot: an empty one was added
            assert (mesh["materials"], now["materials"]) == ([], [None])
            now["materials"] = []
        if (
            not mesh["uvs"] and name in uv_maps
        ):  # it had no UVs: ours is the only map, so active and rendered
            assert now["active_uv"] == now["render_uv"] == "genart projection"
            now["active_uv"] = now["render_uv"] = None
        assert now == mesh, name
    if key == "user2":
        assert before["meshes"]["spot"]["uvs"], "spot.obj has UVs"
        assert before["meshes"]["spot"]["render_uv"] is not None


def test_bad_inputs_say_what_to_change(scenes: dict[str, Any]) -> None:
    e = scenes["errors"]
    assert e["objects"][0] == "objects" and "nothing to project onto" in e["objects"][1]
    assert e["not_float"][0] == "depth_image" and "Non-Color" in e["not_float"][1]
    assert e["aspect"][0] == "image" and "aspect" in e["aspect"][1]
    assert not any("(genart bad)" in m or "(genart none)" in m for m in scenes["after_errors"])
