"""Training the micro depth ControlNet (issue 8), and with it the micro UNet on renders.

It starts from a trained micro pipeline (default: the embedded one). A `ControlNetModel`
is made from its UNet (`ControlNetModel.from_unet`, the conditioning embedding downsampling
×4 as the autoencoder does) and trained on (render, disparity map, caption) triples from a
folder: `NAME.png`, `NAME.control.png`, `NAME.txt`, as `dev/render_depth_data.py` writes
them from Blender with the add-on's own capture (so the maps are made as at generation
time). With `unet_lr` > 0 the UNet and text encoder train too, on batches that mix renders
with control, renders without it and procedural textures: the textures keep the colour
words' meaning, and renders without control teach the UNet what a render looks like, so
image-to-image on a render keeps its layout.

The last `hold_out` triples of the folder (sorted by name) are never trained on; the
evaluation generates from their depth maps and measures how well the result's edges follow
the map's (against the same seeds without control). A checkpoint is the pipeline folder
with `controlnet/` (a diffusers `ControlNetModel` folder) inside it, plus `training/`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..textures import dataset
from .data import caption_for
from .train_sd import (
    StepLog,
    caption_tokens,
    load_ema,
    named_parameters,
    read_state,
    save_pipeline,
    saved_config,
    update_ema,
    write_state,
)
from .train_vqgan import save_checkpoint, write_info
from .vqgan import to_tensor

CONTROL_SUFFIX = ".control.png"
CONTROLNET_DIR = "controlnet"


@dataclass(frozen=True)
class Triple:
    image: np.ndarray  # (H, W, 3) uint8, the render
    control: np.ndarray  # (H, W, 3) uint8, its disparity map
    caption: str


class ControlFolder:
    """The triples of a folder, deterministic in (seed, index), flipped left-right at
    random (image and map together); `held_out()` are the last `hold_out` by name."""

    def __init__(self, folder: Path, size: int, seed: int, hold_out: int) -> None:
        if not folder.is_dir():
            raise ValueError(f"--data {folder} is not a folder")
        stems = sorted(p.name[: -len(CONTROL_SUFFIX)] for p in folder.glob("*" + CONTROL_SUFFIX))
        stems = [s for s in stems if (folder / f"{s}.png").is_file()]
        if len(stems) <= hold_out:
            raise ValueError(
                f"--data {folder} holds {len(stems)} NAME.png + NAME{CONTROL_SUFFIX} pairs; "
                f"more than the {hold_out} held out are needed"
            )
        self.folder, self.size, self.seed = folder, size, seed
        self.train = stems[: len(stems) - hold_out]
        self.evaluation = stems[len(stems) - hold_out :]

    def load(self, stem: str) -> Triple:
        from PIL import Image

        def read(path: Path) -> np.ndarray:
            with Image.open(path) as f:
                im = f.convert("RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
            return np.asarray(im)

        png = self.folder / f"{stem}.png"
        return Triple(read(png), read(self.folder / f"{stem}{CONTROL_SUFFIX}"), caption_for(png))

    def __getitem__(self, index: int) -> Triple:
        n = len(self.train)
        block, pos = divmod(index, n)
        k = int(np.random.default_rng([self.seed, block]).permutation(n)[pos])
        t = self.load(self.train[k])
        if np.random.default_rng([self.seed, index, 2]).random() < 0.5:
            t = Triple(t.image[:, ::-1].copy(), t.control[:, ::-1].copy(), t.caption)
        return t

    def held_out(self) -> list[Triple]:
        return [self.load(s) for s in self.evaluation]


@dataclass(frozen=True)
class ControlTrainConfig:
    data: str  # the folder of triples
    base: str = ""  # the pipeline to start from; "": the embedded micro model
    seed: int = 0
    size: int = 64
    batch: int = 16  # renders per step
    texture_batch: int = 16  # procedural textures per step (only when unet_lr > 0)
    lr: float = 5e-4  # the ControlNet's
    unet_lr: float = 1e-4  # the UNet's and text encoder's; 0: frozen
    control_drop: float = 0.2  # share of renders trained without control (unet_lr > 0)
    cond_drop: float = 0.1
    unk_prob: float = 0.3
    warmup: int = 100
    ema: float = 0.999
    embedding_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels: ×4, as the autoencoder
    hold_out: int = 200

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["embedding_channels"] = list(self.embedding_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControlTrainConfig:
        return cls(**{**d, "embedding_channels": tuple(d["embedding_channels"])})


def _load_pipeline(folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    return pipe.to(torch.float32)


class ControlTrainer:
    def __init__(self, cfg: ControlTrainConfig, folder: Path | None = None) -> None:
        """A new ControlNet on `cfg.base`, or (with `folder`) the checkpoint saved there."""
        from diffusers import ControlNetModel, DDPMScheduler

        from . import embedded_model, sd

        self.cfg = cfg
        self.step = 0
        self.pairs = ControlFolder(Path(cfg.data), cfg.size, cfg.seed, cfg.hold_out)
        self.textures = dataset("train", cfg.size, cfg.seed + 3, length=2**31 - 1)
        if folder is None:
            base = Path(cfg.base) if cfg.base else embedded_model()
            if base is None:
                raise ValueError("no --base given and this installation has no embedded model")
            self.pipe = _load_pipeline(base)
            torch.manual_seed(cfg.seed)
            self.controlnet = ControlNetModel.from_unet(
                self.pipe.unet, conditioning_embedding_out_channels=cfg.embedding_channels
            )
        else:
            self.pipe = _load_pipeline(folder)
            self.controlnet = ControlNetModel.from_pretrained(
                folder / CONTROLNET_DIR, local_files_only=True
            ).to(torch.float32)
        self.vae, self.unet, self.text = self.pipe.vae, self.pipe.unet, self.pipe.text_encoder
        self.vae.eval().requires_grad_(False)
        self.tune_unet = cfg.unet_lr > 0
        self.unet.requires_grad_(self.tune_unet)
        self.text.requires_grad_(self.tune_unet)
        self.noise = DDPMScheduler.from_config(sd.SCHEDULER)
        groups = [{"params": list(self.controlnet.parameters()), "lr": cfg.lr}]
        if self.tune_unet:
            groups.append(
                {"params": [*self.unet.parameters(), *self.text.parameters()], "lr": cfg.unet_lr}
            )
        self.opt = torch.optim.AdamW(groups, weight_decay=1e-2)
        self.base_lrs = [cfg.lr, *([cfg.unet_lr] if self.tune_unet else [])]
        self.ema: dict[str, torch.Tensor] = {}

    def _trained(self, pipe: Any, net: Any) -> dict[str, torch.nn.Parameter]:
        """The parameters this run trains, of `pipe` and `net` (its own or exported copies)."""
        unet = {"unet": pipe.unet, "text": pipe.text_encoder} if self.tune_unet else {}
        return named_parameters(controlnet=net, **unet)

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return self._trained(self.pipe, self.controlnet)

    def train_step(self) -> StepLog:
        t0 = time.perf_counter()
        cfg, k = self.cfg, self.step
        for group, lr in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * min(1.0, (k + 1) / max(1, cfg.warmup))
        g = torch.Generator().manual_seed(cfg.seed * 15_485_863 + k)
        renders = [self.pairs[k * cfg.batch + i] for i in range(cfg.batch)]
        drop = cfg.control_drop if self.tune_unet else 0.0
        n_ctl = int((torch.rand(cfg.batch, generator=g) >= drop).sum())
        textures = (
            [self.textures[k * cfg.texture_batch + i] for i in range(cfg.texture_batch)]
            if self.tune_unet
            else []
        )
        images = [r.image for r in renders] + [t.image for t in textures]
        captions = [r.caption for r in renders] + [t.caption for t in textures]
        with torch.no_grad():
            x = to_tensor(np.stack(images))
            z = self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor
        ids = caption_tokens(self.pipe.tokenizer, captions, g, cfg.cond_drop, cfg.unk_prob)
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(z),), generator=g)
        noisy = self.noise.add_noise(z, noise, t)
        target = self.noise.get_velocity(z, noise, t)
        self.controlnet.train()
        self.unet.train(self.tune_unet)
        self.text.train(self.tune_unet)
        with torch.set_grad_enabled(self.tune_unet):
            cond = self.text(ids).last_hidden_state
        down, mid = None, None
        if n_ctl:
            control = torch.from_numpy(np.stack([r.control for r in renders[:n_ctl]]))
            control = control.permute(0, 3, 1, 2).float() / 255.0  # [0, 1], as the pipeline's
            down, mid = self.controlnet(
                noisy[:n_ctl], t[:n_ctl], cond[:n_ctl], controlnet_cond=control, return_dict=False
            )
            rest = len(z) - n_ctl
            down = [torch.cat([d, d.new_zeros((rest, *d.shape[1:]))]) for d in down]
            mid = torch.cat([mid, mid.new_zeros((rest, *mid.shape[1:]))])
        pred = self.unet(
            noisy,
            t,
            cond,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = F.mse_loss(pred, target)
        loss_control = float(F.mse_loss(pred[:n_ctl], target[:n_ctl]).detach()) if n_ctl else 0.0
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self._params().values()), 1.0)
        self.opt.step()
        update_ema(self.ema, self._params(), cfg.ema, k)
        self.step += 1
        detail = {"control_loss": loss_control, "lr": self.opt.param_groups[0]["lr"]}
        return StepLog(self.step, "control", float(loss.detach()), detail, time.perf_counter() - t0)

    def exported(self) -> tuple[Any, Any]:
        """(pipeline, controlnet) to save and sample from: EMA weights when kept, eval mode."""
        import copy

        pipe, net = copy.deepcopy(self.pipe), copy.deepcopy(self.controlnet)
        if self.ema:
            load_ema(self.ema, self._trained(pipe, net))
        pipe.unet.eval()
        pipe.text_encoder.eval()
        return pipe, net.eval()

    def save(self, out: Path, metrics: dict[str, Any] | None = None) -> None:

        def write(tmp: Path) -> None:
            pipe, net = self.exported()
            save_pipeline(pipe, tmp)
            net.save_pretrained(tmp / CONTROLNET_DIR, safe_serialization=True)
            write_state(tmp, self._params(), self.ema, {"opt": self.opt})
            write_info(tmp, self.step, self.cfg.to_dict(), metrics)

        save_checkpoint(out, write)

    @classmethod
    def load(cls, folder: Path) -> ControlTrainer:
        t = cls(ControlTrainConfig.from_dict(saved_config(folder)), folder)
        t.ema, t.step = read_state(folder, t._params(), {"opt": t.opt})
        return t


# --- evaluation --------------------------------------------------------------------------


def control_pipeline(pipe: Any, controlnet: Any) -> Any:
    from diffusers import StableDiffusionControlNetPipeline

    out = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def evaluate_control(
    pipe: Any,
    controlnet: Any,
    triples: list[Triple],
    *,
    steps: int = 20,
    guidance: float = 5.0,
    sheet: Path | None = None,
) -> dict[str, Any]:
    """How well generations follow held-out depth maps: the correlation of their edges with
    the map's (2×2 blocks), with the ControlNet and, as the floor, without it (same seeds
    and prompts); the renders' own correlation with their maps is the ceiling."""
    from PIL import Image

    from ..temporal.flow import edge_correlation

    ctl = control_pipeline(pipe, controlnet)
    pipe.set_progress_bar_config(disable=True)
    size = triples[0].image.shape[0]
    with_control, without, ceiling, rows = [], [], [], []
    for i, tr in enumerate(triples):
        common = {
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "height": size,
            "width": size,
            "output_type": "np",
        }
        a = ctl(
            tr.caption,
            image=Image.fromarray(tr.control),
            generator=torch.Generator().manual_seed(i),
            **common,
        ).images[0]
        b = pipe(tr.caption, generator=torch.Generator().manual_seed(i), **common).images[0]
        a8, b8 = ((np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8) for v in (a, b))
        with_control.append(edge_correlation(a8, tr.control, scale=2))
        without.append(edge_correlation(b8, tr.control, scale=2))
        ceiling.append(edge_correlation(tr.image, tr.control, scale=2))
        if sheet is not None and i < 16:
            rows.append(np.concatenate([tr.control, tr.image, a8, b8], axis=1))
    if sheet is not None and rows:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(sheet)
    return {
        "maps": len(triples),
        "edge_corr_control": round(float(np.mean(with_control)), 4),
        "edge_corr_no_control": round(float(np.mean(without)), 4),
        "edge_corr_renders": round(float(np.mean(ceiling)), 4),
    }


@torch.no_grad()
def evaluate_img2img(
    pipe: Any, triples: list[Triple], *, strength: float = 0.6, steps: int = 20
) -> dict[str, Any]:
    """Image-to-image on held-out renders at `strength`, each asked for another colour than
    its own: the correlation of the result's edges with the render's (2×2 blocks; issue 8
    asks that the layout survive strength ≥ 0.6), against a flipped render's as the floor."""
    import re

    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from ..temporal.flow import edge_correlation
    from ..textures import COLOURS

    pipe = StableDiffusionImg2ImgPipeline(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    names = sorted(COLOURS)
    kept, floor = [], []
    for i, tr in enumerate(triples):
        colour = names[i % len(names)]
        prompt = re.sub(rf"\b({'|'.join(names)})\b", colour, tr.caption)
        out = pipe(
            prompt,
            image=Image.fromarray(tr.image),
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(i),
            output_type="np",
        ).images[0]
        u8 = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
        kept.append(edge_correlation(u8, tr.image, scale=2))
        floor.append(edge_correlation(u8, np.ascontiguousarray(tr.image[::-1, ::-1]), scale=2))
    return {
        "renders": len(triples),
        "strength": strength,
        "edge_corr": round(float(np.mean(kept)), 4),
        "edge_corr_flipped": round(float(np.mean(floor)), 4),
    }
