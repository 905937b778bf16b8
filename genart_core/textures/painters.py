"""How each texture family is painted: periodic fields on the unit torus, the colour
palettes, and one painter per family (the API around them is `procedural`).

Every field takes torus coordinates (u, v), broadcastable float arrays in which a step of
1 is one full period, and satisfies f(u + 1, v) == f(u, v + 1) == f(u, v) up to float
rounding: lattice indices wrap modulo the lattice size, Voronoi feature points are looked
up modulo their grid (with unwrapped positions, so distances across the wrap are right),
and waves have integer frequencies. That is what makes every texture exactly tileable:
its left and right (top and bottom) edges continue each other, whatever the seed.
Randomness comes from the `np.random.Generator` passed in, drawn in a fixed order.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

RGB = tuple[float, float, float]

BASE = 64
"""Pixels of the reference tile: feature counts are given per BASE px, so a larger period
shows more bricks of the same pixel size rather than bigger bricks."""


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a size×size image of a texture with period `period` px.

    `u` is (1, W) across and `v` is (H, 1) down, in periods: u = (x + 0.5) / period plus a
    shift. An image larger than the period therefore shows whole repeats of the same
    texture, and size == period is exactly one tile.
    """

    u: np.ndarray  # (1, W)
    v: np.ndarray  # (H, 1)
    period: int

    @classmethod
    def make(
        cls, size: int, period: int, *, margin: int = 0, shift: tuple[float, float] = (0.0, 0.0)
    ) -> Grid:
        """The grid of a size×size image, plus `margin` px on every side (for finite
        differences that need a neighbour beyond the image), its pattern translated by
        `shift` periods (across, down)."""
        x = (np.arange(-margin, size + margin, dtype=np.float64) + 0.5) / period
        return cls(u=x[None, :] + shift[0], v=x[:, None] + shift[1], period=period)

    def count(self, per_base: float, *, even: bool = False) -> int:
        """Features over one period for `per_base` features per BASE px (≥ 1, or an even
        count ≥ 2 for patterns that alternate, such as checkers and running bond)."""
        scaled = per_base * self.period / BASE
        if even:
            return max(2, 2 * round(scaled / 2))
        return max(1, round(scaled))

    def px(self, n: int) -> float:
        """Pixels per cell of an n-per-period lattice."""
        return self.period / n


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _cell(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice index (wrapped), its successor, and the fraction within the cell."""
    x0 = np.floor(x)
    i0 = x0.astype(np.intp) % n
    return i0, (i0 + 1) % n, x - x0


def perlin(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, nx: int, ny: int | None = None
) -> np.ndarray:
    """Gradient noise on an nx × ny lattice per period (ny defaults to nx; unequal counts
    give grain stretched along the sparser axis). Zero mean, std ≈ 0.21, within ±0.71."""
    ny = nx if ny is None else ny
    angle = rng.uniform(0.0, 2.0 * np.pi, (ny, nx))
    gx, gy = np.cos(angle), np.sin(angle)
    ix0, ix1, fx = _cell(u * nx, nx)
    iy0, iy1, fy = _cell(v * ny, ny)

    def corner(iy: np.ndarray, ix: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return gx[iy, ix] * dx + gy[iy, ix] * dy

    sx, sy = _fade(fx), _fade(fy)
    top = corner(iy0, ix0, fx, fy) * (1 - sx) + corner(iy0, ix1, fx - 1, fy) * sx
    bottom = corner(iy1, ix0, fx, fy - 1) * (1 - sx) + corner(iy1, ix1, fx - 1, fy - 1) * sx
    return top * (1 - sy) + bottom * sy  # (H, W)


def fbm(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    n: int,
    octaves: int,
    *,
    gain: float = 0.5,
    turbulent: bool = False,
) -> np.ndarray:
    """Fractal sum of `octaves` perlin layers with lattices n, 2n, 4n, ... (all periodic).
    Plain: zero mean, std ≈ 1. Turbulent (a sum of |noise|, creased where each layer
    crosses zero, as marble veins need): mean ≈ 1, std ≈ 0.4."""
    total: np.ndarray | float = 0.0
    power = 0.0
    amps = 0.0
    amp = 1.0
    for k in range(octaves):
        layer = perlin(rng, u, v, n * 2**k)
        total = total + amp * (np.abs(layer) if turbulent else layer)
        power += amp * amp
        amps += amp
        amp *= gain
    # Measured over many lattices: perlin's std is 0.214 and its mean |value| 0.174.
    return np.asarray(total) / (0.174 * amps if turbulent else 0.214 * np.sqrt(power))


def voronoi(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, n: int, jitter: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise with one feature point per cell of an n × n grid, each point placed
    uniformly within `jitter` (0..1) of its cell's width around the centre.

    Returns (f1, f2, cell): distances to the nearest and second nearest points in cell
    widths, and the nearest point's index (0 .. n²-1). (f2 - f1) / 2 approximates the
    distance to the cell's border.
    """
    points = 0.5 + jitter * (rng.random((n, n, 2)) - 0.5)
    x, y = np.broadcast_arrays(u * n, v * n)
    cx, cy = np.floor(x), np.floor(y)
    f1 = np.full(x.shape, np.inf)
    f2 = np.full(x.shape, np.inf)
    cell = np.zeros(x.shape, dtype=np.intp)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            # Unwrapped neighbour cell for the position, wrapped one for the lookup.
            nx_, ny_ = cx + dx, cy + dy
            ix, iy = nx_.astype(np.intp) % n, ny_.astype(np.intp) % n
            d = np.hypot(nx_ + points[iy, ix, 0] - x, ny_ + points[iy, ix, 1] - y)
            nearer = d < f1
            f2 = np.where(nearer, f1, np.minimum(f2, d))
            f1 = np.where(nearer, d, f1)
            cell = np.where(nearer, iy * n + ix, cell)
    return f1, f2, cell


def coverage(d_px: np.ndarray) -> np.ndarray:
    """Anti-aliased inside mask from a signed distance in pixels (positive inside): a
    one-pixel ramp across the edge, so hard shapes do not stair-step."""
    return np.clip(d_px + 0.5, 0.0, 1.0)


def distance_to_zero(f: np.ndarray) -> np.ndarray:
    """Pixels from each pixel to the zero set of a smooth field, |f| / |∇f| to first order
    (f sampled one value per pixel; central differences, one-sided on the outer rim)."""
    gy, gx = np.gradient(f)
    return np.abs(f) / np.maximum(np.hypot(gx, gy), 1e-9)


def smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---- colours ----


@dataclass(frozen=True)
class Colour:
    """A colour word's palette, RGB in 0..1.

    `base` is the word's colour; `light` and `dark` are shades of the same hue for shading
    inside a texture; `ground` is the second tone of two-tone families (a pale tint of the
    hue, grey under white); `joint` is the neutral mortar, grout or gap tone (light with
    dark colours, dark with light ones). Only `base` is chosen; the rest follow from it.
    """

    name: str
    base: RGB
    light: RGB
    dark: RGB
    ground: RGB
    joint: RGB

    @classmethod
    def from_base(cls, name: str, base: RGB) -> Colour:
        b = np.asarray(base)

        def rgb(a: np.ndarray) -> RGB:
            r, g, bl = (float(x) for x in np.clip(a, 0.0, 1.0))
            return (r, g, bl)

        ground = b * 0.55 if luma(base) > 0.85 else b + (1.0 - b) * 0.78
        joint = np.full(3, 0.78 if luma(base) < 0.6 else 0.33) + np.array([0.0, -0.01, -0.03])
        return cls(name, rgb(b), rgb(b + (1.0 - b) * 0.35), rgb(b * 0.5), rgb(ground), rgb(joint))

    @property
    def chromatic(self) -> bool:
        """Whether the word names a hue (white and black do not)."""
        return colorsys.rgb_to_hsv(*self.base)[1] > 0.3

    def jittered(self, rng: np.random.Generator) -> Colour:
        """The same colour word in a slightly different shade (hue ±5°, s and v ±10%)."""
        h, s, v = colorsys.rgb_to_hsv(*self.base)
        h = (h + rng.uniform(-0.014, 0.014)) % 1.0
        s = min(1.0, s * rng.uniform(0.88, 1.1))
        v = min(1.0, v * rng.uniform(0.9, 1.1))
        return Colour.from_base(self.name, colorsys.hsv_to_rgb(h, s, v))


def luma(rgb: RGB) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# ---- painters: (grid, jittered colour, structure rng) -> float RGB (H, W, 3) in 0..1 ----

Painter = Callable[[Grid, Colour, np.random.Generator], np.ndarray]


def _c(rgb: RGB) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64)


def _mix(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """a where m = 0, b where m = 1; a, b: (3,) or (H, W, 3); m: (H, W)."""
    return a + (b - a) * m[..., None]


def _ramp(c: Colour, t: np.ndarray) -> np.ndarray:
    """Shade of the colour's hue: t = 0 dark, 0.5 base, 1 light (clipped)."""
    t = np.clip(t, 0.0, 1.0)
    lower = _mix(_c(c.dark), _c(c.base), np.minimum(t * 2.0, 1.0))
    return _mix(lower, _c(c.light), np.maximum(t * 2.0 - 1.0, 0.0))


def _box_edge(fx: np.ndarray, fy: np.ndarray, w_px: float, h_px: float) -> np.ndarray:
    """Pixels to the nearest side of a w×h box from the fractions (fx, fy) inside it."""
    return np.minimum(np.minimum(fx, 1 - fx) * w_px, np.minimum(fy, 1 - fy) * h_px)


def _bricks(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    rows = g.count(float(rng.choice([6, 8, 8, 10])), even=True)  # even: the bond alternates
    cols = g.count(rows * BASE / g.period / rng.uniform(2.2, 3.2))  # aspect 2.2-3.2 : 1
    mortar = rng.uniform(0.5, 1.1)  # half-width, px
    shade = rng.normal(0.0, 0.09, (rows, cols))
    y = g.v * rows
    row = np.floor(y)
    x = g.u * cols + 0.5 * (row % 2)  # running bond
    col = np.floor(x)
    edge = _box_edge(x - col, y - row, g.px(cols), g.px(rows))
    grain = fbm(rng, g.u, g.v, g.count(16), 3)
    per_brick = shade[row.astype(np.intp) % rows, col.astype(np.intp) % cols]
    t = 0.4 + per_brick + 0.05 * grain + 0.1 * np.clip((edge - mortar) / 2.0, 0.0, 1.0)
    joint = _c(c.joint) * (1.0 + 0.05 * grain)[..., None]
    return _mix(joint, _ramp(c, t), coverage(edge - mortar))


def _tiles(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    n = g.count(float(rng.choice([3, 4, 4, 5])))
    grout = rng.uniform(0.4, 0.8)
    shade = rng.normal(0.0, 0.04, (n, n))
    x, y = g.u * n, g.v * n
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = x - ix, y - iy
    edge = _box_edge(fx, fy, g.px(n), g.px(n))
    gloss = 0.12 * (1.0 - fx - fy)  # glaze lit from the top left
    rim = 0.12 * np.exp(-np.maximum(edge - grout, 0.0) / 1.2)  # bevelled edges catch light
    t = 0.5 + shade[iy.astype(np.intp) % n, ix.astype(np.intp) % n] + gloss + rim
    t = t + 0.02 * fbm(rng, g.u, g.v, g.count(8), 2)
    return _mix(_c(c.joint), _ramp(c, t), coverage(edge - grout))


def _planks(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    along, across = (g.u, g.v) if rng.random() < 0.5 else (g.v, g.u)
    rows = g.count(float(rng.choice([4, 5, 6])))
    joints = g.count(float(rng.choice([1, 1, 2])))  # board ends per row per period
    offset = rng.random(rows)
    centre_t = rng.uniform(-1.5, 2.5, (rows, joints))  # ring centre, in board widths
    centre_s = rng.random((rows, joints))
    rings = rng.uniform(2.0, 4.5, (rows, joints))  # rings per board width
    shade = rng.normal(0.0, 0.06, (rows, joints))
    y = across * rows
    row = np.floor(y)
    r = row.astype(np.intp) % rows
    x = along * joints + offset[r]
    piece = np.floor(x)
    p = piece.astype(np.intp) % joints
    fs, ft = x - piece, y - row
    width, length = g.px(rows), g.px(joints)
    # Flat-sawn grain: ellipses stretched 8× along the board around a centre often
    # outside it, bent by noise, make straight lines with the odd cathedral arch.
    ds = (fs - centre_s[r, p]) * length / 8.0
    dt = (ft - centre_t[r, p]) * width
    warp = fbm(rng, g.u, g.v, g.count(3), 2)
    phase = np.hypot(ds, dt) / width * rings[r, p] + 0.25 * warp
    ring = 0.5 + 0.5 * np.cos(2.0 * np.pi * phase)
    nu, nv = (g.count(2), g.count(32)) if along is g.u else (g.count(32), g.count(2))
    streak = perlin(rng, g.u, g.v, nu, nv) / 0.21
    t = 0.55 + shade[r, p] - 0.22 * ring**3 + 0.05 * streak
    edge = _box_edge(fs, ft, length, width)
    gap = coverage(edge - rng.uniform(0.4, 0.7))
    return _mix(_c(c.dark) * 0.55, _ramp(c, t), gap)


def _marble(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    directions = [(2, 0), (0, 2), (1, 1), (1, -1), (2, 1), (1, 2), (2, -1), (1, -2)]
    a, b = (g.count(1) * d for d in directions[int(rng.integers(len(directions)))])
    # Veins: the zero lines of a wave along (a, b), bent by a smooth warp and roughened by
    # a faint fine one, drawn a set width in pixels. A warp steeper than the wave would
    # close them into contour-map loops.
    bend = fbm(rng, g.u, g.v, g.count(2), 2, gain=0.3) * rng.uniform(0.12, 0.2)
    rough = fbm(rng, g.u, g.v, g.count(8), 3, turbulent=True) * 0.02
    main = np.sin(np.pi * (a * g.u + b * g.v + bend + rough))
    d_main = distance_to_zero(main)
    a2, b2 = (g.count(1) * d for d in directions[int(rng.integers(len(directions)))])
    bend2 = fbm(rng, g.u, g.v, g.count(2), 2, gain=0.3) * 0.3
    fine = np.sin(np.pi * (b2 * g.u - a2 * g.v + bend2 + rough))
    d_fine = distance_to_zero(fine)
    width = rng.uniform(0.4, 0.9)
    lines = np.maximum(
        coverage(width - d_main) + 0.3 * np.exp(-d_main / 3.0),
        0.35 * coverage(0.2 - d_fine) + 0.1 * np.exp(-d_fine / 2.0),
    )
    cloud = fbm(rng, g.u, g.v, g.count(2), 4)
    lines = np.clip(lines, 0.0, 1.0)
    if luma(c.base) < 0.45:  # dark marble (green, red, black...): pale veins
        return _mix(_ramp(c, 0.35 + 0.07 * cloud), _c(c.ground), 0.85 * lines)
    return _mix(_ramp(c, 0.78 + 0.07 * cloud), _c(c.dark), 0.8 * lines)


def _stone(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    n = g.count(float(rng.choice([3, 4, 5])))
    wu = g.u + 0.06 / n * fbm(rng, g.u, g.v, g.count(6), 2)  # ragged stone outlines
    wv = g.v + 0.06 / n * fbm(rng, g.u, g.v, g.count(6), 2)
    f1, f2, cell = voronoi(rng, wu, wv, n, rng.uniform(0.6, 0.9))
    edge = 0.5 * (f2 - f1) * g.px(n)  # px to the stone's border, roughly
    gap = rng.uniform(0.6, 1.2)
    shade = rng.normal(0.0, 0.1, n * n)
    grit = fbm(rng, g.u, g.v, g.count(12), 3)
    round_ = np.clip((edge - gap) / (0.2 * g.px(n)), 0.0, 1.0) ** 0.5  # domed stones
    t = 0.38 + shade[cell] + 0.18 * round_ + 0.05 * grit
    joint = _c(c.joint) * (0.9 + 0.06 * grit)[..., None]
    return _mix(joint, _ramp(c, t), coverage(edge - gap))


def _stripes(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    directions = [(1, 0), (0, 1), (1, 1), (1, -1)]
    da, db = directions[int(rng.integers(len(directions)))]
    k = g.count(rng.uniform(3.0, 6.5) / np.hypot(da, db))  # integer: periodic on the torus
    a, b = k * da, k * db
    duty = rng.uniform(0.35, 0.6)
    f = a * g.u + b * g.v
    fr = f - np.floor(f)  # position within one stripe + gap
    span = g.period / np.hypot(a, b)  # px per stripe + gap
    inside = np.where(fr < duty, np.minimum(fr, duty - fr), -np.minimum(fr - duty, 1 - fr))
    weave = 0.03 * fbm(rng, g.u, g.v, g.count(16), 2)
    return _mix(_c(c.ground), _ramp(c, 0.5 + weave), coverage(inside * span))


def _checker(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    n = g.count(float(rng.choice([4, 6, 8])), even=True)  # even: parity must wrap
    # sin(πx) changes sign at every square's side: a smooth parity, 1 px of anti-aliasing.
    sx = np.clip(np.sin(np.pi * g.u * n) * 2.0 * g.px(n) / np.pi, -1.0, 1.0)
    sy = np.clip(np.sin(np.pi * g.v * n) * 2.0 * g.px(n) / np.pi, -1.0, 1.0)
    wear = 0.02 * fbm(rng, g.u, g.v, g.count(8), 3)
    ground = _c(c.ground) * (1.0 + wear)[..., None]
    return _mix(ground, _ramp(c, 0.5 + wear), 0.5 + 0.5 * sx * sy)


def _dots(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    offset_rows = rng.random() < 0.5
    cols = g.count(float(rng.choice([4, 5, 6])))
    rows = g.count(cols * BASE / g.period * (1.15 if offset_rows else 1.0), even=offset_rows)
    radius = rng.uniform(0.27, 0.4) * min(g.px(cols), g.px(rows))
    jitter = rng.uniform(-0.04, 0.04, (rows, cols, 2))
    size = 1.0 + rng.uniform(-0.06, 0.06, (rows, cols))
    y = g.v * rows
    row = np.floor(y)
    x = g.u * cols + (0.5 * (row % 2) if offset_rows else 0.0)
    col = np.floor(x)
    r, q = row.astype(np.intp) % rows, col.astype(np.intp) % cols
    dx = (x - col - 0.5 - jitter[r, q, 0]) * g.px(cols)
    dy = (y - row - 0.5 - jitter[r, q, 1]) * g.px(rows)
    dot = coverage(radius * size[r, q] - np.hypot(dx, dy))
    return _mix(_c(c.ground), _ramp(c, 0.5 - 0.04 * dy / radius), dot)


def _clouds(g: Grid, c: Colour, rng: np.random.Generator) -> np.ndarray:
    n = g.count(float(rng.choice([2, 3, 4])))
    octaves = max(1, int(np.log2(g.period / 2 / n)))  # finest lattice ≥ 2 px
    wu = g.u + 0.03 * fbm(rng, g.u, g.v, n, 2)
    wv = g.v + 0.03 * fbm(rng, g.u, g.v, n, 2)
    density = fbm(rng, wu, wv, n, octaves, gain=0.5)
    low = rng.uniform(-0.8, 0.0)
    cover = smoothstep(low, low + 1.8, density)
    return _ramp(c, 0.3 + 0.62 * cover + 0.05 * density)


PAINTERS: Mapping[str, Painter] = MappingProxyType(
    {
        "bricks": _bricks,
        "tiles": _tiles,
        "planks": _planks,
        "marble": _marble,
        "stone": _stone,
        "stripes": _stripes,
        "checker": _checker,
        "dots": _dots,
        "clouds": _clouds,
    }
)
