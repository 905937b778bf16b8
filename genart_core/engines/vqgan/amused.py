"""The `amused` engine: aMUSEd text-to-image (VQGAN tokens + a masked transformer).

diffusers' `AmusedPipeline` (kept in diffusers' deprecated pipelines, but shipped and
working in 0.42): a U-ViT predicts VQGAN codes for every masked position, the most
confident are kept at each step (cosine schedule), and the VQGAN decodes the grid. It runs
at its native size (transformer sample_size × the VQGAN's downsampling, 256 or 512) with the
requested aspect ratio, then resamples to exactly the requested size.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from ...imaging.control import fit_size
from ...protocol.errors import EngineFailed, InvalidParams, OutOfMemory
from ..base import Engine, Input, Output, RunContext
from ..schema import MAX_PIXELS_PARAM, MAX_SIDE, Param, check_pixel_cap
from .engine import SEED_PARAM, _require, rgba

log = logging.getLogger("genart.engines.amused")


class AmusedEngine(Engine):
    name = "amused"
    version = "1"
    tasks = ("txt2img",)
    help = (
        "aMUSEd text-to-image through diffusers: a masked transformer fills a VQGAN token grid "
        "in a few parallel steps (12 by default), then the VQGAN decodes it. Fast and light; "
        "amused-256 and amused-512 from a diffusers folder or the local HF cache."
    )
    capabilities = {"depth_control": False, "tileable": False}
    inputs: ClassVar[dict[str, str]] = {}
    params = (
        Param(
            "model",
            "string",
            "",
            "aMUSEd: a diffusers folder (model_index.json) or a repo id in the local cache, "
            "e.g. amused/amused-256",
            max=4096,
        ),
        Param("prompt", "string", "", "what to generate", max=4000),
        Param("negative_prompt", "string", "", "what to avoid (with guidance > 1)", max=4000),
        Param("width", "int", 256, "output width in pixels", min=8, max=MAX_SIDE),
        Param("height", "int", 256, "output height in pixels", min=8, max=MAX_SIDE),
        MAX_PIXELS_PARAM,
        Param("steps", "int", 12, "unmasking steps", min=1, max=100),
        Param("guidance", "float", 10.0, "classifier-free guidance scale", min=0.0, max=30.0),
        SEED_PARAM,
        Param(
            "preview_every",
            "int",
            4,
            "send a preview every N steps, still-masked tokens grey (0: never)",
            min=0,
            max=100,
        ),
    )

    def __init__(self) -> None:
        self._device: str | None = None
        self._dtype: Any = None
        self._pipes: dict[str, Any] = {}

    def _pipe(self, ref: str) -> Any:
        if self._device is None:
            from ..device import pick_device

            self._device, self._dtype = pick_device()
        if ref not in self._pipes:
            from .loading import load_amused

            pipe = load_amused(ref, torch_dtype=self._dtype)
            pipe.to(self._device)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[ref] = pipe
        return self._pipes[ref]

    def close(self) -> None:
        self._pipes.clear()

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        _require(params, "model", "an aMUSEd model: a diffusers folder or a cached repo id")
        if inputs:
            name = sorted(inputs)[0]
            raise InvalidParams(
                f"aMUSEd txt2img takes no inputs, not {name!r}", field=f"inputs.{name}", allowed=[]
            )
        width, height = params["width"], params["height"]
        check_pixel_cap(width, height, params["max_pixels"])
        import torch

        pipe = self._pipe(params["model"])
        factor = int(pipe.vae_scale_factor)
        multiple = factor * (2 if pipe.transformer.config.downsample else 1)
        side = int(pipe.transformer.config.sample_size) * factor
        gw, gh = fit_size(width, height, side * side, multiple)
        steps, every = params["steps"], params["preview_every"]
        mask_id = int(pipe.scheduler.config.mask_token_id)

        def on_step(i: int, t: Any, latents: Any) -> None:
            ctx.progress(i + 1, steps)  # raises Cancelled: the loop stops at this step
            if every and (i + 1) % every == 0 and i + 1 < steps:
                ctx.preview(_token_preview(pipe, latents, mask_id, factor))

        ctx.progress(0, steps)
        try:
            with torch.inference_mode():
                out = pipe(
                    params["prompt"],
                    negative_prompt=params["negative_prompt"] or None,
                    height=gh,
                    width=gw,
                    num_inference_steps=steps,
                    guidance_scale=params["guidance"],
                    generator=torch.Generator("cpu").manual_seed(params["seed"]),
                    output_type="np",
                    callback=on_step,
                    callback_steps=1,
                ).images[0]
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise OutOfMemory(
                f"out of memory on {self._device} at {gw}×{gh}: free GPU memory ({exc})".split(
                    "\n"
                )[0]
            ) from None
        if not np.isfinite(out).all():
            raise EngineFailed("the model produced NaN or inf pixels", field="params.model")
        img = rgba(out, width, height)
        return [Output("image", img, "uint8", img.shape, "srgb")]


def _token_preview(pipe: Any, latents: Any, mask_id: int, factor: int) -> Output:
    """The token grid decoded so far; positions still masked are painted grey."""
    import torch

    tokens = latents[:1]
    masked = tokens == mask_id
    vq = pipe.vqvae
    shape = (1, tokens.shape[1], tokens.shape[2], vq.config.latent_channels)
    with torch.no_grad():
        img = vq.decode(tokens.masked_fill(masked, 0), force_not_quantize=True, shape=shape).sample[
            0
        ]
    rgb = img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    grey = np.repeat(np.repeat(masked[0].cpu().numpy(), factor, 0), factor, 1)
    rgb[grey] = 0.5
    data = rgba(rgb, rgb.shape[1], rgb.shape[0])
    return Output("preview", data, "uint8", data.shape, "srgb")
