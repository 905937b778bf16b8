"""Training the micro VQGAN on the procedural textures, with checkpoints and resume.

`Trainer` owns the VQModel, the discriminator and their Adam optimisers. Batch `s` is
samples s·B … s·B+B−1 of the train split (`textures.dataset`), and nothing in the models
is random, so a run is deterministic in its seed and a resumed run sees the data it would
have seen. Dead codes are restarted on encoder outputs of the current batch (Jukebox's
trick; a micro codebook otherwise collapses to a few dozen entries).

A checkpoint is a standard diffusers folder (`VQModel.save_pretrained`, safetensors) that
`VQModel.from_pretrained` and the `vqgan` engine load, plus `training/` (discriminator and
optimiser state, as safetensors + JSON) and `metrics.json` (held-out evaluation). It is
written next to the target and swapped in by renames (`save_checkpoint`); a crash leaves
the previous checkpoint or the new one, which `find_checkpoint` recovers.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..textures import dataset
from .vqgan import (
    Evaluation,
    LossConfig,
    PatchDiscriminator,
    VQConfig,
    adaptive_weight,
    build_vqmodel,
    evaluate,
    gradient_l1,
    hinge_d_loss,
    psnr,
    reconstruct,
    to_tensor,
    to_uint8,
)

STATE_DIR = "training"
METRICS = "metrics.json"
DONE = ".complete"  # written last into a new checkpoint folder


@dataclass(frozen=True)
class TrainConfig:
    vq: VQConfig = field(default_factory=VQConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    size: int = 64  # training crops
    render_size: int | None = None  # crops of larger renders when set
    batch: int = 8
    lr: float = 5e-4
    disc_lr: float = 2e-4
    restart_every: int = 50  # steps between dead-code restarts; 0: never
    eval_images: int = 180  # held-out images (20 per pair); as many from the train split

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vq"], d["loss"] = self.vq.to_dict(), self.loss.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(
            **{
                **d,
                "vq": VQConfig.from_dict(d["vq"]),
                "loss": LossConfig(**d["loss"]),
            }
        )


@dataclass
class StepLog:
    step: int
    loss: float  # the generator's total
    l1: float
    grad: float
    vq: float
    gan: float  # generator's GAN term (0 before the warm-up ends)
    d_loss: float  # discriminator's hinge loss (0 before the warm-up ends)
    gan_weight: float
    psnr: float  # of this training batch, dB
    seconds: float


class Trainer:
    def __init__(self, cfg: TrainConfig, vq: Any | None = None) -> None:
        self.cfg = cfg
        self.vq = build_vqmodel(cfg.vq, cfg.seed) if vq is None else vq.train()
        torch.manual_seed(cfg.seed + 1)
        self.disc = PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).train()
        self.opt = torch.optim.Adam(self.vq.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
        self.step = 0
        self.data = dataset(
            "train", cfg.size, cfg.seed, length=2**31 - 1, render_size=cfg.render_size
        )
        self._counts = torch.zeros(cfg.vq.num_vq_embeddings, dtype=torch.int64)

    def disc_active(self, step: int | None = None) -> bool:
        """Whether the discriminator trains (and the generator sees its loss) at `step`."""
        return (self.step if step is None else step) >= self.cfg.loss.disc_start

    def batch(self, step: int) -> np.ndarray:
        b = self.cfg.batch
        return np.stack([self.data[step * b + i].image for i in range(b)])  # (B, H, W, 3)

    def train_step(self, images: np.ndarray | None = None) -> StepLog:
        """One generator (+ discriminator, after the warm-up) update on `images` (uint8
        (B, H, W, 3); default: this step's batch of the train split)."""
        t0 = time.perf_counter()
        x = to_tensor(self.batch(self.step) if images is None else images)
        lc = self.cfg.loss
        if self.step == 0:
            self._init_codebook(x)
        r = reconstruct(self.vq, x)
        l1 = (r.image - x).abs().mean()
        grad = gradient_l1(r.image, x)
        rec = l1 + lc.grad_weight * grad
        gan = torch.zeros(())
        weight = torch.zeros(())
        active = self.disc_active()
        if active:
            gan = -self.disc(r.image).mean()
            last = self.vq.decoder.conv_out.weight
            weight = (
                adaptive_weight(rec, gan, last, lc.disc_weight)
                if lc.adaptive
                else torch.tensor(lc.disc_weight)
            )
        loss = rec + r.vq_loss + weight * gan
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        d_loss = torch.zeros(())
        if active:
            d_loss = hinge_d_loss(self.disc(x), self.disc(r.image.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
        self._track_codes(r)
        self.step += 1
        return StepLog(
            self.step,
            float(loss.detach()),
            float(l1.detach()),
            float(grad.detach()),
            float(r.vq_loss.detach()),
            float(gan.detach()),
            float(d_loss.detach()),
            float(weight.detach()),
            psnr(to_uint8(x), to_uint8(r.image)),
            time.perf_counter() - t0,
        )

    @torch.no_grad()
    def _init_codebook(self, x: torch.Tensor) -> None:
        """Codes drawn from the first batch's encoder outputs: diffusers' ±1/K uniform init
        puts every code near 0, far from the latents, so one code would win everything."""
        h = self.vq.encode(x).latents  # (B, C, h, w)
        self._restart(torch.arange(self.cfg.vq.num_vq_embeddings), h)

    @torch.no_grad()
    def _restart(self, dead: torch.Tensor, latent: torch.Tensor) -> None:
        z = latent.detach().movedim(1, 3).reshape(-1, latent.shape[1])  # (B·h·w, C)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        pick = torch.randint(len(z), (len(dead),), generator=g)
        noise = 0.01 * z.std() * torch.randn(len(dead), z.shape[1], generator=g)
        self.vq.quantize.embedding.weight.data[dead] = z[pick] + noise

    @torch.no_grad()
    def _track_codes(self, r: Any) -> None:
        every = self.cfg.restart_every
        if every <= 0:
            return
        self._counts += torch.bincount(r.codes.ravel(), minlength=len(self._counts))
        if self.step % every != every - 1:
            return
        dead = torch.nonzero(self._counts == 0).ravel()
        if len(dead):
            self._restart(dead, r.latent)
        self._counts.zero_()

    def evaluate(self, split: str = "held_out") -> Evaluation:
        n = self.cfg.eval_images
        ds = dataset(split, self.cfg.size, self.cfg.seed + 7, length=n)  # type: ignore[arg-type]
        samples = [ds[i] for i in range(n)]
        images = np.stack([s.image for s in samples])
        return evaluate(self.vq, images, [s.family for s in samples])

    # --- checkpoints -------------------------------------------------------------------

    def save(self, out: Path, metrics: dict[str, Any] | None = None) -> None:
        def write(tmp: Path) -> None:
            self.vq.save_pretrained(tmp, safe_serialization=True)
            state = tmp / STATE_DIR
            state.mkdir()
            from safetensors.torch import save_file

            save_file(self.disc.state_dict(), str(state / "discriminator.safetensors"))
            save_optimizers(state, {"opt": self.opt, "disc_opt": self.disc_opt})
            save_file({"counts": self._counts}, str(state / "codes.safetensors"))
            write_info(tmp, self.step, self.cfg.to_dict(), metrics)

        save_checkpoint(out, write)

    @classmethod
    def load(cls, folder: Path) -> Trainer:
        from diffusers import VQModel
        from safetensors.torch import load_file

        state = folder / STATE_DIR
        info = json.loads((state / "trainer.json").read_text())
        t = cls(
            TrainConfig.from_dict(info["config"]),
            VQModel.from_pretrained(folder, local_files_only=True),
        )
        t.disc.load_state_dict(load_file(str(state / "discriminator.safetensors")))
        load_optimizers(state, {"opt": t.opt, "disc_opt": t.disc_opt})
        t._counts = load_file(str(state / "codes.safetensors"))["counts"]
        t.step = int(info["step"])
        return t


def save_optimizers(state: Path, optimizers: dict[str, Any]) -> None:
    """Each optimizer's state as `<name>.safetensors` (tensors) + `<name>.json` (the rest):
    no pickle in a checkpoint."""
    from safetensors.torch import save_file

    for name, opt in optimizers.items():
        tensors, meta = _flatten_optimizer(opt.state_dict())
        save_file(tensors, str(state / f"{name}.safetensors"))
        (state / f"{name}.json").write_text(json.dumps(meta))


def load_optimizers(state: Path, optimizers: dict[str, Any]) -> None:
    """The states `save_optimizers` wrote (an optimizer that never stepped stays fresh)."""
    from safetensors.torch import load_file

    for name, opt in optimizers.items():
        meta = json.loads((state / f"{name}.json").read_text())
        tensors = load_file(str(state / f"{name}.safetensors"))
        if meta["scalars"] or tensors:
            opt.load_state_dict(_unflatten_optimizer(tensors, meta))


def write_info(
    folder: Path, step: int, config: dict[str, Any], metrics: dict[str, Any] | None
) -> None:
    """training/trainer.json (step, configuration) and, when given, metrics.json."""
    (folder / STATE_DIR / "trainer.json").write_text(
        json.dumps({"step": step, "config": config}, indent=1)
    )
    if metrics is not None:
        (folder / METRICS).write_text(_json(metrics))


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, slots in sd["state"].items():
        for key, v in slots.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{key}"] = v.contiguous()
            else:
                scalars[f"{pid}.{key}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, v in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _json(obj: Any) -> str:
    def fix(v: Any) -> Any:  # JSON has no inf: a perfect PSNR is written as "inf"
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return json.dumps(fix(obj), indent=1) + "\n"


def save_checkpoint(out: Path, write: Callable[[Path], None]) -> None:
    """Write a checkpoint folder with `write(tmp)` and swap it in for `out`: tmp = out.new
    is complete (DONE marker) before out → out.old → removed, so a crash at any point
    leaves a complete folder under one of the three names."""
    new, old = out.with_name(out.name + ".new"), out.with_name(out.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.parent.mkdir(parents=True, exist_ok=True)
    write(new)
    (new / DONE).write_text("")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out: Path) -> Path | None:
    """`out` if it holds a complete checkpoint, else what an interrupted swap left."""
    for p in (out, out.with_name(out.name + ".new"), out.with_name(out.name + ".old")):
        if (p / DONE).is_file() and (p / STATE_DIR / "trainer.json").is_file():
            if p != out:
                if out.exists():
                    shutil.rmtree(out)
                p.rename(out)
            return out
    return None


def evaluation_dict(trainer: Trainer, wall_s: float) -> dict[str, Any]:
    """Held-out and train-split metrics, as written to metrics.json."""
    out: dict[str, Any] = {"step": trainer.step, "train_wall_s": round(wall_s, 1)}
    for split in ("held_out", "train"):
        e = trainer.evaluate(split)
        cb = e.codebook
        assert cb is not None
        out[split] = {
            "images": e.images,
            "psnr_db": round(e.psnr, 2),
            "psnr_db_by_family": {k: round(v, 2) for k, v in e.psnr_by_family.items()},
            "codes_used": cb.used,
            "codebook_usage": round(cb.usage, 4),
            "perplexity": round(cb.perplexity, 1),
        }
    out["codebook_size"] = trainer.cfg.vq.num_vq_embeddings
    out["params"] = sum(p.numel() for p in trainer.vq.parameters())
    out["config"] = trainer.cfg.to_dict()
    return out
