"""Coherent stylization of a sequence with the renderer's exact flow (issue 9; DESIGN §5).

Each mechanism is a switch of `Coherence`, so its effect can be measured on its own:

- `init_blend`: the previous stylized frame, warped to this frame with the exact flow,
  replaces that share of the render in the image-to-image init where the match is valid
  (`flow.validity`); disoccluded pixels keep the render, so they get fresh content.
- `anchored_noise`: the initial noise follows the surfaces: the previous frame's noise
  (latent resolution) is warped with the flow where valid and elsewhere taken from the
  base noise `rng` draws (the same every frame when the caller seeds it per sequence, so
  static, disoccluded and first-frame regions match the naive path), so a surface point
  keeps its noise from frame to frame. Warping by nearest latent cell keeps
  the noise Gaussian (no blur that would shrink its variance).
- `post_blend`: the warped previous stylized frame replaces that share of the output
  where valid (pixel space, after decoding).

`Previous` is what frame t needs of frame t−1: its stylized pixels, its passes' forward
flow, ids and depth, and its noise. `Step` carries what frame t computed for frame t+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flow import between, nearest, warp

MODES = ("off", "exact_flow")


@dataclass(frozen=True)
class Coherence:
    init_blend: float = 0.0  # 0..1
    anchored_noise: bool = False
    post_blend: float = 0.0  # 0..1
    # > 0: post blend only what is coarser than this radius (px): the frame keeps its own
    # fine detail (the render's edges), the warped history evens out the rest
    post_radius: int = 0
    # > 0: post blend less where the render itself changed (its shading moved over the
    # surface): the weight is exp(-(change / guided)²), the change being |render_t −
    # render_{t−1} warped to t| (0-255); 0 blends the same everywhere
    guided: float = 0.0

    @property
    def active(self) -> bool:
        return self.init_blend > 0 or self.anchored_noise or self.post_blend > 0


@dataclass
class Frame:
    """One frame's passes (top-down rows, at the render's size)."""

    vector: np.ndarray  # (H, W, 4) Blender's Vector pass
    object_index: np.ndarray | None = None  # (H, W) int
    depth: np.ndarray | None = None  # (H, W) planar Z


@dataclass
class Previous:
    stylized: np.ndarray  # (h, w, 3) uint8, the previous output
    frame: Frame
    noise: np.ndarray | None = None  # (C, h/f, w/f) float32, the previous initial noise
    render: np.ndarray | None = None  # (h', w', 3) uint8, the previous frame's render


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flow field (H, W, 2) in pixels resampled to (height, width), its vectors scaled."""
    h, w = flow.shape[:2]
    if (h, w) == (height, width):
        return flow
    ys = (np.arange(height) + 0.5) * h / height - 0.5
    xs = (np.arange(width) + 0.5) * w / width - 0.5
    gx, gy = np.meshgrid(xs, ys)
    out = nearest(flow, gx, gy).astype(np.float32)
    out[..., 0] *= width / w
    out[..., 1] *= height / h
    return out


def resize_mask(mask: np.ndarray, height: int, width: int, *, all_of: bool = False) -> np.ndarray:
    """A boolean mask at (height, width): nearest, or (all_of, for downsampling by an
    integer factor) true only where every source pixel of the cell is."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    if all_of and h % height == 0 and w % width == 0:
        fy, fx = h // height, w // width
        return mask.reshape(height, fy, width, fx).all(axis=(1, 3))
    ys = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return mask[ys[:, None], xs[None, :]]


@dataclass
class Step:
    """What coherence prepared for frame t: the warped previous output, the validity at
    output size, the init image and noise to use, and the share of valid pixels."""

    warped: np.ndarray | None  # (h, w, 3) float32 0..255, previous output moved to t
    valid: np.ndarray | None  # (h, w) bool
    init: np.ndarray  # (h, w, 3) uint8: the image-to-image init
    noise: np.ndarray | None  # (C, lh, lw) float32 or None (let the pipeline draw it)
    valid_share: float
    weight: np.ndarray | None = None  # (h, w) float32: the post blend's share per pixel


def prepare(
    cfg: Coherence,
    render: np.ndarray,
    frame: Frame,
    previous: Previous | None,
    *,
    latent_shape: tuple[int, int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> Step:
    """The init image and noise of frame t (render: (h, w, 3) uint8 at output size).
    Without a previous frame (the first frame, or coherence off) the render and fresh
    noise; `latent_shape` (C, lh, lw) asks for noise."""
    rng = rng or np.random.default_rng(0)
    h, w = render.shape[:2]

    def fresh() -> np.ndarray | None:
        if latent_shape is None or not cfg.anchored_noise:
            return None
        return rng.standard_normal(latent_shape).astype(np.float32)

    if previous is None or not cfg.active:
        return Step(None, None, render, fresh(), 0.0)
    b, v = between(
        previous.frame.vector,
        frame.vector,
        ids=(previous.frame.object_index, frame.object_index),
        depths=(previous.frame.depth, frame.depth),
    )
    b_out = resize_flow(b, h, w)
    valid = resize_mask(v.valid, h, w)
    warped = warp(previous.stylized[..., :3], b_out)
    init = render
    if cfg.init_blend > 0:
        mixed = (1 - cfg.init_blend) * render.astype(np.float32) + cfg.init_blend * warped
        init = np.where(valid[..., None], mixed, render).round().clip(0, 255).astype(np.uint8)
    noise = fresh()
    if noise is not None and previous.noise is not None and latent_shape is not None:
        c, lh, lw = latent_shape
        b_lat = resize_flow(b, lh, lw)
        ys, xs = np.mgrid[0:lh, 0:lw].astype(np.float32)
        moved = nearest(np.moveaxis(previous.noise, 0, -1), xs + b_lat[..., 0], ys + b_lat[..., 1])
        keep = resize_mask(v.valid, lh, lw, all_of=True)
        noise = np.where(keep[None], np.moveaxis(moved, -1, 0), noise).astype(np.float32)
    weight = None
    if cfg.guided > 0 and previous.render is not None:
        before = previous.render[..., :3]
        if before.shape[:2] != (h, w):
            from PIL import Image

            before = np.asarray(Image.fromarray(before).resize((w, h), Image.Resampling.BILINEAR))
        change = np.abs(render[..., :3].astype(np.float32) - warp(before, b_out)).mean(axis=2)
        weight = np.exp(-((change / cfg.guided) ** 2)).astype(np.float32)
    return Step(warped, valid, init, noise, float(valid.mean()), weight)


def finish(cfg: Coherence, output: np.ndarray, step: Step) -> np.ndarray:
    """Frame t's output (h, w, 3) uint8 after `post_blend` with the warped previous one."""
    if cfg.post_blend <= 0 or step.warped is None or step.valid is None:
        return output
    now = output.astype(np.float32)
    delta = step.warped - now
    if cfg.post_radius > 0:  # the masked local mean of the difference: its coarse part
        w = step.valid.astype(np.float32)[..., None]
        delta = box_mean(delta * w, cfg.post_radius) / np.maximum(
            box_mean(w, cfg.post_radius), 1e-6
        )
    share = cfg.post_blend if step.weight is None else cfg.post_blend * step.weight[..., None]
    out = np.where(step.valid[..., None], now + share * delta, now)
    return out.round().clip(0, 255).astype(np.uint8)


def box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """The mean of `a` (H, W[, C]) over (2r+1)² windows, the borders repeated."""
    out = a.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = ((hi - lo) / (2 * r + 1)).astype(np.float32)
    return out


def frame_error(output: np.ndarray, step: Step) -> float | None:
    """This frame's warping error (`flow.warping_error` for one frame): the mean absolute
    difference, 0-255 per channel, between the output and the previous output warped to
    it, over the valid pixels; None for a first frame."""
    if step.warped is None or step.valid is None or not step.valid.any():
        return None
    diff = np.abs(output[..., :3].astype(np.float32) - step.warped).mean(axis=2)
    return float(diff[step.valid].mean())
