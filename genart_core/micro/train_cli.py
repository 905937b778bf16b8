"""`genart train diffusion|vqgan|controlnet`: train a micro model locally, resuming from --out.

    genart train diffusion --out models/my-micro-sd --steps 4200
    genart train diffusion --out models/my-sd --data ~/textures --steps 6000
    genart train vqgan --out models/my-vqgan --steps 5600 --disc-start 1200
    genart train controlnet --out models/my-depth --data renders/ --steps 2000

--out is a diffusers folder plus training/ (optimiser state) and metrics.json; it is
checkpointed every --save-every steps and at the end, and a run on a folder that already
holds a checkpoint resumes it with its saved configuration (the flags then only set
--steps and the cadence). Diffusion: --data is "procedural" (the built-in textures) or a folder of
images whose captions come from a same-named .txt file or else the file name.
ControlNet: --data is a folder of NAME.png (a render), NAME.control.png (its disparity map)
and NAME.txt (its caption), as dev/render_depth_data.py writes them with Blender; --base is
the pipeline it controls (default: the embedded micro model), whose UNet trains along
unless --unet-lr is 0.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _diffusion_parser(sub: Any) -> None:
    p = sub.add_parser("diffusion", help="the micro SD model (autoencoder, then UNet)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True, help="total steps of both stages")
    p.add_argument("--ae-steps", type=int, default=1200, help="steps of the autoencoder stage")
    p.add_argument("--data", default="procedural")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ae-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ae-lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999, help="0: no moving average")
    p.add_argument("--size", type=int, default=64, help="training resolution (pixels)")
    p.add_argument("--unet-channels", default="32,64,128")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the checkpoint in --out")
    p.add_argument("--eval-seeds", type=int, default=8, help="seeds per evaluation prompt")
    p.add_argument("--eval-images", type=int, default=180, help="autoencoder evaluation images")


def _vqgan_parser(sub: Any) -> None:
    p = sub.add_parser("vqgan", help="the micro VQGAN (VQModel + patch-GAN)")
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
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def _controlnet_parser(sub: Any) -> None:
    p = sub.add_parser("controlnet", help="a depth ControlNet for a micro SD model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", required=True, help="folder of NAME.png + NAME.control.png")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--base", default="", help="pipeline folder (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="renders per step")
    p.add_argument("--texture-batch", type=int, default=16, help="textures per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--unet-lr", type=float, default=1e-4, help="0: the UNet stays frozen")
    p.add_argument("--ema", type=float, default=0.999, help="0: no moving average")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--hold-out", type=int, default=200, help="triples kept for evaluation")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the checkpoint in --out")
    p.add_argument("--eval-maps", type=int, default=48, help="held-out maps to evaluate on")
    p.add_argument("--eval-seeds", type=int, default=8, help="seeds per colour prompt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="genart train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="model", required=True)
    _diffusion_parser(sub)
    _vqgan_parser(sub)
    _controlnet_parser(sub)
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        trainers = {
            "diffusion": train_diffusion,
            "vqgan": train_vqgan,
            "controlnet": train_controlnet,
        }
        return trainers[a.model](a)
    except ValueError as exc:  # bad data folder, bad configuration
        print(f"genart train: {exc}")
        return 2


def _loop(trainer: Any, a: argparse.Namespace, line: Callable[[Any], str]) -> float:
    """Trains to `a.steps`, a log line every `a.log_every` steps (`line` says what the step
    measured), a checkpoint every `a.save_every`; returns the wall time."""
    t0 = time.perf_counter()
    window: list[float] = []
    while trainer.step < a.steps:
        log = trainer.train_step()
        window.append(log.seconds)
        if log.step % a.log_every == 0 or log.step == a.steps:
            pace = sum(window) / len(window)
            print(f"step {log.step}/{a.steps} {line(log)} {pace:.3f} s/step", flush=True)
            window.clear()
        if log.step % a.save_every == 0 and log.step < a.steps:
            trainer.save(a.out)
            print(f"checkpoint {a.out} at step {log.step}", flush=True)
    return time.perf_counter() - t0


def train_vqgan(a: argparse.Namespace) -> int:
    from .train_vqgan import TrainConfig, Trainer, evaluation_dict, find_checkpoint
    from .vqgan import LossConfig, VQConfig

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

    def line(log: Any) -> str:
        gan = f" gan {log.gan:.3f} d {log.d_loss:.3f} w {log.gan_weight:.3f}" if log.d_loss else ""
        return (
            f"loss {log.loss:.4f} l1 {log.l1:.4f} grad {log.grad:.4f} vq {log.vq:.4f}{gan} "
            f"psnr {log.psnr:.2f}"
        )

    wall = _loop(trainer, a, line)
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


def train_diffusion(a: argparse.Namespace) -> int:
    from . import sd
    from .train_sd import SDTrainConfig, Trainer, evaluation
    from .train_vqgan import find_checkpoint

    if find_checkpoint(a.out) is not None:
        trainer = Trainer.load(a.out)
        print(f"resuming {a.out} at step {trainer.step}", flush=True)
    else:
        cfg = SDTrainConfig(
            model=sd.MicroSDConfig(
                unet_channels=tuple(int(c) for c in a.unet_channels.split(",")), size=a.size
            ),
            seed=a.seed,
            ae_steps=a.ae_steps,
            ae_batch=a.ae_batch,
            ae_lr=a.ae_lr,
            batch=a.batch,
            lr=a.lr,
            ema=a.ema,
            data=a.data,
        )
        trainer = Trainer(cfg)
        sizes = {
            n: sum(x.numel() for x in getattr(trainer.pipe, n).parameters())
            for n in ("vae", "unet", "text_encoder")
        }
        print(f"new micro SD: {sizes} params, {cfg}", flush=True)

    def line(log: Any) -> str:
        detail = " ".join(f"{k} {v:.4g}" for k, v in log.detail.items())
        return f"{log.stage} loss {log.loss:.4f} {detail}"

    wall = 0.0 if a.evaluate else _loop(trainer, a, line)
    sheet = a.out.with_name(a.out.name + "-samples.png")
    metrics = evaluation(trainer, wall, sheet, a.eval_seeds, a.eval_images)
    trainer.save(a.out, metrics)
    q = metrics.get("quality")
    if q:
        print(
            f"colour pass rate over {q['seeds']} seeds: seen {q['colour_pass_seen']:.0%}, "
            f"held-out {q['colour_pass_held_out']:.0%}; samples {sheet}"
        )
    print(f"saved {a.out} (this run: {wall:.0f} s); metrics: {a.out / 'metrics.json'}")
    return 0


def train_controlnet(a: argparse.Namespace) -> int:
    from .quality import evaluate_pipeline
    from .train_control import (
        ControlTrainConfig,
        ControlTrainer,
        evaluate_control,
        evaluate_img2img,
    )
    from .train_vqgan import find_checkpoint

    if find_checkpoint(a.out) is not None:
        trainer = ControlTrainer.load(a.out)
        print(f"resuming {a.out} at step {trainer.step}", flush=True)
    else:
        cfg = ControlTrainConfig(
            data=str(a.data),
            base=a.base,
            seed=a.seed,
            size=a.size,
            batch=a.batch,
            texture_batch=a.texture_batch,
            lr=a.lr,
            unet_lr=a.unet_lr,
            ema=a.ema,
            hold_out=a.hold_out,
        )
        trainer = ControlTrainer(cfg)
        n = sum(x.numel() for x in trainer.controlnet.parameters())
        print(f"new ControlNet: {n:,} params, {cfg}", flush=True)

    def line(log: Any) -> str:
        detail = " ".join(f"{k} {v:.4g}" for k, v in log.detail.items())
        return f"loss {log.loss:.4f} {detail}"

    wall = 0.0 if a.evaluate else _loop(trainer, a, line)
    sheet = a.out.with_name(a.out.name + "-samples.png")
    pipe, net = trainer.exported()
    held = trainer.pairs.held_out()[: a.eval_maps]
    metrics: dict[str, Any] = {"step": trainer.step, "train_wall_s": round(wall, 1)}
    metrics["control"] = evaluate_control(pipe, net, held, sheet=sheet)
    metrics["img2img_layout"] = evaluate_img2img(pipe, held)
    metrics["quality"] = evaluate_pipeline(pipe, seeds=a.eval_seeds)
    trainer.save(a.out, metrics)
    c, i, q = metrics["control"], metrics["img2img_layout"], metrics["quality"]
    print(
        f"edge correlation with held-out depth maps: {c['edge_corr_control']} with control, "
        f"{c['edge_corr_no_control']} without, {c['edge_corr_renders']} for the renders; "
        f"img2img at {i['strength']}: {i['edge_corr']} (flipped {i['edge_corr_flipped']}); "
        f"colour pass seen {q['colour_pass_seen']:.0%}, held-out {q['colour_pass_held_out']:.0%}; "
        f"samples {sheet}"
    )
    print(f"saved {a.out} (this run: {wall:.0f} s); metrics: {a.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
