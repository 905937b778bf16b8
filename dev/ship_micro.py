"""Make a trained micro SD checkpoint the embedded default model (issue 8).

    .venv/bin/python dev/ship_micro.py out/micro-sd [--native 64]
    .venv/bin/python dev/ship_micro.py out/micro-depth --native 128

Copies the pipeline's components (not training/) as fp16 safetensors into
genart_core/micro/weights/genart-micro-sd/ (from a `genart train controlnet` checkpoint
its depth ControlNet too, as controlnet/ inside that folder), sets the UNet's
`sample_size` so the engine's native side is --native pixels, and writes
weights/pins.json: the sha256 of every file (checked whenever the model is used), the
total size, the notes the handshake shows, and the checkpoint's metrics and training
configuration, so the weights say how they were made. Weights are committed once and
replaced only with a measured reason (docs/micro-models.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genart_core.micro import (  # noqa: E402
    CONTROLNET_DIR,
    EMBEDDED_DIR,
    PINS_FILE,
    embedded_model,
)

NOTES = [
    "embedded micro model: 64 px procedural textures (9 families × 10 colours), trained "
    "by the project on 2 CPU cores; a demonstration and test model, not an artist's model",
]
NO_CONTROL_NOTE = (
    "no depth or normal ControlNet: texture from camera runs image-to-image on the render "
    "without depth control (docs/micro-models.md says why)"
)
DEPTH_NOTE = (
    "depth ControlNet (controlnet/), trained on Blender renders of primitives under the "
    "procedural textures (dev/render_depth_data.py): used when a request names no model; "
    "it follows silhouettes, with muddier textures than without it; no normal ControlNet"
)
LIMIT = 30 * 2**20  # issue 8: the shipped models stay ≤ 30 MB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--native", type=int, default=64, help="the engine's native side, pixels")
    a = p.parse_args(argv)
    import torch

    from genart_core.engines.sd.loading import load_pipeline
    from genart_core.micro.train_sd import save_pipeline

    pipe = load_pipeline(str(a.checkpoint), torch_dtype=torch.float32)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    pipe.unet.register_to_config(sample_size=a.native // scale)
    tmp = EMBEDDED_DIR.with_name(EMBEDDED_DIR.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pipeline(pipe, tmp, fp16=True)
    control = a.checkpoint / CONTROLNET_DIR
    if control.is_dir():
        from diffusers import ControlNetModel

        net = ControlNetModel.from_pretrained(control, local_files_only=True)
        net.to(torch.float16).save_pretrained(tmp / CONTROLNET_DIR, safe_serialization=True)
    files = {
        str(f.relative_to(tmp).as_posix()): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(tmp.rglob("*"))
        if f.is_file()
    }
    size = sum((tmp / f).stat().st_size for f in files)
    if size > LIMIT:
        raise SystemExit(f"{size / 2**20:.1f} MB is over the {LIMIT / 2**20:.0f} MB limit")
    metrics_path = a.checkpoint / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    state = a.checkpoint / "training" / "trainer.json"
    config = metrics.get("config") or (
        json.loads(state.read_text())["config"] if state.is_file() else None
    )
    trained = {
        "step": metrics.get("step"),
        "config": config,
        "autoencoder_psnr_held_out": metrics.get("held_out", {}).get("psnr_db"),
        "quality": metrics.get("quality"),
        "control": metrics.get("control"),
        "img2img_layout": metrics.get("img2img_layout"),
    }
    if control.is_dir() and config is not None and not config.get("base"):
        # tuned from the embedded model: keep how that one was trained
        old = json.loads(PINS_FILE.read_text()).get("trained", {}) if PINS_FILE.is_file() else {}
        trained["base"] = old.get("base", old)
    shutil.rmtree(EMBEDDED_DIR, ignore_errors=True)
    tmp.rename(EMBEDDED_DIR)
    PINS_FILE.write_text(
        json.dumps(
            {
                "name": EMBEDDED_DIR.name,
                "files": files,
                "size_bytes": size,
                "native_size": a.native,
                "notes": [*NOTES, DEPTH_NOTE if control.is_dir() else NO_CONTROL_NOTE],
                "trained": trained,
            },
            indent=1,
        )
        + "\n"
    )
    embedded_model.cache_clear()
    assert embedded_model() == EMBEDDED_DIR
    print(f"shipped {len(files)} files, {size / 2**20:.2f} MB, into {EMBEDDED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
