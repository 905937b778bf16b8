"""The micro VQGAN's parts (issue 8): its diffusers `VQModel` configuration, a small
patch-GAN discriminator, the losses of the VQGAN paper (L1 + gradient reconstruction,
VQModel's own codebook/commitment loss, hinge GAN loss with the adaptive weight) and the
evaluation metrics (reconstruction PSNR, codebook usage and perplexity).

Images are float tensors in [-1, 1], (B, 3, H, W): taming's convention, which the
`vqgan` engine expects of a VQModel folder. `train_vqgan` runs the training loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    """The VQModel's shape: 3 levels = downsampling ×4 (64² → 16² codes)."""

    block_out_channels: tuple[int, ...] = (32, 48, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    num_vq_embeddings: int = 256
    norm_num_groups: int = 8  # 32 groups of one channel would normalise colour away
    mid_block_add_attention: bool = True
    sample_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        return cls(**{**d, "block_out_channels": tuple(d["block_out_channels"])})


@dataclass(frozen=True)
class LossConfig:
    grad_weight: float = 1.0  # L1 of finite differences, next to the pixel L1
    disc_start: int = 1000  # steps of warm-up before the discriminator switches on
    disc_weight: float = 0.5
    adaptive: bool = True  # the VQGAN paper's λ = ‖∇rec‖ / ‖∇gan‖ at the last layer
    disc_channels: int = 32
    disc_layers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_vqmodel(cfg: VQConfig, seed: int) -> Any:
    """A fresh diffusers `VQModel` (float32, train mode), deterministic in seed."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    levels = len(cfg.block_out_channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        vq_embed_dim=cfg.latent_channels,
        num_vq_embeddings=cfg.num_vq_embeddings,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        mid_block_add_attention=cfg.mid_block_add_attention,
    ).train()


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator, smaller: one logit per overlapping patch
    (64² input, 2 layers: (B, 1, 14, 14), ~22 px receptive field)."""

    def __init__(self, channels: int = 32, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [
                nn.Conv2d(ch, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of x and y: pixel L1
    alone blurs edges (brick mortar, checker borders), this term pays for them."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(
    rec: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor, scale: float
) -> torch.Tensor:
    """λ that balances the GAN gradient against the reconstruction one at the decoder's
    last layer (Esser et al. 2021, eq. 7), times `scale`."""
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    lam = g_rec.norm() / (g_gan.norm() + 1e-4)
    return torch.clamp(lam, 0.0, 1e4).detach() * scale


@dataclass
class Reconstruction:
    """A forward pass: the decoded image, the VQ loss and the code of every latent cell."""

    image: torch.Tensor  # (B, 3, H, W) in [-1, 1] (unclamped)
    vq_loss: torch.Tensor  # scalar: codebook + β·commitment, VQModel's own
    codes: torch.Tensor  # (B, H/4, W/4) int64
    latent: torch.Tensor  # (B, C, H/4, W/4) before quantisation


def reconstruct(vq: Any, x: torch.Tensor) -> Reconstruction:
    """Encode, quantise (straight-through) and decode, keeping the codes."""
    h = vq.encode(x).latents  # (B, C, H/4, W/4)
    zq, vq_loss, (_, _, idx) = vq.quantize(h)
    image = vq.decode(zq, force_not_quantize=True).sample
    codes = idx.reshape(h.shape[0], h.shape[2], h.shape[3])
    return Reconstruction(image, vq_loss, codes, h)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of uint8 (or [0, 255] float) images, from the MSE over all pixels of
    all images; inf for a perfect reconstruction."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass(frozen=True)
class CodebookStats:
    used: int  # distinct codes that occur
    usage: float  # used / K
    perplexity: float  # exp(entropy of the code histogram): K if uniform, 1 if one code


def codebook_stats(codes: np.ndarray, k: int) -> CodebookStats:
    counts = np.bincount(np.asarray(codes, np.int64).ravel(), minlength=k)[:k]
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return CodebookStats(used, used / k, float(np.exp(-(p * np.log(p)).sum())))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return t.div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] → uint8 (B, H, W, 3), rounded as a PNG would be."""
    y = x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Evaluation:
    psnr: float
    psnr_by_family: dict[str, float] = field(default_factory=dict)
    codebook: CodebookStats | None = None
    images: int = 0


@torch.no_grad()
def evaluate(vq: Any, images: np.ndarray, families: list[str], batch: int = 32) -> Evaluation:
    """PSNR (overall and by family) and codebook usage of `vq` on uint8 (N, H, W, 3)."""
    was_training = vq.training
    vq.eval()
    try:
        outs, codes = [], []
        for i in range(0, len(images), batch):
            r = reconstruct(vq, to_tensor(images[i : i + batch]))
            outs.append(to_uint8(r.image))
            codes.append(r.codes.numpy())
    finally:
        vq.train(was_training)
    rec = np.concatenate(outs)
    by_family = {
        f: psnr(images[m], rec[m])
        for f in sorted(set(families))
        if (m := np.array([g == f for g in families])).any()
    }
    k = int(vq.config.num_vq_embeddings)
    return Evaluation(
        psnr(images, rec), by_family, codebook_stats(np.concatenate(codes), k), len(images)
    )
