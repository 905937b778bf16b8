"""Efros-Freeman image quilting ("Image Quilting for Texture Synthesis and Transfer", 2001).

The output is covered, row by row, by square patches copied from the source image. Each
new patch overlaps its left and top neighbours by a few pixels; among candidate source
positions, one is picked at random from those whose overlap matches what is already there
almost as well as the best one, and it is stitched in along the minimum-error boundary cut
through the overlap. Every output pixel is a copy of a source pixel: no blending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    patch: int  # side of a patch, pixels
    overlap: int  # overlap with the left and top neighbours, pixels (0 when patch is 1)
    cols: int  # patches across
    rows: int  # patches down

    @property
    def stride(self) -> int:
        return self.patch - self.overlap

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) of the canvas the patches cover (cropped to the output later)."""
        return self.rows * self.stride + self.overlap, self.cols * self.stride + self.overlap


def layout(width: int, height: int, src_h: int, src_w: int, patch: int, overlap: float) -> Layout:
    """Patch size clamped to the source; overlap as a fraction of it (at least one pixel)."""
    size = max(1, min(patch, src_h, src_w))
    ov = 0 if size == 1 else min(max(1, round(size * overlap)), size - 1)
    stride = size - ov
    cols = max(1, -(-(width - ov) // stride))
    rows = max(1, -(-(height - ov) // stride))
    return Layout(size, ov, cols, rows)


def _min_cut(err: np.ndarray) -> np.ndarray:
    """Minimum-cost top-to-bottom path through `err` (P rows x O columns), by dynamic
    programming; returns a bool mask, True right of (and on) the path: the new patch."""
    rows, cols = err.shape
    cost = err.astype(np.float64)
    inf = np.full(1, np.inf)
    for r in range(1, rows):
        prev = cost[r - 1]
        best = np.minimum(prev, np.concatenate((inf, prev[:-1])))
        best = np.minimum(best, np.concatenate((prev[1:], inf)))
        cost[r] += best
    path = np.empty(rows, dtype=np.int64)
    path[-1] = int(np.argmin(cost[-1]))
    for r in range(rows - 2, -1, -1):
        c = int(path[r + 1])
        lo, hi = max(c - 1, 0), min(c + 2, cols)
        path[r] = lo + int(np.argmin(cost[r, lo:hi]))
    return np.arange(cols)[None, :] >= path[:, None]


def quilt(
    src: np.ndarray,
    width: int,
    height: int,
    *,
    patch: int,
    overlap: float,
    tolerance: float,
    candidates: int,
    rng: np.random.Generator,
    on_row: Callable[[int, int], None],
    on_patch: Callable[[], None],
    on_preview: Callable[[np.ndarray], None],
) -> np.ndarray:
    """Synthesises a (height, width, 4) uint8 texture from `src` (h, w, 4) uint8.

    `on_row(row, rows)` is called before each row of patches (progress), `on_patch()` before
    each patch (a cancel point), `on_preview(canvas)` after every quarter of the rows.
    """
    src_h, src_w = src.shape[:2]
    lay = layout(width, height, src_h, src_w, patch, overlap)
    p, ov, stride = lay.patch, lay.overlap, lay.stride
    source = src.astype(np.float32)
    canvas = np.zeros((*lay.canvas, 4), dtype=np.float32)
    n_y, n_x = src_h - p + 1, src_w - p + 1  # source positions a patch can come from
    n_pos = n_y * n_x
    every = n_pos <= candidates
    ar_p, ar_o = np.arange(p), np.arange(ov)
    preview_every = max(1, lay.rows // 4)

    def overlap_error(ys: np.ndarray, xs: np.ndarray, y: int, x: int, left: bool, top: bool):
        err = np.zeros(len(ys), dtype=np.float32)
        if left:
            cand = source[
                ys[:, None, None] + ar_p[None, :, None], xs[:, None, None] + ar_o[None, None, :]
            ]
            err += ((cand - canvas[y : y + p, x : x + ov]) ** 2).sum(axis=(1, 2, 3))
        if top:
            cand = source[
                ys[:, None, None] + ar_o[None, :, None], xs[:, None, None] + ar_p[None, None, :]
            ]
            if left:  # the corner is in both overlaps: count it once
                cand = cand[:, :, ov:]
                there = canvas[y : y + ov, x + ov : x + p]
            else:
                there = canvas[y : y + ov, x : x + p]
            err += ((cand - there) ** 2).sum(axis=(1, 2, 3))
        return err

    for row in range(lay.rows):
        on_row(row, lay.rows)
        for col in range(lay.cols):
            on_patch()
            y, x = row * stride, col * stride
            left, top = col > 0 and ov > 0, row > 0 and ov > 0
            # Every source position, or a random sample of them for a large source.
            flat = np.arange(n_pos) if every else rng.integers(0, n_pos, size=candidates)
            ys, xs = flat // n_x, flat % n_x
            if left or top:
                err = overlap_error(ys, xs, y, x, left, top)
                good = np.flatnonzero(err <= err.min() * (1.0 + tolerance) + 1e-3)
                pick = int(good[rng.integers(len(good))])
            else:
                pick = int(rng.integers(len(flat)))
            sy, sx = int(ys[pick]), int(xs[pick])
            new = source[sy : sy + p, sx : sx + p]
            mask = np.ones((p, p), dtype=bool)
            here = canvas[y : y + p, x : x + p]
            if left:
                mask[:, :ov] &= _min_cut(((new[:, :ov] - here[:, :ov]) ** 2).sum(axis=2))
            if top:
                mask[:ov, :] &= _min_cut(((new[:ov] - here[:ov]) ** 2).sum(axis=2).T).T
            here[mask] = new[mask]
        if (row + 1) % preview_every == 0 or row == lay.rows - 1:
            on_preview(canvas[:height, :width])
    on_row(lay.rows, lay.rows)
    return np.ascontiguousarray(canvas[:height, :width].astype(np.uint8))
