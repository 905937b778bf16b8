"""VQGAN+CLIP: optimise a VQGAN's latent grid until CLIP sees the prompt in the image.

The method of the VQGAN+CLIP notebooks (Crowson, 2021). The variable is `z`, the VQGAN's
continuous latent as its quantiser receives it (after `quant_conv`): random codebook
vectors for text-to-image, the encoded init image for image-to-image. Every iteration:

1. quantise `z` to the nearest codebook vectors, straight-through (the forward pass uses
   the codes, the gradient goes to `z` unchanged);
2. decode to an image in [0, 1] (clamped with a gradient that may still pull values back
   inside);
3. cut `cutn` views: the whole image, plus random square crops (side drawn between CLIP's
   input size and the image's shorter side, biased by `cut_pow`) flipped at random, all
   resized to CLIP's input size; no other augmentation;
4. loss = mean squared great-circle distance between the views' CLIP image embeddings and
   the prompt's text embedding (+ `init_weight` × mean squared error to the init image);
5. one Adam step on `z`, then `z` clamped to the codebook's per-channel range.

A per-pixel `weight` in [0, 1] scales the gradient the prompt loss sends to each pixel
(`x·w + x.detach()·(1 − w)`: the same image, a weighted gradient), so pixels of weight 0 do
not follow the prompt; the init-image term is weighted by `1 − w` there instead, so those
pixels are pulled back to the init image. Randomness (initial codes, crops, flips) comes from
one generator seeded with `seed`: the same call gives the same result on the same device.

`optimise` is a plain function (models in, image and per-iteration losses out) so it can be
called and tested in-process; the engine wraps it with progress, previews and cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .loading import Clip, downsampling


@dataclass
class Step:
    """What `on_step` receives after each iteration."""

    iteration: int  # 1-based
    iterations: int
    loss: float
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], detached: the image this loss was for


@dataclass
class Optimised:
    image: np.ndarray  # (H, W, 3) float32 sRGB in [0, 1], decoded from the final codes
    codes: np.ndarray  # (H / f, W / f) int64 codebook indices
    losses: list[float]  # one per iteration, before that iteration's step


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors (the notebooks' loss)."""
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def vector_quantize(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z quantised with a straight-through gradient, codes (B, h, w)). z: (B, C, h, w)."""
    flat = z.movedim(1, 3).reshape(-1, z.shape[1])
    d = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None] - 2 * flat @ codebook.T
    codes = d.argmin(1)
    zq = codebook[codes].view(z.shape[0], z.shape[2], z.shape[3], -1).movedim(3, 1)
    return z + (zq - z).detach(), codes.view(z.shape[0], z.shape[2], z.shape[3])


def decode_latent(vq: Any, zq: torch.Tensor) -> torch.Tensor:
    """The VQGAN decoder on quantised latents (B, C, h, w) → images in [-1, 1]."""
    quant = vq.post_quant_conv(zq)
    spatial = vq.config.norm_type == "spatial"
    return vq.decoder(quant, zq if spatial else None)


def encode_image(vq: Any, image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) sRGB [0, 1] → the continuous latent the quantiser takes (1, C, H/f, W/f)."""
    param = next(vq.parameters())
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    x = x.to(param.device, param.dtype) * 2.0 - 1.0
    with torch.no_grad():
        return vq.encode(x).latents


def text_embedding(clip: Clip, text: str) -> torch.Tensor:
    """The prompt's CLIP text embedding, unit length, (1, D)."""
    device = next(clip.model.parameters()).device
    tokens = clip.tokenizer(
        [text],
        padding="max_length",
        truncation=True,
        max_length=clip.max_tokens,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = clip.model.get_text_features(
            input_ids=tokens["input_ids"].to(device),
            attention_mask=tokens["attention_mask"].to(device),
        )
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an object
    return F.normalize(emb.float(), dim=-1)


def image_embeddings(clip: Clip, views: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings of views (N, 3, S, S) in [0, 1], unit length, (N, D)."""
    mean = torch.tensor(clip.mean, device=views.device, dtype=views.dtype)[None, :, None, None]
    std = torch.tensor(clip.std, device=views.device, dtype=views.dtype)[None, :, None, None]
    out = clip.model.get_image_features(pixel_values=(views - mean) / std)
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(emb.float(), dim=-1)


def make_cutouts(
    image: torch.Tensor, size: int, cutn: int, cut_pow: float, generator: torch.Generator
) -> torch.Tensor:
    """`cutn` views of image (1, 3, H, W) at size × size: the whole image, then random
    square crops (randomly flipped). Random numbers come from `generator` (on the CPU)."""
    _, _, h, w = image.shape
    side = min(h, w)
    smallest = min(side, size)

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)

    views = [resize(image)]
    for _ in range(cutn - 1):
        r = torch.rand((4,), generator=generator)
        crop = int(float(r[0]) ** cut_pow * (side - smallest) + smallest)
        ox = int(float(r[1]) * (w - crop + 1))
        oy = int(float(r[2]) * (h - crop + 1))
        view = resize(image[:, :, oy : oy + crop, ox : ox + crop])
        views.append(view.flip(3) if float(r[3]) < 0.5 else view)
    return torch.cat(views)


class _ClampWithGrad(torch.autograd.Function):
    """clamp(x, lo, hi) whose gradient still flows where it would move x back inside."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


@contextmanager
def _frozen(*modules: torch.nn.Module) -> Any:
    """No gradients for the models' own weights during the call, restored afterwards
    (the models are shared between requests)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def optimise(
    vq: Any,
    clip: Clip,
    prompt: str,
    *,
    width: int,
    height: int,
    iterations: int = 300,
    lr: float = 0.1,
    cutn: int = 8,
    cut_pow: float = 1.0,
    seed: int = 0,
    init_image: np.ndarray | None = None,
    init_weight: float = 0.0,
    weight: np.ndarray | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Optimised:
    """Runs VQGAN+CLIP at width × height (multiples of the VQGAN's downsampling).

    init_image: (height, width, 3) sRGB in [0, 1], the starting point (else random codes).
    weight: (height, width) in [0, 1], the per-pixel weight of the prompt loss (see the
    module docstring). on_step: called after every iteration; an exception it raises (a
    cancel) stops the optimisation and propagates.
    """
    f = downsampling(vq)
    if width % f or height % f or width < f or height < f:
        raise ValueError(f"width and height must be positive multiples of {f}")
    if init_image is not None and init_image.shape != (height, width, 3):
        raise ValueError(f"init_image must be ({height}, {width}, 3), not {init_image.shape}")
    if weight is not None and weight.shape != (height, width):
        raise ValueError(f"weight must be ({height}, {width}), not {weight.shape}")
    if iterations < 1 or cutn < 1:
        raise ValueError("iterations and cutn must be at least 1")
    param = next(vq.parameters())
    device, dtype = param.device, param.dtype
    generator = torch.Generator("cpu").manual_seed(int(seed))
    codebook = vq.quantize.embedding.weight.detach()
    losses: list[float] = []

    with _frozen(vq, clip.model):
        target = text_embedding(clip, prompt)
        if init_image is not None:
            z = encode_image(vq, init_image.astype(np.float32)).detach().clone()
            init = torch.from_numpy(np.ascontiguousarray(init_image.transpose(2, 0, 1)))[None]
            init = init.to(device, dtype)
        else:
            codes = torch.randint(
                codebook.shape[0], ((height // f) * (width // f),), generator=generator
            ).to(device)
            z = codebook[codes].view(1, height // f, width // f, -1).movedim(3, 1).clone()
            init = None
        w = None
        if weight is not None:
            w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))[None, None]
            w = w.to(device, dtype)
        z_min = codebook.min(0).values[None, :, None, None]
        z_max = codebook.max(0).values[None, :, None, None]
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)

        for i in range(iterations):
            opt.zero_grad(set_to_none=True)
            zq, _ = vector_quantize(z, codebook)
            out = _ClampWithGrad.apply(decode_latent(vq, zq).add(1).div(2), 0.0, 1.0)
            seen = out if w is None else out * w + out.detach() * (1 - w)
            views = make_cutouts(seen, clip.image_size, cutn, cut_pow, generator)
            loss = spherical_distance(image_embeddings(clip, views), target).mean()
            if init is not None and init_weight > 0:
                keep = 1.0 if w is None else 1 - w
                loss = loss + init_weight * (keep * (out - init).pow(2)).mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(z.maximum(z_min).minimum(z_max))
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(Step(i + 1, iterations, losses[-1], out.detach()))

        with torch.no_grad():
            zq, codes = vector_quantize(z, codebook)
            image = decode_latent(vq, zq).add(1).div(2).clamp(0, 1)
    rgb = image[0].permute(1, 2, 0).float().cpu().numpy()
    return Optimised(np.ascontiguousarray(rgb), codes[0].cpu().numpy(), losses)
