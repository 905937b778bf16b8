"""Speed of the embedded micro model (issue 8): txt2img at 64², 128² and 256² and img2img
on a Blender render at 256×144 (strength 0.6), each with 20 DDIM steps and classifier-free
guidance, through the same `StableDiffusionPipeline` the `sd` engine uses. Times are the
median of --rounds warm calls; the first call (loading, warm-up) is reported apart. The
ratios are against the 64² txt2img call of the same run. Usage:

    python bench/micro.py [--rounds 5] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from genart_core.engines.sd.loading import load_pipeline
    from genart_core.micro import embedded_model

    torch.set_num_threads(a.threads)
    folder = embedded_model()
    if folder is None:
        print("no embedded model in this checkout", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    pipe = load_pipeline(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    render = Image.open(ROOT / "docs" / "images" / "demo-scene.png").convert("RGB")
    render = render.resize((256, 144), Image.Resampling.LANCZOS)

    def txt(side: int) -> Any:
        return lambda: pipe(
            "red brick wall", num_inference_steps=a.steps, height=side, width=side,
            generator=torch.Generator().manual_seed(0), output_type="np",
        )  # fmt: skip

    def img() -> Any:
        return i2i(
            "blue marble", image=render, strength=0.6, num_inference_steps=a.steps,
            generator=torch.Generator().manual_seed(0), output_type="np",
        )  # fmt: skip

    cases = {
        "txt2img 64x64": txt(64),
        "txt2img 128x128": txt(128),
        "txt2img 256x256": txt(256),
        "img2img 256x144, strength 0.6": img,
    }
    results: dict[str, Any] = {}
    for name, call in cases.items():
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        times = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        results[name] = {"first_s": round(first, 3), "median_s": round(statistics.median(times), 3)}
    base = results["txt2img 64x64"]["median_s"]
    print(
        f"micro model {folder.name}: load {load_s:.2f} s; {a.steps} steps, CFG, "
        f"{a.threads} torch threads, {platform.machine()} {platform.processor() or ''}"
    )
    for name, r in results.items():
        r["ratio_to_64"] = round(r["median_s"] / base, 2)
        print(f"  {name:32} {r['median_s']:7.3f} s  (first {r['first_s']:.3f} s, "
              f"×{r['ratio_to_64']} of 64²)")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"load_s": load_s, "steps": a.steps, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
