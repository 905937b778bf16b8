"""Exact flow, warping, masks and the warping error (issue 9) on synthetic sequences whose
motion is known: a textured square moving over a textured static background, with the
Vector pass, object ids and depth Blender would write for it (DESIGN §4 conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from genart_core.temporal.flow import (
    backward_flow,
    forward_flow,
    sample,
    validity,
    warp,
    warping_error,
)

H, W, SIDE = 48, 64, 16


def texture(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def scene(frames: int, move: tuple[int, int], start: tuple[int, int] = (8, 10)) -> dict:
    """A square (id 2, depth 3) moving `move` = (mx, my) px per frame (x right, y down)
    over a background (id 1, depth 10). Returns frames, Vector passes, ids, depths."""
    bg, sq = texture(H, W, 0), texture(SIDE, SIDE, 1)
    mx, my = move
    out: dict[str, list[np.ndarray]] = {"frames": [], "vectors": [], "ids": [], "depths": []}
    for t in range(frames):
        x0, y0 = start[0] + mx * t, start[1] + my * t
        img, ids = bg.copy(), np.ones((H, W), np.int32)
        depth = np.full((H, W), 10.0, np.float32)
        vec = np.zeros((H, W, 4), np.float32)
        img[y0 : y0 + SIDE, x0 : x0 + SIDE] = sq
        ids[y0 : y0 + SIDE, x0 : x0 + SIDE] = 2
        depth[y0 : y0 + SIDE, x0 : x0 + SIDE] = 3.0
        # Blender: (X, Y) motion to the previous frame, (Z, W) to the next, y up.
        vec[y0 : y0 + SIDE, x0 : x0 + SIDE] = (-mx, my, -mx, my)
        for k, v in zip(out, (img, vec, ids, depth), strict=True):
            out[k].append(v)
    return out


def test_the_design_docs_cube_decodes_to_its_known_motion() -> None:
    # DESIGN §4: moving 10 px right and 5 px up reads X, Y, Z, W = -10, -5, -10, -5.
    vec = np.tile(np.array([-10, -5, -10, -5], np.float32), (2, 2, 1))
    assert backward_flow(vec)[0, 0].tolist() == [-10, 5]  # it was left and below
    assert forward_flow(vec)[0, 0].tolist() == [10, -5]  # it will be right and above


def test_warping_the_previous_frame_reproduces_the_moving_square() -> None:
    s = scene(2, (3, 2))
    b = backward_flow(s["vectors"][1])
    warped = warp(s["frames"][0], b)
    on_square = s["ids"][1] == 2
    assert np.abs(warped[on_square] - s["frames"][1][on_square]).max() < 1e-4


def test_bilinear_sampling_interpolates_between_pixels() -> None:
    img = np.array([[0.0, 10.0], [20.0, 30.0]], np.float32)
    assert sample(img, np.array([0.5]), np.array([0.5]))[0] == pytest.approx(15.0)
    assert sample(img, np.array([5.0]), np.array([-3.0]))[0] == pytest.approx(10.0)  # clamped


def test_masks_exclude_the_disoccluded_background() -> None:
    s = scene(2, (4, 0))
    v = validity(
        backward_flow(s["vectors"][1]),
        forward_flow(s["vectors"][0]),
        ids_t=s["ids"][1],
        ids_prev=s["ids"][0],
        depth_t=s["depths"][1],
        depth_prev=s["depths"][0],
    )
    # The 4-px strip the square uncovered on its left: background at t, square at t-1.
    uncovered = np.zeros((H, W), bool)
    uncovered[10 : 10 + SIDE, 8 : 8 + 4] = True
    assert not v.valid[uncovered].any()
    assert not v.consistent[uncovered].any() and not v.same_object[uncovered].any()
    assert not v.same_depth[uncovered].any()
    assert v.valid[~uncovered].all()  # everything else is matched
    assert v.share == pytest.approx(1 - uncovered.mean())


def test_each_check_catches_what_the_others_miss() -> None:
    s = scene(2, (4, 0))
    b, f = backward_flow(s["vectors"][1]), forward_flow(s["vectors"][0])
    ids_prev = s["ids"][0].copy()
    ids_prev[0:5, 0:5] = 7  # an id change the flow does not show (e.g. a swapped object)
    depth_prev = s["depths"][0].copy()
    depth_prev[40:44, 50:54] = 2.0  # a depth jump the flow does not show
    v = validity(b, f, ids_t=s["ids"][1], ids_prev=ids_prev, depth_t=s["depths"][1],
                 depth_prev=depth_prev)  # fmt: skip
    assert not v.valid[0:5, 0:5].any() and v.consistent[0:5, 0:5].all()
    assert not v.valid[40:44, 50:54].any() and v.same_object[40:44, 50:54].all()
    left = np.zeros((H, W, 2), np.float32)
    left[..., 0] = -30  # every point was 30 px to the left
    out = validity(left, np.zeros((H, W, 2), np.float32))
    assert not out.inside[:, :20].any() and out.inside[:, 40:].all()


def test_warping_error_is_zero_for_a_static_or_exactly_moving_scene() -> None:
    static = scene(4, (0, 0))
    assert warping_error(static["frames"], static["vectors"]).mean == 0.0
    moving = scene(4, (3, 1))
    e = warping_error(moving["frames"], moving["vectors"], ids=moving["ids"],
                      depths=moving["depths"])  # fmt: skip
    assert e.mean < 1e-3 and len(e.per_frame) == 3
    assert all(0.8 < s < 1.0 for s in e.valid_share)


def test_warping_error_grows_with_injected_flicker() -> None:
    s = scene(6, (2, 1))
    rng = np.random.default_rng(5)
    errors = []
    for amount in (0.0, 5.0, 20.0):
        flick = [
            np.clip(f + rng.normal(0, amount, f.shape), 0, 255).astype(np.uint8)
            for f in s["frames"]
        ]
        errors.append(warping_error(flick, s["vectors"], ids=s["ids"]).mean)
    assert errors[0] < 1e-3 < errors[1] < errors[2]
    # a global brightness flicker counts too
    bright = [np.clip(f.astype(int) + (12 if t % 2 else 0), 0, 255).astype(np.uint8)
              for t, f in enumerate(s["frames"])]  # fmt: skip
    assert warping_error(bright, s["vectors"]).mean > 10


def test_mismatched_lengths_are_refused() -> None:
    s = scene(3, (1, 0))
    with pytest.raises(ValueError, match="same length"):
        warping_error(s["frames"], s["vectors"][:2])


def test_edge_correlation_keeps_layout_and_ignores_colour() -> None:
    from genart_core.temporal.flow import edge_correlation

    s = scene(1, (0, 0))
    img = s["frames"][0]
    assert edge_correlation(img, img) == pytest.approx(1.0)
    recoloured = (255 - img) // 2  # same layout, other colours
    assert edge_correlation(img, recoloured) > 0.9
    other = texture(H, W, 9)
    assert abs(edge_correlation(img, other)) < 0.2
    assert edge_correlation(img, np.zeros_like(img)) == 0.0
    assert edge_correlation(img, recoloured, scale=4) > 0.9  # coarse edges too


def test_fresh_share_tells_new_content_from_smeared_history() -> None:
    from genart_core.temporal.flow import fresh_share

    s = scene(2, (4, 0))
    prev, vec = s["frames"][0], s["vectors"]
    smeared = warp(prev, backward_flow(vec[1])).astype(np.uint8)  # history everywhere
    ids = (s["ids"][0], s["ids"][1])
    assert fresh_share(smeared, prev, vec[1], vec[0], ids=ids) == 0.0
    assert fresh_share(s["frames"][1], prev, vec[1], vec[0], ids=ids) > 0.9  # the background
    static = scene(2, (0, 0))
    assert fresh_share(static["frames"][1], static["frames"][0], static["vectors"][1],
                       static["vectors"][0]) is None  # fmt: skip
    # Against the renders' own change: a half-contrast "style" of the true frames is fresh,
    # the smeared history is not, whatever the style's contrast.
    renders = (s["frames"][0], s["frames"][1])
    styled = [(f.astype(np.float32) * 0.5 + 60).astype(np.uint8) for f in s["frames"]]
    smeared_styled = warp(styled[0], backward_flow(vec[1])).astype(np.uint8)
    kw = {"ids": ids, "renders": renders}
    assert fresh_share(styled[1], styled[0], vec[1], vec[0], **kw) > 0.9
    assert fresh_share(smeared_styled, styled[0], vec[1], vec[0], **kw) < 0.05
    assert fresh_share(static["frames"][1], static["frames"][0], static["vectors"][1],
                       static["vectors"][0], renders=renders) is None  # fmt: skip
