"""Contact sheets of the procedural textures, to look at (genart_core.textures).

    .venv/bin/python dev/preview_textures.py [--seed N] [--scale 2] [--time]

Writes out/textures.png (one row per family, one column per colour; held-out pairs framed
in red), out/textures_seeds.png (one row per family, eight seeds, alternating colours) and
out/textures_tiled.png (each family 2×2-tiled at 128 px, seams in the middle). --time
prints the render time per family at 64² and 256².
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genart_core.textures import COLOURS, FAMILIES, HELD_OUT, render  # noqa: E402

LABEL = 64  # px of the label column / row


def sheet(
    cells: list[list[np.ndarray]], rows: list[str], cols: list[str], scale: int
) -> Image.Image:
    size = cells[0][0].shape[0] * scale
    pad = 4
    img = Image.new(
        "RGB", (LABEL + len(cols) * (size + pad), 16 + len(rows) * (size + pad)), "white"
    )
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(cols):
        draw.text((LABEL + j * (size + pad) + 2, 2), name, fill="black")
    for i, name in enumerate(rows):
        y = 16 + i * (size + pad)
        draw.text((2, y + size // 2 - 6), name, fill="black")
        for j, cell in enumerate(cells[i]):
            tile = Image.fromarray(cell).resize((size, size), Image.NEAREST)
            x = LABEL + j * (size + pad)
            img.paste(tile, (x, y))
            if (cols[j], name) in HELD_OUT:
                draw.rectangle((x - 2, y - 2, x + size + 1, y + size + 1), outline="red", width=2)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--time", action="store_true")
    args = parser.parse_args()
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    colours = list(COLOURS)
    cells = [[render(f, c, 64, args.seed) for c in colours] for f in FAMILIES]
    sheet(cells, list(FAMILIES), colours, args.scale).save(out / "textures.png")
    seeds = [
        [render(f, colours[s % len(colours)], 64, args.seed + s) for s in range(8)]
        for f in FAMILIES
    ]
    sheet(seeds, list(FAMILIES), [f"seed {args.seed + s}" for s in range(8)], args.scale).save(
        out / "textures_seeds.png"
    )
    tiled = [
        [np.tile(render(f, c, 64, args.seed + 7), (2, 2, 1)) for c in ("red", "blue", "white")]
        for f in FAMILIES
    ]
    sheet(tiled, list(FAMILIES), ["red 2x2", "blue 2x2", "white 2x2"], 1).save(
        out / "textures_tiled.png"
    )
    print(f"wrote {out / 'textures.png'}, textures_seeds.png, textures_tiled.png")
    if args.time:
        for f in FAMILIES:
            line = []
            for size, reps in ((64, 50), (256, 5)):
                render(f, "red", size, 0)
                t0 = time.perf_counter()
                for s in range(reps):
                    render(f, "red", size, s)
                line.append(f"{size}²: {(time.perf_counter() - t0) / reps * 1e3:6.2f} ms")
            print(f"{f:8s} " + "  ".join(line))


if __name__ == "__main__":
    main()
