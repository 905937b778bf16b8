"""Procedural, tileable, captioned textures: the training data of the micro models (issue 8).

Nine families (`FAMILIES`: bricks, tiles, planks, marble, stone, stripes, checker, dots,
clouds) in ten colour words (`COLOURS`), rendered in numpy from a seed: `render` gives an
exactly tileable uint8 (H, W, 3) image (every field lives on a torus, see `painters`),
`caption` a short text ("red brick wall", "a floor of blue tiles"), and `dataset` a
deterministic, indexable sequence of `Sample`s for a split. `HELD_OUT` names the
colour × family pairs that the train split never contains, to measure generalisation.

A seed varies what a family allows without changing what it is: position (a random
translation on the torus), scale (feature counts), orientation (stripes, planks, marble
veins), jitter, per-feature shading and the exact shade of the colour (hue ±5°,
saturation and value ±10%). The layout depends on the seed alone, so the same seed in
another colour gives the same bricks, recoloured.

Speed (one core of this 2-core machine under load, `dev/preview_textures.py --time`): a
64×64 render takes 0.5-3.2 ms (dots fastest; marble and stone, with finite differences
and a 3×3 Voronoi search, slowest), 1.8 ms a dataset sample on average; 256×256 takes
6-39 ms. So data is generated on the fly; `dataset(..., cache=True)` keeps what it
rendered, which pays off for crops of larger renders (~24 ms a sample from 256²).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

from .painters import PAINTERS, Colour, Grid

FAMILIES: tuple[str, ...] = (
    "bricks",
    "tiles",
    "planks",
    "marble",
    "stone",
    "stripes",
    "checker",
    "dots",
    "clouds",
)

# Every template holds its family's word (or its plural) and "{c}", the colour word, and
# never an article before the colour ("a orange ..."). Few words: the micro model's
# tokenizer needs every word as one token.
CAPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "bricks": ("{c} brick wall", "a wall of {c} bricks", "{c} bricks", "{c} brick texture"),
        "tiles": ("{c} tiles", "{c} tile floor", "a floor of {c} tiles", "{c} ceramic tiles"),
        "planks": ("{c} wooden planks", "{c} wood planks", "a floor of {c} planks"),
        "marble": ("{c} marble", "polished {c} marble", "a slab of {c} marble"),
        "stone": ("{c} stone wall", "{c} stones", "a path of {c} stones", "{c} stone texture"),
        "stripes": ("{c} stripes", "a pattern of {c} stripes", "{c} stripe pattern"),
        "checker": ("{c} checker", "{c} checker pattern", "a floor of {c} checker"),
        "dots": ("{c} dots", "{c} polka dots", "a pattern of {c} dots"),
        "clouds": ("{c} clouds", "soft {c} clouds", "{c} cloud texture"),
    }
)
FAMILY_WORDS: Mapping[str, str] = MappingProxyType({f: f.removesuffix("s") for f in FAMILIES})
"""The word every caption of a family contains, alone or plural ("brick", "checker")."""


COLOURS: Mapping[str, Colour] = MappingProxyType(
    {
        name: Colour.from_base(name, base)
        for name, base in (
            ("red", (0.80, 0.12, 0.10)),
            ("orange", (0.94, 0.50, 0.10)),
            ("yellow", (0.95, 0.83, 0.15)),
            ("green", (0.18, 0.60, 0.20)),
            ("blue", (0.15, 0.30, 0.82)),
            ("purple", (0.50, 0.20, 0.66)),
            ("pink", (0.97, 0.55, 0.72)),
            ("brown", (0.50, 0.30, 0.15)),
            ("white", (0.93, 0.93, 0.91)),
            ("black", (0.09, 0.09, 0.10)),
        )
    }
)

HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("green", "bricks"),
        ("orange", "tiles"),
        ("blue", "planks"),
        ("yellow", "marble"),
        ("purple", "stone"),
        ("brown", "stripes"),
        ("white", "checker"),
        ("black", "dots"),
        ("red", "clouds"),
    }
)
"""(colour, family) pairs never in the train split: 9 of 90 (10%), one per family and at
most one per colour (pink is never held out), so every family is trained in 9 colours and
every colour in at least 8 families. Chosen by hand to span hues, both achromatic words,
and families with one tone (bricks, stone) and two (stripes, checker, dots); the demo's
"red brick wall" and the natural "brown planks" and "white marble" stay trained."""


def pairs(split: Literal["train", "held_out"]) -> tuple[tuple[str, str], ...]:
    """The (colour, family) pairs of a split, in FAMILIES × COLOURS order."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    every = [(c, f) for f in FAMILIES for c in COLOURS]
    return tuple(p for p in every if (p in HELD_OUT) == (split == "held_out"))


def _check(family: str, colour: str) -> None:
    if family not in PAINTERS:
        raise ValueError(f"unknown texture family {family!r}; known: {', '.join(FAMILIES)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour word {colour!r}; known: {', '.join(COLOURS)}")


def render(
    family: str, colour: str, size: int = 64, seed: int = 0, *, period: int | None = None
) -> np.ndarray:
    """A size×size uint8 (H, W, 3) texture of `family` in `colour`, deterministic in seed.

    The texture repeats every `period` px (default: `size`, so the image is one seamless
    tile); render(f, c, 2 * p, s, period=p) is the 2×2 tiling of render(f, c, p, s). Its
    features keep their pixel size at any period (a 256 px render holds 16× the bricks of
    a 64 px one), which is what `crop` needs for larger crops.
    """
    _check(family, colour)
    period = size if period is None else period
    if size < 1 or period < 8:
        raise ValueError(f"size must be ≥ 1 and period ≥ 8 px, got {size} and {period}")
    layout, shade = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    # A random translation keeps grid lines off the image's borders; a 1 px margin gives
    # every pixel both neighbours for finite differences (marble).
    grid = Grid.make(size, period, margin=1, shift=(layout.random(), layout.random()))
    rgb = PAINTERS[family](grid, COLOURS[colour].jittered(shade), layout)[1:-1, 1:-1]
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def caption(family: str, colour: str, rng: np.random.Generator) -> str:
    """One of the family's caption templates with the colour word, e.g. "red brick wall"."""
    _check(family, colour)
    templates = CAPTIONS[family]
    return templates[int(rng.integers(len(templates)))].format(c=colour)


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can contain, sorted (for building the tokenizer)."""
    words = {w for ts in CAPTIONS.values() for t in ts for w in t.split() if w != "{c}"}
    return tuple(sorted(words | set(COLOURS)))


def crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size×size crop at a random position, wrapping around the edges: the textures
    tile, so every position is valid and `size` may even exceed the image."""
    h, w = image.shape[:2]
    rows = (int(rng.integers(h)) + np.arange(size)) % h
    cols = (int(rng.integers(w)) + np.arange(size)) % w
    return image[rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class Sample:
    """One training example: a texture and its caption, with what made them."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    family: str
    colour: str
    seed: int


class TextureDataset:
    """A deterministic, indexable sequence of `Sample`s of one split.

    Index i holds pair `pairs[order_b[i % P]]` of block b = i // P (P pairs, order_b a
    permutation seeded by (seed, split, b)), so any P consecutive samples cover every pair
    once in a shuffled order; its render seed derives from (seed, split, i). With
    `render_size` > `size`, each sample is a random crop of a larger render (same pixel
    scale, not itself tileable). Rendered on the fly; `cache` keeps each image rendered.
    """

    def __init__(
        self,
        split: Literal["train", "held_out"],
        size: int,
        seed: int,
        length: int,
        render_size: int | None,
        cache: bool,
    ) -> None:
        self.split = split
        self.pairs = pairs(split)
        self.size = size
        self.seed = seed
        self.length = length
        self.render_size = size if render_size is None else render_size
        if self.render_size < size:
            raise ValueError(f"render_size {self.render_size} is smaller than size {size}")
        self._key = (seed, 0 if split == "train" else 1)
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def spec(self, index: int) -> tuple[str, str, int]:
        """(family, colour, render seed) of a sample, without rendering it."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} outside 0..{self.length - 1}")
        block, pos = divmod(index, len(self.pairs))
        order = np.random.default_rng([*self._key, block]).permutation(len(self.pairs))
        colour, family = self.pairs[order[pos]]
        seed = int(np.random.SeedSequence([*self._key, index]).generate_state(1)[0])
        return family, colour, seed

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += self.length
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        family, colour, seed = self.spec(index)
        rng = np.random.default_rng([seed, 1])  # captions and crops: apart from render's
        image = render(family, colour, self.render_size, seed)
        if self.render_size > self.size:
            image = crop(image, self.size, rng)
        sample = Sample(image, caption(family, colour, rng), family, colour, seed)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(self.length))


def dataset(
    split: Literal["train", "held_out"] = "train",
    size: int = 64,
    seed: int = 0,
    *,
    length: int | None = None,
    render_size: int | None = None,
    cache: bool = False,
) -> TextureDataset:
    """The samples of a split (default length: 100 per pair, 8,100 train, 900 held out)."""
    n = len(pairs(split))
    return TextureDataset(
        split, size, seed, 100 * n if length is None else length, render_size, cache
    )


@dataclass(frozen=True)
class ColourStats:
    hue: float  # degrees, circular mean weighted by saturation × value; nan if grey
    saturation: float  # mean, 0..1
    value: float  # mean, 0..1


def colour_stats(image: np.ndarray) -> ColourStats:
    """Mean hue, saturation and value of a uint8 (H, W, 3) image: how tests (and model
    evaluations) check that a colour word controlled the colour."""
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-12), 0.0)
    r, g, b = rgb.T
    safe = np.maximum(chroma, 1e-12)
    hue = np.select(
        [mx == r, mx == g], [((g - b) / safe) % 6.0, (b - r) / safe + 2.0], (r - g) / safe + 4.0
    ) * (np.pi / 3.0)
    weight = sat * mx
    z = np.sum(weight * np.exp(1j * hue))
    mean_hue = float(np.degrees(np.angle(z)) % 360.0) if abs(z) > 1e-9 else float("nan")
    return ColourStats(mean_hue, float(sat.mean()), float(mx.mean()))
