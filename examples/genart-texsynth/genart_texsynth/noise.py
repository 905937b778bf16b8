"""Fractal (fBm) Perlin and value noise on a periodic lattice, in numpy.

Every octave samples a random lattice of `cells_x` x `cells_y` cells stretched over the
whole image. With `tileable`, lattice indices wrap around (the lattice is a torus), so the
pixel after the last column is the first column again: the image tiles without a seam.
Without it, the lattice gets one extra row and column of independent values and the edges
do not match. The lacunarity is an integer so that every octave's cell count stays whole
and every octave stays periodic over the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PALETTES: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "grayscale": [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))],
    "fire": [
        (0.0, (8, 0, 0)),
        (0.35, (150, 20, 0)),
        (0.65, (245, 130, 10)),
        (0.85, (255, 220, 80)),
        (1.0, (255, 255, 230)),
    ],
    "ocean": [
        (0.0, (2, 10, 40)),
        (0.45, (10, 70, 140)),
        (0.75, (40, 160, 190)),
        (1.0, (220, 245, 250)),
    ],
    "moss": [
        (0.0, (20, 28, 10)),
        (0.5, (70, 110, 30)),
        (0.8, (140, 170, 60)),
        (1.0, (215, 220, 150)),
    ],
    "terrain": [
        (0.0, (20, 40, 110)),
        (0.4, (40, 110, 190)),
        (0.45, (220, 210, 150)),
        (0.55, (60, 140, 50)),
        (0.75, (110, 90, 60)),
        (0.9, (150, 150, 150)),
        (1.0, (250, 250, 250)),
    ],
}
# "two_color" is not in PALETTES: it is built from the colour_a / colour_b parameters.
PALETTE_CHOICES = ("two_color", *PALETTES)


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3: C2-continuous across cell borders."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@dataclass(frozen=True)
class Octave:
    cells_x: int
    cells_y: int
    amplitude: float
    # Lattice values: one array (value noise) or two (gradient x, y for Perlin noise).
    lattice: tuple[np.ndarray, ...]


def octaves(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: int,
    count: int,
    lacunarity: int,
    persistence: float,
    kind: str,
    tileable: bool,
) -> list[Octave]:
    """The octaves to sum, with their random lattices (drawn here, in order, from `rng`).

    Octave 0 has `scale` cells across the width and as many across the height as keep the
    cells about square (at least one). Octaves finer than the pixel grid would only alias,
    so they are left out (there is always at least one).
    """
    cells_y0 = max(1, round(scale * height / width))
    out: list[Octave] = []
    for o in range(count):
        cx, cy = scale * lacunarity**o, cells_y0 * lacunarity**o
        if o > 0 and (cx > width or cy > height):
            break
        shape = (cy, cx) if tileable else (cy + 1, cx + 1)
        if kind == "perlin":
            angle = rng.uniform(0.0, 2.0 * np.pi, size=shape)
            lattice: tuple[np.ndarray, ...] = (
                np.cos(angle).astype(np.float32),
                np.sin(angle).astype(np.float32),
            )
        else:
            lattice = (rng.random(size=shape, dtype=np.float32),)
        out.append(Octave(cx, cy, persistence**o, lattice))
    return out


def _axis(n_pixels: int, start: int, stop: int, cells: int, tileable: bool):
    """Lattice indices (i0, i1) and fractional position of pixels start..stop on one axis."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) * (cells / n_pixels)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    if tileable:
        i0 %= cells
        i1 = (i0 + 1) % cells  # the torus: the cell after the last one is the first
    else:
        i1 = i0 + 1  # the lattice has one extra, independent row/column at the far edge
    return i0, i1, frac


def sample_octave(
    octave: Octave,
    width: int,
    height: int,
    row0: int,
    row1: int,
    kind: str,
    turbulence: bool,
    tileable: bool,
) -> np.ndarray:
    """The octave's noise for image rows row0..row1 (all columns), float32, about [-1, 1]."""
    x0, x1, fx = _axis(width, 0, width, octave.cells_x, tileable)
    y0, y1, fy = _axis(height, row0, row1, octave.cells_y, tileable)
    y0, y1, fy = y0[:, None], y1[:, None], fy[:, None]
    sx, sy = _fade(fx), _fade(fy)
    if kind == "perlin":
        gx, gy = octave.lattice

        def corner(yi: np.ndarray, xi: np.ndarray, dx: np.ndarray, dy: np.ndarray):
            return gx[yi, xi] * dx + gy[yi, xi] * dy

        n00 = corner(y0, x0, fx, fy)
        n10 = corner(y0, x1, fx - 1.0, fy)
        n01 = corner(y1, x0, fx, fy - 1.0)
        n11 = corner(y1, x1, fx - 1.0, fy - 1.0)
    else:
        (v,) = octave.lattice
        n00, n10, n01, n11 = v[y0, x0], v[y0, x1], v[y1, x0], v[y1, x1]
    top = n00 + (n10 - n00) * sx
    bottom = n01 + (n11 - n01) * sx
    out = top + (bottom - top) * sy
    if kind == "perlin":
        out *= np.float32(np.sqrt(2.0))  # 2D Perlin noise lies in [-sqrt(1/2), sqrt(1/2)]
    else:
        out = out * 2.0 - 1.0
    if turbulence:
        out = 1.0 - 2.0 * np.abs(out)  # ridges where the noise crosses zero
    return out.astype(np.float32, copy=False)


def row_bands(width: int, height: int, pixels_per_band: int = 1 << 20) -> list[tuple[int, int]]:
    """Splits the rows into bands of about `pixels_per_band` pixels: one step each."""
    count = min(height, max(1, -(-width * height // pixels_per_band)))
    edges = np.linspace(0, height, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def fbm(
    octave_list: list[Octave],
    width: int,
    height: int,
    kind: str,
    turbulence: bool,
    tileable: bool,
    step: Callable[[int, int], None],
) -> Iterator[np.ndarray]:
    """Sums the octaves band by band; yields the running sum after each octave.

    `step(done, total)` is called before every (octave, band) piece of work: the engine's
    progress report and cancel point.
    """
    field = np.zeros((height, width), dtype=np.float32)
    bands = row_bands(width, height)
    total = len(octave_list) * len(bands)
    done = 0
    for octave in octave_list:
        for r0, r1 in bands:
            step(done, total)
            field[r0:r1] += octave.amplitude * sample_octave(
                octave, width, height, r0, r1, kind, turbulence, tileable
            )
            done += 1
        yield field


def normalise(field: np.ndarray) -> np.ndarray:
    """Stretches a field to [0, 1] (a constant field becomes 0.5)."""
    lo, hi = float(field.min()), float(field.max())
    if hi - lo < 1e-12:
        return np.full_like(field, 0.5)
    return (field - lo) * np.float32(1.0 / (hi - lo))


def colourise(t: np.ndarray, stops: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """Maps values in [0, 1] through a piecewise-linear palette to RGBA uint8 (opaque)."""
    pos = np.array([s[0] for s in stops], dtype=np.float32)
    rgb = np.array([s[1] for s in stops], dtype=np.float32)
    out = np.empty((*t.shape, 4), dtype=np.uint8)
    for c in range(3):
        out[..., c] = np.rint(np.interp(t, pos, rgb[:, c]))
    out[..., 3] = 255
    return out
