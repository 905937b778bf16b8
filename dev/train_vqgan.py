"""Train the micro VQGAN (issue 8) on the procedural textures; resume from --out.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python dev/train_vqgan.py \
        --steps 3000 --out out/micro-vqgan

--out is a diffusers VQModel folder (plus training/ and metrics.json), checkpointed every
--save-every steps and at the end; if it already holds a checkpoint the run resumes from
it with its saved configuration (the flags below then only set --steps and the cadence).
At the end the held-out and train-split metrics are printed and written to metrics.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from genart_core.micro.train_vqgan import (  # noqa: E402
    TrainConfig,
    Trainer,
    evaluation_dict,
    find_checkpoint,
)
from genart_core.micro.vqgan import LossConfig, VQConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, required=True, help="total steps (not additional)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--render-size", type=int, default=None)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--channels", default="32,48,64", help="per level; 3 levels = ×4")
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--disc-start", type=int, default=1000)
    p.add_argument("--disc-weight", type=float, default=0.5)
    p.add_argument("--grad-weight", type=float, default=1.0)
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--eval-images", type=int, default=180)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    if find_checkpoint(a.out) is not None:
        trainer = Trainer.load(a.out)
        print(f"resuming {a.out} at step {trainer.step}", flush=True)
    else:
        cfg = TrainConfig(
            vq=VQConfig(
                block_out_channels=tuple(int(c) for c in a.channels.split(",")),
                latent_channels=a.latent_channels,
                num_vq_embeddings=a.codes,
                sample_size=a.size,
            ),
            loss=LossConfig(
                grad_weight=a.grad_weight,
                disc_start=a.disc_start,
                disc_weight=a.disc_weight,
                adaptive=not a.no_adaptive,
            ),
            seed=a.seed,
            size=a.size,
            render_size=a.render_size,
            batch=a.batch,
            lr=a.lr,
            eval_images=a.eval_images,
        )
        trainer = Trainer(cfg)
        n = sum(p.numel() for p in trainer.vq.parameters())
        print(f"new micro VQGAN: {n:,} params ({4 * n / 1e6:.1f} MB fp32), {cfg}", flush=True)

    t0 = time.perf_counter()
    window: list[float] = []
    while trainer.step < a.steps:
        log = trainer.train_step()
        window.append(log.seconds)
        if log.step % a.log_every == 0 or log.step == a.steps:
            gan = (
                f" gan {log.gan:.3f} d {log.d_loss:.3f} w {log.gan_weight:.3f}"
                if log.d_loss
                else ""
            )
            print(
                f"step {log.step}/{a.steps} loss {log.loss:.4f} l1 {log.l1:.4f} "
                f"grad {log.grad:.4f} vq {log.vq:.4f}{gan} psnr {log.psnr:.2f} "
                f"{sum(window) / len(window):.3f} s/step",
                flush=True,
            )
            window.clear()
        if log.step % a.save_every == 0 and log.step < a.steps:
            trainer.save(a.out)
            print(f"checkpoint {a.out} at step {log.step}", flush=True)
    wall = time.perf_counter() - t0
    metrics = evaluation_dict(trainer, wall)
    trainer.save(a.out, metrics)
    for split in ("held_out", "train"):
        m = metrics[split]
        print(
            f"{split}: psnr {m['psnr_db']} dB, codes used {m['codes_used']}/"
            f"{metrics['codebook_size']} ({m['codebook_usage']:.1%}), perplexity "
            f"{m['perplexity']}",
            flush=True,
        )
    print(f"saved {a.out} (this run: {wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
