"""What generation means, measured (issue 8's quality bar): does a prompt's colour word
control the colour, does its family word control the structure?

- Colour: `ColourJudge` names the colour of an image of a known family as the nearest of
  the ten colour words' centroids for that family, computed from procedural renders
  (mean RGB and the mean of the more saturated half of the pixels). On procedural renders
  it is right ~100% of the time (`judge_accuracy` measures it); a generated "blue dots"
  passes when the judge says blue.
- Structure: `peakiness`, the share of the (mean-free, grey) image's spectral power in
  its strongest frequency and that frequency's mirror: high for stripes, checker, bricks
  and tiles, low for clouds, marble and stone.
- `evaluate_pipeline` runs a pipeline on prompts of seen and held-out colour × family
  pairs over several seeds and reports pass rates, peakiness against the procedural
  reference, and a contact sheet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..textures import COLOURS, FAMILIES, HELD_OUT, render

CAPTION = "{c} {f}"  # the prompts `evaluate_pipeline` asks: "blue planks", "red clouds"


def colour_features(image: np.ndarray) -> np.ndarray:
    """Mean RGB of all pixels and of the more saturated half (0..1), of uint8 (H, W, 3)."""
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    chroma = rgb.max(axis=1) - rgb.min(axis=1)
    top = rgb[np.argsort(chroma, kind="stable")[len(chroma) // 2 :]]
    return np.concatenate([rgb.mean(axis=0), top.mean(axis=0)])


class ColourJudge:
    """Nearest colour-word centroid within a family, from `n` procedural renders each."""

    def __init__(self, size: int = 64, n: int = 8, seed: int = 1000) -> None:
        self.colours = list(COLOURS)
        self.centroids = {
            f: np.stack(
                [
                    np.mean(
                        [colour_features(render(f, c, size, seed + i)) for i in range(n)],
                        axis=0,
                    )
                    for c in self.colours
                ]
            )
            for f in FAMILIES
        }

    def __call__(self, image: np.ndarray, family: str) -> str:
        d = ((self.centroids[family] - colour_features(image)) ** 2).sum(axis=1)
        return self.colours[int(np.argmin(d))]


def judge_accuracy(judge: ColourJudge, size: int = 64, n: int = 4, seed: int = 5000) -> float:
    """Share of fresh procedural renders (every pair, n seeds) the judge names right."""
    hits = [
        judge(render(f, c, size, seed + i), f) == c
        for f in FAMILIES
        for c in COLOURS
        for i in range(n)
    ]
    return float(np.mean(hits))


def peakiness(image: np.ndarray) -> float:
    """Share of the spectral power (DC removed) at the strongest frequency and its mirror."""
    grey = image.astype(np.float64).mean(axis=2)
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    total = power.sum()
    if total <= 0:
        return 0.0
    return float(min(1.0, 2.0 * power.max() / total))


def reference_peakiness(size: int = 64, n: int = 12, seed: int = 2000) -> dict[str, float]:
    """Mean peakiness of procedural renders per family (all colours)."""
    return {
        f: float(
            np.mean(
                [
                    peakiness(render(f, c, size, seed + i))
                    for c in COLOURS
                    for i in range(n // 4 or 1)
                ]
            )
        )
        for f in FAMILIES
    }


def seen_pairs() -> list[tuple[str, str]]:
    """One trained colour per family (colour, family), spread over the ten colours."""
    colours = list(COLOURS)
    out = []
    for i, f in enumerate(FAMILIES):
        for k in range(len(colours)):
            c = colours[(i * 3 + k) % len(colours)]
            if (c, f) not in HELD_OUT:
                out.append((c, f))
                break
    return out


@dataclass
class PromptResult:
    colour: str
    family: str
    held_out: bool
    judged: list[str]  # the judge's colour for each seed
    peakiness: list[float]

    @property
    def colour_pass(self) -> float:
        return float(np.mean([j == self.colour for j in self.judged]))


def evaluate_pipeline(
    pipe: Any,
    *,
    seeds: int = 8,
    steps: int = 20,
    guidance: float = 5.0,
    size: int = 64,
    sheet: Path | None = None,
    judge: ColourJudge | None = None,
) -> dict[str, Any]:
    """Colour pass rates (seen and held-out pairs), peakiness by family against the
    procedural reference, and (with `sheet`) a PNG contact sheet, one row per prompt."""
    import torch

    judge = judge or ColourJudge(size)
    pairs = [(c, f, False) for c, f in seen_pairs()] + [(c, f, True) for c, f in sorted(HELD_OUT)]
    results: list[PromptResult] = []
    rows = []
    for colour, family, held in pairs:
        prompt = CAPTION.format(c=colour, f=family)
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        images = pipe(
            [prompt] * seeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=gens,
            output_type="np",
        ).images
        u8 = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
        results.append(
            PromptResult(
                colour, family, held, [judge(im, family) for im in u8], [peakiness(im) for im in u8]
            )
        )
        rows.append(np.concatenate(list(u8), axis=1))
    if sheet is not None:
        from PIL import Image

        sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(sheet)
    ref = reference_peakiness(size)
    by_family = {
        f: round(float(np.mean([p for r in results if r.family == f for p in r.peakiness])), 4)
        for f in FAMILIES
    }

    def rate(held: bool) -> float:
        return round(float(np.mean([r.colour_pass for r in results if r.held_out == held])), 3)

    return {
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "colour_pass_seen": rate(False),
        "colour_pass_held_out": rate(True),
        "judge_accuracy_on_procedural": round(judge_accuracy(judge, size), 3),
        "prompts": {
            CAPTION.format(c=r.colour, f=r.family): {
                "held_out": r.held_out,
                "colour_pass": r.colour_pass,
                "judged": r.judged,
                "peakiness": round(float(np.mean(r.peakiness)), 4),
            }
            for r in results
        },
        "peakiness_by_family": by_family,
        "peakiness_reference": {f: round(v, 4) for f, v in ref.items()},
    }
