"""Training the micro Stable Diffusion model (issue 8), with checkpoints and resume.

One `Trainer` runs two stages in one folder: steps 0 … ae_steps−1 train the autoencoder
(L1 + gradient L1 + a small KL term), then the autoencoder is frozen, its latent scale set
from the train split (`scaling_factor` = 1 / std, as SD does) and the UNet and the text
encoder train together on v-prediction with zero-terminal-SNR noise (`sd.SCHEDULER`).
Captions are dropped (empty prompt) at `cond_drop` for classifier-free guidance and get
unknown tokens inserted at `unk_prob`, so words outside the vocabulary carry no meaning.
An exponential moving average of the UNet and text encoder is kept when `ema` > 0 and is
what the exported pipeline holds.

Batches are deterministic in (seed, step), as in `train_vqgan`, so a resumed run sees the
data an uninterrupted one would have. A checkpoint is a standard diffusers
`StableDiffusionPipeline` folder (what `load_pipeline` reads) plus `training/` (raw weights,
EMA, optimiser state as safetensors + JSON) and `metrics.json`, swapped in atomically by
`train_vqgan.save_checkpoint`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..textures import dataset
from . import sd
from .train_vqgan import (
    STATE_DIR,
    load_optimizers,
    save_checkpoint,
    save_optimizers,
    write_info,
)
from .vqgan import gradient_l1, psnr, to_tensor, to_uint8


class Example(Protocol):
    @property
    def image(self) -> np.ndarray: ...  # (H, W, 3) uint8

    @property
    def caption(self) -> str: ...


class Examples(Protocol):
    def __getitem__(self, index: int) -> Example: ...


@dataclass(frozen=True)
class SDTrainConfig:
    model: sd.MicroSDConfig = field(default_factory=sd.MicroSDConfig)
    seed: int = 0
    ae_steps: int = 1500  # autoencoder stage; the diffusion stage follows
    ae_batch: int = 16
    ae_lr: float = 1e-3
    kl_weight: float = 1e-6
    grad_weight: float = 1.0
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 100  # linear learning-rate warm-up of the diffusion stage
    cond_drop: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
    unk_prob: float = 0.3  # share of captions with 1-3 unknown tokens inserted
    ema: float = 0.999  # 0: no moving average
    data: str = "procedural"  # or a folder of images (`folder_dataset`)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SDTrainConfig:
        return cls(**{**d, "model": sd.MicroSDConfig.from_dict(d["model"])})


@dataclass
class StepLog:
    step: int
    stage: str  # "autoencoder" | "diffusion"
    loss: float
    detail: dict[str, float]
    seconds: float


def examples(cfg: SDTrainConfig) -> Examples:
    if cfg.data == "procedural":
        return dataset("train", cfg.model.size, cfg.seed, length=2**31 - 1)
    from .data import folder_dataset

    return folder_dataset(Path(cfg.data), cfg.model.size, cfg.seed)


class Trainer:
    def __init__(self, cfg: SDTrainConfig, folder: Path | None = None) -> None:
        """A fresh model, or (with `folder`) the pipeline saved there."""
        self.cfg = cfg
        self.step = 0
        self.data = examples(cfg)
        if folder is None:
            import tempfile

            words: set[str] = getattr(self.data, "words", set)()
            with tempfile.TemporaryDirectory() as tmp:
                sd.write_tokenizer(Path(tmp), words)
                self.pipe = sd.build_pipeline(cfg.model, Path(tmp), cfg.seed)
        else:
            from diffusers import StableDiffusionPipeline

            self.pipe = StableDiffusionPipeline.from_pretrained(
                folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
            )
        self.vae, self.unet, self.text = self.pipe.vae, self.pipe.unet, self.pipe.text_encoder
        self.tokenizer = self.pipe.tokenizer
        from diffusers import DDPMScheduler

        self.noise = DDPMScheduler.from_config(sd.SCHEDULER)  # same betas as sampling
        self.ae_opt = torch.optim.Adam(self.vae.parameters(), lr=cfg.ae_lr, betas=(0.5, 0.9))
        self.opt = torch.optim.AdamW(
            [*self.unet.parameters(), *self.text.parameters()], lr=cfg.lr, weight_decay=1e-2
        )
        self.ema: dict[str, torch.Tensor] = {}

    @property
    def stage(self) -> str:
        return "autoencoder" if self.step < self.cfg.ae_steps else "diffusion"

    def batch(self, step: int, size: int) -> list[Example]:
        return [self.data[step * size + i] for i in range(size)]

    def train_step(self) -> StepLog:
        t0 = time.perf_counter()
        if self.stage == "autoencoder":
            loss, detail = self._ae_step()
        else:
            if self.step == self.cfg.ae_steps:
                self._freeze_autoencoder()
            loss, detail = self._diffusion_step()
        stage = self.stage
        self.step += 1
        return StepLog(self.step, stage, loss, detail, time.perf_counter() - t0)

    # --- the autoencoder stage -----------------------------------------------------------

    def _ae_step(self) -> tuple[float, dict[str, float]]:
        self.vae.train()
        x = to_tensor(np.stack([e.image for e in self.batch(self.step, self.cfg.ae_batch)]))
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step)
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = self.vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        grad = gradient_l1(rec, x)
        kl = post.kl().mean()
        loss = l1 + self.cfg.grad_weight * grad + self.cfg.kl_weight * kl
        self.ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ae_opt.step()
        detail = {
            "l1": float(l1.detach()),
            "grad": float(grad.detach()),
            "kl": float(kl.detach()),
            "psnr": psnr(to_uint8(x), to_uint8(rec)),
        }
        return float(loss.detach()), detail

    @torch.no_grad()
    def _freeze_autoencoder(self) -> None:
        """Latent scale from 256 train images: SD's `scaling_factor` = 1 / std."""
        self.vae.eval()
        imgs = np.stack([self.data[10_000_000 + i].image for i in range(256)])
        z = self.vae.encode(to_tensor(imgs)).latent_dist.mode()
        self.vae.register_to_config(scaling_factor=float(1.0 / z.std()))

    # --- the diffusion stage -------------------------------------------------------------

    def _tokens(self, captions: Sequence[str], g: torch.Generator) -> torch.Tensor:
        return caption_tokens(self.tokenizer, captions, g, self.cfg.cond_drop, self.cfg.unk_prob)

    def _diffusion_step(self) -> tuple[float, dict[str, float]]:
        cfg = self.cfg
        self.unet.train()
        self.text.train()
        k = self.step - cfg.ae_steps
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (k + 1) / max(1, cfg.warmup))
        batch = self.batch(k, cfg.batch)
        g = torch.Generator().manual_seed(cfg.seed * 104_729 + self.step)
        with torch.no_grad():
            x = to_tensor(np.stack([e.image for e in batch]))
            z = self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor
        ids = self._tokens([e.caption for e in batch], g)
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(z),), generator=g)
        noisy = self.noise.add_noise(z, noise, t)
        target = self.noise.get_velocity(z, noise, t)
        cond = self.text(ids).last_hidden_state
        pred = self.unet(noisy, t, cond).sample
        loss = F.mse_loss(pred, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text.parameters()], 1.0)
        self.opt.step()
        self._update_ema(k)
        return float(loss.detach()), {"lr": self.opt.param_groups[0]["lr"]}

    def _ema_params(self) -> dict[str, torch.nn.Parameter]:
        return named_parameters(unet=self.unet, text=self.text)

    def _update_ema(self, k: int) -> None:
        update_ema(self.ema, self._ema_params(), self.cfg.ema, k)

    def exported(self) -> Any:
        """The pipeline to save and sample from: EMA weights when kept, in eval mode."""
        self.pipe.vae.eval()
        if not self.ema:
            return self.pipe.to(torch.float32)
        import copy

        pipe = copy.deepcopy(self.pipe)
        load_ema(self.ema, named_parameters(unet=pipe.unet, text=pipe.text_encoder))
        pipe.unet.eval()
        pipe.text_encoder.eval()
        return pipe

    # --- checkpoints -------------------------------------------------------------------

    def save(self, out: Path, metrics: dict[str, Any] | None = None) -> None:

        def write(tmp: Path) -> None:
            save_pipeline(self.exported(), tmp)
            optimizers = {"ae_opt": self.ae_opt, "opt": self.opt}
            write_state(tmp, self._ema_params(), self.ema, optimizers)
            write_info(tmp, self.step, self.cfg.to_dict(), metrics)

        save_checkpoint(out, write)

    @classmethod
    def load(cls, folder: Path) -> Trainer:
        t = cls(SDTrainConfig.from_dict(saved_config(folder)), folder)
        t.ema, t.step = read_state(folder, t._ema_params(), {"ae_opt": t.ae_opt, "opt": t.opt})
        return t


def saved_config(folder: Path) -> dict[str, Any]:
    """The training configuration a checkpoint was saved with."""
    return dict(json.loads((folder / STATE_DIR / "trainer.json").read_text())["config"])


def write_state(
    folder: Path,
    params: dict[str, torch.nn.Parameter],
    ema: dict[str, torch.Tensor],
    optimizers: dict[str, Any],
) -> None:
    """A checkpoint's `training/`: the raw trained weights, their EMA, the optimisers."""
    from safetensors.torch import save_file

    state = folder / STATE_DIR
    state.mkdir()
    raw = {k: v.detach().contiguous() for k, v in params.items()}
    save_file(raw, str(state / "weights.safetensors"))
    if ema:
        save_file(ema, str(state / "ema.safetensors"))
    save_optimizers(state, optimizers)


def read_state(
    folder: Path,
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], int]:
    """`write_state`'s counterpart: loads the raw weights into `params` and the optimisers'
    state; returns the EMA (empty when none was kept) and the step."""
    from safetensors.torch import load_file

    state = folder / STATE_DIR
    raw = load_file(str(state / "weights.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(raw[name])
    ema = load_file(str(state / "ema.safetensors")) if (state / "ema.safetensors").is_file() else {}
    load_optimizers(state, optimizers)
    return ema, int(json.loads((state / "trainer.json").read_text())["step"])


def caption_tokens(
    tok: Any, captions: Sequence[str], g: torch.Generator, cond_drop: float, unk_prob: float
) -> torch.Tensor:
    """Token ids (B, MAX_TOKENS): captions dropped ("") at `cond_drop`, 1-3 unknown tokens
    inserted at `unk_prob`, padded with EOS as the pipeline pads."""
    rows = []
    for c in captions:
        u = torch.rand(3, generator=g).tolist()
        ids = tok("" if u[0] < cond_drop else c).input_ids  # [BOS, …, EOS]
        if u[1] < unk_prob and len(ids) > 2:
            for _ in range(1 + int(u[2] * 3)):
                at = 1 + int(torch.randint(len(ids) - 1, (1,), generator=g))
                ids.insert(at, tok.unk_token_id)
        ids = ids[: sd.MAX_TOKENS - 1] + [tok.eos_token_id] if len(ids) > sd.MAX_TOKENS else ids
        rows.append(ids + [tok.pad_token_id] * (sd.MAX_TOKENS - len(ids)))
    return torch.tensor(rows)


def named_parameters(**modules: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter of `modules` as "<keyword>.<its name>": the names the EMA and the
    checkpoints' training/ weights use."""
    return {f"{key}.{n}": p for key, m in modules.items() for n, p in m.named_parameters()}


@torch.no_grad()
def load_ema(ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
    """The moving averages copied into `params` (an exported copy's)."""
    for name, p in params.items():
        p.copy_(ema[name])


@torch.no_grad()
def update_ema(
    ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float, k: int
) -> None:
    """One step of an exponential moving average of `params` into `ema` (decay ≤ 0: none);
    early on the decay is lower, so the first weights fade fast."""
    if decay <= 0:
        return
    d = min(decay, (1 + k) / (10 + k))
    for name, p in params.items():
        if name not in ema:
            ema[name] = p.detach().clone()
        else:
            ema[name].lerp_(p.detach(), 1.0 - d)


def save_pipeline(pipe: Any, folder: Path, *, fp16: bool = False) -> None:
    """`save_pretrained` (safetensors), with the tokenizer recorded under transformers'
    portable class name (transformers 5 writes its internal `TokenizersBackend`)."""
    if fp16:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    if fp16:
        pipe.to(torch.float32)
    index = folder / "model_index.json"
    meta = json.loads(index.read_text())
    meta["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index.write_text(json.dumps(meta, indent=2) + "\n")


# --- evaluation --------------------------------------------------------------------------


@torch.no_grad()
def autoencoder_psnr(vae: Any, images: np.ndarray, families: list[str]) -> dict[str, Any]:
    """Reconstruction PSNR (dB, overall and by family) of uint8 (N, H, W, 3) images through
    the posterior mean: the number `vqgan.evaluate` reports for the VQGAN."""
    vae.eval()
    outs = []
    for i in range(0, len(images), 32):
        x = to_tensor(images[i : i + 32])
        outs.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    rec = np.concatenate(outs)
    by_family = {
        f: round(psnr(images[m], rec[m]), 2)
        for f in sorted(set(families))
        if (m := np.array([g == f for g in families])).any()
    }
    return {"psnr_db": round(psnr(images, rec), 2), "psnr_db_by_family": by_family}


def eval_images(split: str, size: int, seed: int, n: int = 180) -> tuple[np.ndarray, list[str]]:
    """The evaluation set `train_vqgan` uses: n images of a split with seed + 7."""
    ds = dataset(split, size, seed + 7, length=n)  # type: ignore[arg-type]
    samples = [ds[i] for i in range(n)]
    return np.stack([s.image for s in samples]), [s.family for s in samples]


def evaluation(
    trainer: Trainer,
    wall_s: float,
    sheet: Path | None = None,
    seeds: int = 8,
    images: int = 180,
) -> dict[str, Any]:
    """metrics.json: the autoencoder's PSNR on the held-out and train sets and, once the
    diffusion stage has run on the procedural data, `quality.evaluate_pipeline` (colour
    pass rates on seen and held-out pairs over `seeds` seeds, peakiness by family; a
    contact sheet at `sheet`)."""
    from .quality import evaluate_pipeline

    cfg = trainer.cfg
    out: dict[str, Any] = {"step": trainer.step, "train_wall_s": round(wall_s, 1)}
    for split in ("held_out", "train"):
        imgs, families = eval_images(split, cfg.model.size, cfg.seed, images)
        out[split] = {"images": len(imgs), **autoencoder_psnr(trainer.vae, imgs, families)}
    if trainer.step > cfg.ae_steps and cfg.data == "procedural":
        pipe = trainer.exported()
        pipe.set_progress_bar_config(disable=True)
        out["quality"] = evaluate_pipeline(pipe, seeds=seeds, size=cfg.model.size, sheet=sheet)
    out["params"] = {
        n: sum(p.numel() for p in getattr(trainer.pipe, n).parameters())
        for n in ("vae", "unet", "text_encoder")
    }
    out["config"] = cfg.to_dict()
    return out
