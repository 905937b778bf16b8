"""Temporal coherence, measured (issue 9): two Blender-rendered shots (a turntable and a
camera dolly, bench/temporal_scenes.py, through the add-on's capture) stylized through a
real sidecar with the embedded micro model, naive (each frame on its own, fixed seed)
and with each coherence configuration, same steps, strength and seed. One line per
configuration and shot:

- warping error (mean masked |frame t − frame t−1 warped by the exact flow|, 0-255) and
  its ratio to naive's; the renders' own error is the floor;
- fidelity: mean edge correlation of each stylized frame with its render, against naive's
  (and "layout": the same on 4×4 block means, the render's shapes rather than texture);
- stylization: mean |stylized − render|, against naive's;
- fresh: of the disoccluded pixels where the render itself changed, the share whose
  stylized content changed with it rather than keeping warped history
  (`flow.fresh_share` with the renders).

Target (issue 9), for one configuration: error ≤ 1/3 of naive's, fidelity ≥ naive's,
stylization ≥ 0.8 × naive's.

`--chunk K` measures a farm's chunk boundary instead: the shot stylized whole (with
`--chunk-config`), and again as a chunk that starts at frame K after W warm-up frames
(each W of `--warmups`, the chunk run on its own). One line per W: the seam's warping
error (the whole run's frame K−1 against the chunk's frame K, as two chunks of a farm
meet) against the whole run's own error at K and naive's, and how far the chunk's frame
K is from the whole run's (mean |difference|, 0-255). Usage:

    .venv/bin/python bench/temporal.py [--frames 16] [--size 128x96] [--steps 20]
        [--strength 0.6] [--prompt "red brick wall"] [--json OUT]
        [--chunk 12 --warmups 0,4,8,12 --chunk-config "post 0.9 guided 32"]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "dev"))

from genart_core.imaging.passes import read_passes  # noqa: E402
from genart_core.protocol import Attachment, Client, ConnectionInfo  # noqa: E402
from genart_core.temporal.flow import edge_correlation, fresh_share, warping_error  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {  # every switch explicit: defaults may change
    "naive": {"coherence": "off"},
    **{
        name: {
            "coherence": "exact_flow",
            "coherence_guided": guided,
            "coherence_init": init,
            "coherence_noise": noise,
            "coherence_post": post,
            "coherence_post_radius": radius,
            "coherence_attention": attention,
        }  # fmt: skip
        for name, init, noise, post, radius, attention, guided in (
            ("post 0.5", 0.0, False, 0.5, 0, False, 0.0),
            ("post 0.8", 0.0, False, 0.8, 0, False, 0.0),
            ("init 0.5", 0.5, False, 0.0, 0, False, 0.0),
            ("noise", 0.0, True, 0.0, 0, False, 0.0),
            ("attention", 0.0, False, 0.0, 0, True, 0.0),
            ("noise + attention", 0.0, True, 0.0, 0, True, 0.0),
            ("noise + post 0.8", 0.0, True, 0.8, 0, False, 0.0),
            ("noise + post 0.9", 0.0, True, 0.9, 0, False, 0.0),
            ("noise + post 0.9 guided 8", 0.0, True, 0.9, 0, False, 8.0),
            ("post 0.9 guided 24", 0.0, False, 0.9, 0, False, 24.0),
            ("post 0.95 guided 24", 0.0, False, 0.95, 0, False, 24.0),
            ("post 0.9 guided 32", 0.0, False, 0.9, 0, False, 32.0),
            ("noise + post 0.9 guided 16", 0.0, True, 0.9, 0, False, 16.0),
            ("noise + post 0.95 guided 8", 0.0, True, 0.95, 0, False, 8.0),
            ("noise + post 0.8 guided 8", 0.0, True, 0.8, 0, False, 8.0),
            ("noise + post 0.9 guided 24", 0.0, True, 0.9, 0, False, 24.0),
            ("noise + post 0.9 guided 32", 0.0, True, 0.9, 0, False, 32.0),
            ("noise + post 0.95 guided 16", 0.0, True, 0.95, 0, False, 16.0),
            ("noise + post 0.95 guided 24", 0.0, True, 0.95, 0, False, 24.0),
            ("noise + post 0.9 coarse 2", 0.0, True, 0.9, 2, False, 0.0),
            ("noise + post 0.95 coarse 2", 0.0, True, 0.95, 2, False, 0.0),
            ("noise + post 0.9 coarse 4", 0.0, True, 0.9, 4, False, 0.0),
            ("noise + attention + post 0.8", 0.0, True, 0.8, 0, True, 0.0),
            ("init 0.5 + noise + post 0.8", 0.5, True, 0.8, 0, False, 0.0),
        )
    },
}


def render_shots(tmp: Path, frames: int, size: tuple[int, int]) -> dict[str, Any]:
    import build_addon

    zip_path = build_addon.build(tmp / "addon")
    env = build_addon.sandbox_env(tmp / "blender-user", tmp / "home")
    script = (
        f"ZIP = {str(zip_path)!r}\nOUT = {str(tmp / 'shots')!r}\nFRAMES = {frames}\n"
        f"SIZE = {size!r}\n" + (ROOT / "bench" / "temporal_scenes.py").read_text()
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp, capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    if "GENART-TEMPORAL-SCENES-OK" not in proc.stdout:
        raise SystemExit(f"Blender failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((tmp / "shots" / "shots.json").read_text())


def start_sidecar(state: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sidecar", "--state-dir", str(state)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ConnectionInfo.read(state / "connection.json").pid == proc.pid:
                return proc
        except (OSError, ValueError):
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the sidecar did not start")


def stylize(c: Client, shot: list[dict[str, Any]], params: dict[str, Any]) -> list[np.ndarray]:
    job = c.submit("sd", params, sequence=True, frames=len(shot))
    for i, f in enumerate(shot):
        c.append(job, i, inputs={
            "image": Attachment.blob("image", Path(f["color"]).read_bytes(), "png"),
            "passes": Attachment.blob("passes", Path(f["passes"]).read_bytes(), "exr"),
        })  # fmt: skip
    c.close_input(job)
    c.wait(job, timeout=3600)
    out = []
    for i in range(len(shot)):
        a = c.result(job, i).attachments["image"]
        assert a.shape is not None
        out.append(np.frombuffer(a.data, np.uint8).reshape(a.shape)[..., :3].copy())
    return out


def measure(frames: list[np.ndarray], renders: list[np.ndarray], passes: list[Any]) -> dict:
    vec = [p.vector for p in passes]
    ids = [p.object_index for p in passes]
    dep = [p.depth for p in passes]
    fresh = [
        fresh_share(
            frames[t],
            frames[t - 1],
            vec[t],
            vec[t - 1],
            ids=(ids[t - 1], ids[t]),
            depths=(dep[t - 1], dep[t]),
            renders=(renders[t - 1], renders[t]),
        )  # fmt: skip
        for t in range(1, len(frames))
    ]
    fresh_known = [x for x in fresh if x is not None]
    pairs = list(zip(frames, renders, strict=True))
    return {
        "warping_error": warping_error(frames, vec, ids=ids, depths=dep).mean,
        "fidelity": float(np.mean([edge_correlation(f, r) for f, r in pairs])),
        "layout": float(np.mean([edge_correlation(f, r, scale=4) for f, r in pairs])),
        "stylization": float(
            np.mean([np.abs(f.astype(float) - r.astype(float)).mean() for f, r in pairs])
        ),  # fmt: skip
        "fresh": float(np.mean(fresh_known)) if fresh_known else None,
    }


def pair_error(a: np.ndarray, b: np.ndarray, passes: list[Any], t: int) -> float:
    """The warping error between frame t−1 `a` and frame t `b`."""
    p0, p1 = passes[t - 1], passes[t]
    return warping_error(
        [a, b],
        [p0.vector, p1.vector],
        ids=[p0.object_index, p1.object_index],
        depths=[p0.depth, p1.depth],
    ).mean


def chunk_seams(
    c: Client,
    frames: list[dict[str, Any]],
    passes: list[Any],
    base: dict[str, Any],
    config: str,
    k: int,
    warmups: list[int],
) -> dict[str, Any]:
    """Chunk boundary at frame k after each warm-up (see the module docstring)."""
    naive = stylize(c, frames[: k + 1], {**base, **CONFIGS["naive"]})
    whole = stylize(c, frames[: k + 1], {**base, **CONFIGS[config]})
    rows: dict[str, Any] = {
        "naive": pair_error(naive[k - 1], naive[k], passes, k),
        "in_sequence": pair_error(whole[k - 1], whole[k], passes, k),
    }
    print(f"  frame {k}: naive {rows['naive']:.2f}, in sequence ({config}) "
          f"{rows['in_sequence']:.2f}", flush=True)  # fmt: skip
    for w in warmups:
        start = max(0, k - w)
        chunk = stylize(c, frames[start : k + 1], {**base, **CONFIGS[config]})
        seam = pair_error(whole[k - 1], chunk[-1], passes, k)
        drift = float(np.abs(chunk[-1].astype(float) - whole[k].astype(float)).mean())
        rows[f"warmup {w}"] = {"seam": seam, "drift": drift}
        print(f"  warm-up {w:2}: seam error {seam:5.2f} (×{seam / rows['in_sequence']:.2f} "
              f"in sequence, ×{seam / rows['naive']:.2f} naive)  drift {drift:.2f}",
              flush=True)  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", default="128x96")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--prompt", default="red brick wall")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--no-depth", action="store_true", help="send no near/far: img2img without depth control"
    )
    ap.add_argument("--chunk", type=int, default=0, help="measure a chunk boundary at frame K")
    ap.add_argument("--warmups", default="0,4,8,12")
    ap.add_argument("--chunk-config", default="post 0.9 guided 32", help="the defaults'")
    a = ap.parse_args()
    from PIL import Image

    size = tuple(int(v) for v in a.size.split("x"))
    names = [n.strip() for n in a.configs.split(",")]
    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        t0 = time.monotonic()
        shots = render_shots(tmp, a.frames, size)  # type: ignore[arg-type]
        print(f"rendered 2 shots × {a.frames} frames at {a.size} in {time.monotonic() - t0:.0f} s")
        proc = start_sidecar(tmp / "state")
        try:
            with Client.connect(tmp / "state" / "connection.json", client_name="bench") as c:
                for shot, frames in shots.items():
                    renders = [np.asarray(Image.open(f["color"]).convert("RGB")) for f in frames]
                    passes = [read_passes(Path(f["passes"])) for f in frames]
                    floor = warping_error(renders, [p.vector for p in passes],
                                          ids=[p.object_index for p in passes],
                                          depths=[p.depth for p in passes]).mean  # fmt: skip
                    print(f"\n{shot}: renders' own warping error {floor:.2f}")
                    rows: dict[str, Any] = {"renders_warping_error": floor}
                    for name in names if not a.chunk else ["chunk"]:
                        base = {"prompt": a.prompt, "steps": a.steps, "strength": a.strength,
                                "width": size[0], "height": size[1], "seed": 1,
                                # sequence-wide, as the add-on's Stylize sends them: the
                                # embedded model's depth ControlNet follows each frame's depth
                                "near": 0.0 if a.no_depth else min(f["near"] for f in frames),
                                "far": 0.0 if a.no_depth else max(f["far"] for f in frames),
                                }  # fmt: skip
                        if a.chunk:
                            warm = [int(w) for w in a.warmups.split(",")]
                            rows["chunk"] = chunk_seams(
                                c, frames, passes, base, a.chunk_config, a.chunk, warm
                            )
                            continue
                        t0 = time.monotonic()
                        m = measure(stylize(c, frames, {**base, **CONFIGS[name]}), renders, passes)
                        m["seconds"] = time.monotonic() - t0
                        rows[name] = m
                        n = rows.get("naive", m)
                        fresh = "-" if m["fresh"] is None else f"{m['fresh']:.2f}"
                        print(
                            f"  {name:30} error {m['warping_error']:6.2f} "
                            f"(×{m['warping_error'] / n['warping_error']:.2f})  fidelity "
                            f"{m['fidelity']:.3f} (naive {n['fidelity']:.3f})  layout "
                            f"{m['layout']:.3f} (naive {n['layout']:.3f})  stylization "
                            f"{m['stylization']:5.1f} (×{m['stylization'] / n['stylization']:.2f})"
                            f"  fresh {fresh}  {m['seconds']:.0f} s",
                            flush=True,
                        )
                    table[shot] = rows
        finally:
            proc.terminate()
            proc.wait(30)
    if a.json:
        a.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
