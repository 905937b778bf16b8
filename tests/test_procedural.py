"""The procedural textures (genart_core.textures): determinism, exact tileability, colour
words controlling the hue, the held-out split, captions and the dataset sequence."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from genart_core.textures import (
    CAPTIONS,
    COLOURS,
    FAMILIES,
    FAMILY_WORDS,
    HELD_OUT,
    caption,
    colour_stats,
    crop,
    dataset,
    pairs,
    render,
    vocabulary,
)

CHROMATIC = [c for c, col in COLOURS.items() if col.chromatic]
TWO_TONE = ("stripes", "checker", "dots")  # the colour's tone as a figure on a pale ground


def hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def nominal_hue(colour: str) -> float:
    return colorsys.rgb_to_hsv(*COLOURS[colour].base)[0] * 360.0


def seam_rank(image: np.ndarray) -> list[float]:
    """Where the wrap-around step (last column/row → first) ranks among the image's own
    neighbour steps, 0..1, for columns and rows: 0.5 on average when seams look like the
    interior, near 1 when they jump."""
    ranks = []
    for im in (image.astype(np.float64), image.transpose(1, 0, 2).astype(np.float64)):
        steps = np.abs(np.diff(im, axis=1)).mean(axis=(0, 2))  # (W - 1,)
        seam = np.abs(im[:, -1] - im[:, 0]).mean()
        ranks.append(float(((steps < seam).sum() + 0.5 * (steps == seam).sum()) / steps.size))
    return ranks


def test_vocabulary_of_the_model() -> None:
    assert len(FAMILIES) == 9 and len(COLOURS) == 10
    assert set(CAPTIONS) == set(FAMILIES)
    assert "red" in vocabulary() and "brick" in vocabulary() and "{c}" not in vocabulary()
    assert len(vocabulary()) < 50, vocabulary()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_colour_renders_a_textured_image(family: str) -> None:
    for colour in COLOURS:
        img = render(family, colour, 64, seed=3)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        lum = img.astype(np.float64) @ [0.299, 0.587, 0.114]
        assert lum.std() > 4.0, (family, colour, lum.std())
    assert render(family, "red", 100, seed=1, period=64).shape == (100, 100, 3)
    assert render(family, "red", 17, seed=1).shape == (17, 17, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_by_seed(family: str) -> None:
    a = render(family, "blue", 64, seed=5)
    assert np.array_equal(a, render(family, "blue", 64, seed=5))
    assert not np.array_equal(a, render(family, "blue", 64, seed=6))


@pytest.mark.parametrize("family", FAMILIES)
def test_exactly_tileable(family: str) -> None:
    # The fields are evaluated at u in [0, 2) without wrapping the coordinates first, so
    # this checks that they are periodic, not that we copied pixels.
    for colour, seed, period in (("red", 0, 64), ("white", 1, 64), ("black", 2, 48)):
        tile = render(family, colour, period, seed)
        twice = render(family, colour, 2 * period, seed, period=period)
        diff = np.abs(twice.astype(int) - np.tile(tile, (2, 2, 1)).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (colour, seed, diff.max())


@pytest.mark.parametrize("family", FAMILIES)
def test_seams_look_like_the_interior(family: str) -> None:
    """Tiled 2×2, a tile's seams step like its interior: over 24 seeds the wrap-around
    step ranks mid-pack among neighbour steps. A crop of a larger texture, which does not
    tile, ranks near the top for the families whose cut shows (the check has teeth)."""
    tiled, cut = [], []
    for seed in range(24):
        colour = list(COLOURS)[seed % len(COLOURS)]
        tiled += seam_rank(render(family, colour, 64, seed))
        cut += seam_rank(render(family, colour, 128, seed)[:64, :64])
    assert 0.3 < np.mean(tiled) < 0.7, (family, np.mean(tiled))
    if family not in ("bricks", "dots"):  # a random cut through these rarely jumps
        assert np.mean(cut) > 0.75, (family, np.mean(cut))


@pytest.mark.parametrize("family", FAMILIES)
def test_colour_words_control_the_hue(family: str) -> None:
    for seed in (0, 1):
        stats = {c: colour_stats(render(family, c, 64, seed)) for c in COLOURS}
        for c in CHROMATIC:
            assert hue_gap(stats[c].hue, nominal_hue(c)) < 20.0, (c, stats[c], nominal_hue(c))
            assert stats[c].saturation > 0.13, (c, stats[c])
        expected = hue_gap(nominal_hue("red"), nominal_hue("blue"))  # ≈ 134°
        got = hue_gap(stats["red"].hue, stats["blue"].hue)
        assert abs(got - expected) < 25.0, (got, expected)
        for c in ("white", "black"):
            assert stats[c].saturation < 0.12, (c, stats[c])
        # The word's own tone is there: white's brightest pixels near white, black's
        # darkest near black; on average too, except where it is the figure on a ground
        # (black dots on pale grey, white dots on grey).
        value = {c: render(family, c, 64, seed).max(axis=2) / 255.0 for c in ("white", "black")}
        assert np.percentile(value["white"], 95) > 0.8 > 0.15 > np.percentile(value["black"], 5)
        if family not in TWO_TONE:
            assert stats["white"].value > stats["black"].value + 0.3, (
                stats["white"],
                stats["black"],
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_depends_on_the_seed_alone(family: str) -> None:
    lum = [render(family, c, 64, 4).astype(np.float64) @ [0.3, 0.6, 0.1] for c in ("red", "blue")]
    corr = np.corrcoef(lum[0].ravel(), lum[1].ravel())[0, 1]
    assert abs(corr) > 0.8, (family, corr)


def test_held_out_pairs() -> None:
    every = {(c, f) for c in COLOURS for f in FAMILIES}
    assert every > HELD_OUT and len(HELD_OUT) == 9
    assert sorted(f for _, f in HELD_OUT) == sorted(FAMILIES)  # one per family
    assert len({c for c, _ in HELD_OUT}) == 9  # at most one per colour
    train = set(pairs("train"))
    assert train | HELD_OUT == every and not train & HELD_OUT
    assert {c for c, _ in train} == set(COLOURS) and {f for _, f in train} == set(FAMILIES)
    assert set(pairs("held_out")) == HELD_OUT


def test_train_split_never_holds_a_held_out_pair() -> None:
    data = dataset("train")
    specs = [data.spec(i) for i in range(3000)]
    assert not {(c, f) for f, c, _ in specs} & HELD_OUT
    # Every block of len(pairs) consecutive samples covers every train pair once.
    n = len(pairs("train"))
    assert {(c, f) for f, c, _ in specs[n : 2 * n]} == set(pairs("train"))
    held = dataset("held_out")
    assert {(c, f) for f, c, _ in (held.spec(i) for i in range(100))} == HELD_OUT
    for sample in (data[i] for i in range(20)):
        assert (sample.colour, sample.family) not in HELD_OUT
        assert sample.colour in sample.caption.split()


@pytest.mark.parametrize("family", FAMILIES)
def test_captions_name_the_colour_and_the_family(family: str) -> None:
    rng = np.random.default_rng(0)
    word = FAMILY_WORDS[family]
    for colour in COLOURS:
        seen = set()
        for _ in range(12):
            text = caption(family, colour, rng)
            words = text.split()
            assert colour in words and (word in words or word + "s" in words), text
            assert set(words) <= set(vocabulary()), text
            seen.add(text)
        assert len(seen) > 1, seen


def test_dataset_samples() -> None:
    data = dataset("held_out", size=32, seed=7, length=30)
    assert len(data) == 30 and len(list(data)) == 30
    s = data[3]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert np.array_equal(s.image, dataset("held_out", size=32, seed=7, length=30)[3].image)
    assert np.array_equal(data[-1].image, data[29].image)
    assert not np.array_equal(s.image, dataset("held_out", size=32, seed=8)[3].image)
    with pytest.raises(IndexError):
        data[30]
    cached = dataset("train", length=4, cache=True)
    assert cached[1] is cached[1]
    crops = dataset("train", size=64, render_size=256, length=3)
    assert crops[0].image.shape == (64, 64, 3)


def test_crop_wraps_around_a_tile() -> None:
    img = render("bricks", "red", 64, 0)
    rng = np.random.default_rng(1)
    piece = crop(img, 48, rng)
    assert piece.shape == (48, 48, 3)
    big = crop(img, 96, rng)  # larger than the tile: it repeats
    assert np.array_equal(big[:32], big[64:96])
    # A crop of a tileable image is a window of its 2×2 tiling.
    tiled = np.tile(img, (2, 2, 1))
    assert any(
        np.array_equal(piece, tiled[y : y + 48, x : x + 48]) for y in range(64) for x in range(64)
    )


def test_unknown_words_are_refused() -> None:
    with pytest.raises(ValueError, match="known: bricks"):
        render("lava", "red")
    with pytest.raises(ValueError, match="known: red"):
        caption("bricks", "mauve", np.random.default_rng(0))
    with pytest.raises(ValueError):
        dataset("test")  # type: ignore[arg-type]
