"""Exact optical flow from Blender's Vector pass, warping, validity masks and the warping
error of a sequence (issue 9; DESIGN §4-5).

Conventions: images and passes are (H, W, ...) arrays with rows top to bottom (as
`imaging.passes.read_passes` returns them); a flow is (H, W, 2) float32 of (dx, dy) in
pixels, x right, y down. Blender's Vector pass of frame t holds, per pixel, the motion to
the previous frame in (X, Y) and to the next frame in (Z, W), with y up. So

    backward_t(p) = (X, −Y): where p's surface point was at t−1 is p + backward_t(p);
    forward_t(p) = (−Z, W): where it will be at t+1 is p + forward_t(p).

Checked in Blender (DESIGN §4): a cube moving 10 px right and 5 px up per frame reads
X, Y, Z, W = −10, −5, −10, −5 on its pixels: backward (−10, +5), forward (+10, −5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def backward_flow(vector: np.ndarray) -> np.ndarray:
    """(H, W, 2): the offset from each pixel of frame t to its point in frame t−1."""
    return np.stack([vector[..., 0], -vector[..., 1]], axis=-1).astype(np.float32)


def forward_flow(vector: np.ndarray) -> np.ndarray:
    """(H, W, 2): the offset from each pixel of frame t to its point in frame t+1."""
    return np.stack([-vector[..., 2], vector[..., 3]], axis=-1).astype(np.float32)


def sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (H, W[, C]) at float pixel positions (pixel centres at
    integers), clamped at the borders."""
    h, w = image.shape[:2]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros_like(x, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(y, np.int64)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    img = image.astype(np.float32)
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def nearest(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nearest-pixel samples (for ids), clamped at the borders."""
    h, w = image.shape[:2]
    xi = np.clip(np.rint(x).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(y).astype(np.int64), 0, h - 1)
    return image[yi, xi]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x, y


def warp(previous: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Frame t−1's `previous` (H, W[, C]) moved to frame t with frame t's backward flow."""
    x, y = _grid(*backward.shape[:2])
    return sample(previous, x + backward[..., 0], y + backward[..., 1])


@dataclass(frozen=True)
class Validity:
    """Which pixels of frame t have a trustworthy match in frame t−1, and why not."""

    valid: np.ndarray  # (H, W) bool: all checks pass
    inside: np.ndarray  # the matched point lies inside frame t−1
    consistent: np.ndarray  # forward-backward consistency
    same_object: np.ndarray  # same object index at both ends (True without ids)
    same_depth: np.ndarray  # depths agree (True without depths)

    @property
    def share(self) -> float:
        return float(self.valid.mean())


def validity(
    backward_t: np.ndarray,
    forward_prev: np.ndarray,
    *,
    ids_t: np.ndarray | None = None,
    ids_prev: np.ndarray | None = None,
    depth_t: np.ndarray | None = None,
    depth_prev: np.ndarray | None = None,
    tolerance_px: float = 0.5,
    depth_tolerance: float = 0.1,
) -> Validity:
    """Frame t's pixels whose point in t−1 (p + backward_t(p)) is inside the frame, maps
    back to p under t−1's forward flow within `tolerance_px` (plus 5% of the motion),
    carries the same object index, and agrees in depth: the depth expected at t (t−1's
    depth there plus the change in depth along the motion is unknown, so agreement is
    relative: |z_t − z_{t−1}| ≤ depth_tolerance · z_t). Background (+inf depth in both)
    counts as agreeing."""
    h, w = backward_t.shape[:2]
    x, y = _grid(h, w)
    qx, qy = x + backward_t[..., 0], y + backward_t[..., 1]
    inside = (qx >= -0.5) & (qx <= w - 0.5) & (qy >= -0.5) & (qy <= h - 0.5)
    back = sample(forward_prev, qx, qy)
    err = np.hypot(back[..., 0] + backward_t[..., 0], back[..., 1] + backward_t[..., 1])
    motion = np.hypot(backward_t[..., 0], backward_t[..., 1])
    consistent = err <= tolerance_px + 0.05 * motion
    same_object = np.ones((h, w), bool)
    if ids_t is not None and ids_prev is not None:
        same_object = nearest(ids_prev, qx, qy) == ids_t
    same_depth = np.ones((h, w), bool)
    if depth_t is not None and depth_prev is not None:
        zp = nearest(depth_prev, qx, qy)
        both_far = ~np.isfinite(depth_t) & ~np.isfinite(zp)
        with np.errstate(invalid="ignore"):
            close = np.abs(depth_t - zp) <= depth_tolerance * np.abs(depth_t)
        same_depth = both_far | (np.isfinite(depth_t) & np.isfinite(zp) & close)
    valid = inside & consistent & same_object & same_depth
    return Validity(valid, inside, consistent, same_object, same_depth)


def between(
    vector_prev: np.ndarray,
    vector_t: np.ndarray,
    *,
    ids: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    depths: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[np.ndarray, Validity]:
    """Frame t's backward flow and the `validity` of its pixels against frame t−1, from
    both frames' Vector passes; `ids` and `depths` are (t−1, t) pairs (None: unchecked)."""
    b = backward_flow(vector_t)
    v = validity(
        b,
        forward_flow(vector_prev),
        ids_t=ids[1],
        ids_prev=ids[0],
        depth_t=depths[1],
        depth_prev=depths[0],
    )
    return b, v


@dataclass(frozen=True)
class WarpingError:
    per_frame: list[float]  # frames 1..N−1: mean masked |frame_t − warp(frame_{t−1})|
    valid_share: list[float]  # the share of valid pixels per frame

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_frame)) if self.per_frame else 0.0


def warping_error(
    frames: list[np.ndarray],
    vectors: list[np.ndarray],
    *,
    ids: list[np.ndarray] | None = None,
    depths: list[np.ndarray] | None = None,
) -> WarpingError:
    """The warping error of a sequence (uint8 or float images, (H, W, C)): for every t ≥ 1,
    the mean absolute difference (0-255 scale for uint8, per channel) between frame t and
    frame t−1 warped to t, over the pixels `validity` trusts. Zero for a static scene;
    flicker raises it. Frames, vectors, ids and depths are the same length and size."""
    n = len(frames)
    if (
        len(vectors) != n
        or (ids is not None and len(ids) != n)
        or (depths is not None and len(depths) != n)
    ):
        raise ValueError("frames, vectors, ids and depths must be the same length")
    errors, shares = [], []
    for t in range(1, n):
        b, v = between(
            vectors[t - 1],
            vectors[t],
            ids=(None, None) if ids is None else (ids[t - 1], ids[t]),
            depths=(None, None) if depths is None else (depths[t - 1], depths[t]),
        )
        cur = frames[t].astype(np.float32)
        diff = np.abs(cur - warp(frames[t - 1], b))
        if diff.ndim == 3:
            diff = diff.mean(axis=2)
        errors.append(float(diff[v.valid].mean()) if v.valid.any() else 0.0)
        shares.append(v.share)
    return WarpingError(errors, shares)


def edge_correlation(a: np.ndarray, b: np.ndarray, scale: int = 1) -> float:
    """Correlation of the gradient magnitudes of two images (H, W[, C]): 1 when their edges
    coincide, ~0 when unrelated. How much of a render's layout a stylized frame keeps;
    `scale` > 1 first averages scale×scale blocks (layout rather than texture edges)."""

    def edges(img: np.ndarray) -> np.ndarray:
        g = img.astype(np.float64)
        if g.ndim == 3:
            g = g[..., :3].mean(axis=2)
        if scale > 1:
            h, w = (g.shape[0] // scale) * scale, (g.shape[1] // scale) * scale
            g = g[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
        return np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1]).ravel()

    ea, eb = edges(a), edges(b)
    if ea.std() == 0 or eb.std() == 0:
        return 0.0
    return float(np.corrcoef(ea, eb)[0, 1])


def fresh_share(
    output: np.ndarray,
    previous_output: np.ndarray,
    vector: np.ndarray,
    previous_vector: np.ndarray,
    *,
    ids: tuple[np.ndarray, np.ndarray] | None = None,
    depths: tuple[np.ndarray, np.ndarray] | None = None,
    renders: tuple[np.ndarray, np.ndarray] | None = None,
    threshold: float = 8.0,
) -> float | None:
    """Of the pixels frame t cannot take from t−1 (`validity` says invalid), the share
    whose output is new content rather than smeared history. None when no pixel counts.

    With `renders` (frame t−1's and t's render): judged against the render's own change
    there, so the measure does not depend on how much a model flickers. Of the invalid
    pixels where the render changed by more than `threshold` (0-255, mean over channels,
    against frame t−1's render warped to t), the share where the output changed at least
    half as much, scaled by the output's contrast relative to the render's (a low-contrast
    style changes less). Without: the share whose output differs from the previous output
    warped to t by more than `threshold`."""
    b, v = between(previous_vector, vector, ids=ids or (None, None), depths=depths or (None, None))
    invalid = ~v.valid
    diff = np.abs(output[..., :3].astype(np.float32) - warp(previous_output[..., :3], b))
    change = diff.mean(axis=2)
    if renders is None:
        return float((change[invalid] > threshold).mean()) if invalid.any() else None
    render_prev, render = (r[..., :3].astype(np.float32) for r in renders)
    moved = np.abs(render - warp(render_prev, b)).mean(axis=2)
    counted = invalid & (moved > threshold)
    if not counted.any():
        return None
    contrast = min(1.0, float(output[..., :3].std()) / max(float(render.std()), 1e-6))
    return float((change[counted] >= 0.5 * contrast * moved[counted]).mean())
