"""The VQGAN engines: `vqgan` (image → codes → image) and `vqgan_clip` (VQGAN+CLIP).

Both run diffusers' `VQModel` in float32 on the device `pick_device` chooses (VQGAN+CLIP
optimises through the decoder, where half precision loses the small gradients). Requests
are validated before a model is touched; models stay loaded between jobs and are never
changed by a request. torch and diffusers are imported on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...imaging.control import depth_to_disparity, fit_size
from ...protocol.errors import InvalidParams, OutOfMemory
from ...temporal import coherent
from ...temporal.coherent import MODES
from ..base import Engine, Input, Output, RunContext
from ..schema import MAX_PIXELS_PARAM, MAX_SIDE, Param, check_pixel_cap
from ..sd import coherence
from ..sd.arrays import read_inputs, to_rgb
from ..sd.coherence import PREVIOUS_INPUTS, previous, read_frame

log = logging.getLogger("genart.engines.vqgan")

PREVIEW_SIDE = 256
FLOPS_NOTE = (
    "slow, 'artistic' mode: ~56× the FLOPs of a 20-step SD 1.5 image (300 iterations at "
    "512² with 32 CLIP ViT-B/16 views; the defaults here, 256² and 8 views, about 8-14×)"
)

MODEL_PARAM = Param(
    "model",
    "string",
    "",
    "VQGAN: a diffusers VQModel folder, a .safetensors file (diffusers or taming layout) "
    "or a Hugging Face repo id in the local cache",
    max=4096,
)
SEED_PARAM = Param(
    "seed", "int", 0, "random seed: the same request gives the same pixels", min=0, max=2**32 - 1
)


class _Models:
    """Per-engine model cache, on one device, float32."""

    def __init__(self) -> None:
        self.device: str | None = None
        self.vqs: dict[str, Any] = {}
        self.clips: dict[str, Any] = {}

    def ensure_device(self) -> str:
        if self.device is None:
            from ..device import pick_device

            self.device, _ = pick_device()
            log.info("vqgan engines on %s (float32)", self.device)
        return self.device

    def vq(self, ref: str) -> Any:
        if ref not in self.vqs:
            from .loading import load_vqmodel

            self.vqs[ref] = load_vqmodel(ref).to(self.ensure_device())
        return self.vqs[ref]

    def clip(self, ref: str) -> Any:
        if ref not in self.clips:
            from .loading import load_clip

            clip = load_clip(ref)
            clip.model.to(self.ensure_device())
            self.clips[ref] = clip
        return self.clips[ref]

    def clear(self) -> None:
        self.vqs.clear()
        self.clips.clear()


def _require(params: dict[str, Any], name: str, what: str) -> None:
    if not params[name]:
        raise InvalidParams(f"choose {what}", field=f"params.{name}")


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float [0, 1] → (height, width, 3) float, Lanczos."""
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb.astype(np.float32)
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if plane.shape == (height, width):
        return plane.astype(np.float32)
    img = Image.fromarray(plane.astype(np.float32), "F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def rgba(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, 3) float sRGB [0, 1] → exactly (height, width, 4) uint8, opaque (Lanczos)."""
    from PIL import Image

    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(img.convert("RGBA")))


def preview(image: Any) -> Output:
    """An RGBA uint8 preview of a (1, 3, H, W) tensor in [0, 1], at most PREVIEW_SIDE."""
    rgb = image[0].permute(1, 2, 0).float().clamp(0, 1).cpu().numpy()
    k = max(1, -(-max(rgb.shape[:2]) // PREVIEW_SIDE))
    strided = rgb[::k, ::k]
    small = rgba(strided, strided.shape[1], strided.shape[0])
    return Output("preview", small, "uint8", small.shape, "srgb")


def _out_of_memory(device: str | None, width: int, height: int, exc: BaseException) -> OutOfMemory:
    return OutOfMemory(
        f"out of memory on {device} at {width}×{height}: lower max_work_pixels (or cutn), "
        f"or free GPU memory ({exc})".split("\n")[0]
    )


class VQGANEngine(Engine):
    name = "vqgan"
    version = "1"
    tasks = ("img2img", "reconstruct")
    help = (
        "A VQGAN round trip (diffusers VQModel; taming checkpoints convert one to one with "
        "`genart convert taming`): the image is encoded, snapped to the nearest codebook "
        "entries and decoded, which shows what the VQGAN can represent (its 'look'). img2img "
        "and reconstruct do the same; the codes come back too, as an int32 (h, w) array."
    )
    capabilities = {"depth_control": False, "tileable": False, "codes": True}
    inputs = {"image": "(H, W, 3|4) uint8 or float32 sRGB; alpha is ignored"}
    params = (
        MODEL_PARAM,
        Param(
            "width",
            "int",
            0,
            "output width in pixels (resampled from the work size); 0: from the input "
            "(its aspect ratio when height is set)",
            min=0,
            max=MAX_SIDE,
        ),
        Param(
            "height",
            "int",
            0,
            "output height in pixels; 0: from the input (its aspect ratio when width is set)",
            min=0,
            max=MAX_SIDE,
        ),
        Param(
            "max_work_pixels",
            "int",
            1024 * 1024,
            "the image is encoded at its own size, scaled down to at most this many pixels "
            "(and to a multiple of the VQGAN's downsampling)",
            min=64,
            max=MAX_SIDE * MAX_SIDE,
        ),
        MAX_PIXELS_PARAM,
    )

    def __init__(self) -> None:
        self._models = _Models()

    def prepare(
        self, params: dict[str, Any], inputs: dict[str, Input]
    ) -> tuple[np.ndarray, int, int]:
        """(init image (H, W, 3) float, output width, output height), validated."""
        _require(params, "model", "a VQGAN: a diffusers VQModel folder or a .safetensors file")
        arrays = read_inputs(inputs, self.inputs)
        if "image" not in arrays:
            raise InvalidParams("a VQGAN round trip needs an image input", field="inputs.image")
        image = to_rgb(arrays["image"], "inputs.image")
        ih, iw = image.shape[:2]
        width, height = params["width"], params["height"]
        if not width and not height:
            width, height = iw, ih
        elif not width:
            width = max(1, round(height * iw / ih))
        elif not height:
            height = max(1, round(width * ih / iw))
        if width < 8 or height < 8:
            field = "params.width" if width < 8 else "params.height"
            raise InvalidParams("an output side must be at least 8 pixels", field=field)
        check_pixel_cap(width, height, params["max_pixels"])
        return image, width, height

    def model_capabilities(self, params: dict[str, Any]) -> dict[str, Any]:
        from .loading import downsampling

        vq = self._models.vq(params["model"])
        return {
            **self.capabilities,
            "family": "vqgan",
            "downsampling": downsampling(vq),
            "codebook_size": int(vq.config.num_vq_embeddings),
        }

    def close(self) -> None:
        self._models.clear()

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        image, width, height = self.prepare(params, inputs)
        ctx.progress(0, 3)
        import torch

        from .loading import downsampling
        from .optimise import decode_latent, encode_image

        vq = self._models.vq(params["model"])
        f = downsampling(vq)
        ih, iw = image.shape[:2]
        gw, gh = fit_size(iw, ih, min(iw * ih, params["max_work_pixels"]), f)
        try:
            latent = encode_image(vq, _resize(image, gw, gh))
            ctx.progress(1, 3)
            with torch.no_grad():
                _, _, (_, _, codes) = vq.quantize(latent)
                codes = codes.view(latent.shape[0], latent.shape[2], latent.shape[3])
                zq = vq.quantize.embedding(codes).movedim(3, 1)
                ctx.progress(2, 3)
                out = decode_latent(vq, zq).add(1).div(2).clamp(0, 1)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise _out_of_memory(self._models.device, gw, gh, exc) from None
        ctx.progress(3, 3)
        rgb = out[0].permute(1, 2, 0).float().cpu().numpy()
        grid = np.ascontiguousarray(codes[0].cpu().numpy().astype(np.int32))
        img = rgba(rgb, width, height)
        return [
            Output("image", img, "uint8", img.shape, "srgb"),
            Output("codes", grid, "int32", grid.shape, "non_color"),
        ]


@dataclass
class ClipRequest:
    """A VQGAN+CLIP request after validation (sizes and maps at the input's resolution)."""

    width: int
    height: int
    image: np.ndarray | None  # (H, W, 3) float sRGB [0, 1]
    weight: np.ndarray | None  # (H, W) in [0, 1]: per-pixel weight of the prompt loss
    frame: Any = None  # a sequence frame's passes (temporal.coherent.Frame) with coherence
    previous: dict[str, Input] | None = None  # previous_image / previous_passes that came


class VQGANCLIPEngine(Engine):
    name = "vqgan_clip"
    version = "1"
    tasks = ("txt2img", "img2img", "sequence")
    help = (
        "VQGAN+CLIP, the " + FLOPS_NOTE + ". The VQGAN's continuous latent is optimised "
        "(Adam; quantised straight-through at every iteration, as in the original notebooks) "
        "until CLIP's embedding of the decoded image, seen through a few random crops, "
        "matches the prompt's. txt2img starts from random codes, img2img from the encoded "
        "render. With a depth input, each pixel's disparity d (1 at near, 0 at far and "
        "background) gives it the weight w = 1 - depth_weight × (1 - d): the prompt loss's "
        "gradient at that pixel is multiplied by w, and the init-image loss (init_weight) by "
        "1 - w, so near things follow the prompt and the background keeps the render. "
        "sequence: img2img per frame; with coherence exact_flow the previous stylized frame, "
        "moved along the render's motion vectors, starts (and is pulled towards by "
        "init_weight) the next one wherever the masks trust it."
    )
    capabilities = {"depth_control": "as a per-pixel loss weight (img2img)", "tileable": False}
    inputs = {
        "image": "img2img: the render, (H, W, 3|4) uint8 or float32 sRGB; the starting point",
        "depth": "img2img, optional: (H, W) float32 planar Z in scene units, +inf for "
        "background; weights the prompt per pixel (see help)",
        "passes": "sequence with coherence: the frame's capture EXR (its Vector pass)",
        **PREVIOUS_INPUTS,
    }
    params = (
        MODEL_PARAM,
        Param(
            "clip_model",
            "string",
            "",
            "CLIP: a transformers CLIPModel folder (with its tokenizer) or a repo id in the "
            "local cache, e.g. openai/clip-vit-base-patch32",
            max=4096,
        ),
        Param("prompt", "string", "", "what CLIP should see in the image", max=4000),
        Param("width", "int", 256, "output width in pixels", min=8, max=MAX_SIDE),
        Param("height", "int", 256, "output height in pixels", min=8, max=MAX_SIDE),
        Param(
            "max_work_pixels",
            "int",
            256 * 256,
            "optimise at the output size scaled down to at most this many pixels, then "
            "resample (the cost grows about linearly with it)",
            min=64,
            max=2048 * 2048,
        ),
        MAX_PIXELS_PARAM,
        Param(
            "iterations",
            "int",
            300,
            "optimisation steps (each one a decode and a CLIP pass, forward and backward)",
            min=1,
            max=5000,
        ),
        Param("lr", "float", 0.1, "Adam step size on the latent", min=0.001, max=1.0),
        Param(
            "cutn",
            "int",
            8,
            "views CLIP sees per step: the whole image plus random crops",
            min=1,
            max=64,
        ),
        Param(
            "cut_pow",
            "float",
            1.0,
            "crop size bias: above 1 favours small crops (detail), below 1 large ones",
            min=0.1,
            max=4.0,
        ),
        Param(
            "init_weight",
            "float",
            0.0,
            "img2img: pull towards the render (mean squared error; per pixel 1 - w with depth)",
            min=0.0,
            max=100.0,
        ),
        Param(
            "depth_weight",
            "float",
            1.0,
            "how much depth decides where the prompt applies (0: everywhere alike)",
            min=0.0,
            max=1.0,
        ),
        Param("near", "float", 0.0, "depth with full prompt weight (scene units)", min=0.0),
        Param("far", "float", 0.0, "depth with weight 1 - depth_weight and beyond", min=0.0),
        SEED_PARAM,
        Param(
            "coherence",
            "enum",
            "off",
            "sequences: exact_flow starts each frame from the previous stylized frame moved "
            "along the render's motion vectors (needs the passes with the Vector pass)",
            choices=MODES,
        ),
        Param(
            "coherence_init",
            "float",
            1.0,
            "share of the warped previous frame in each frame's start image (where valid)",
            min=0.0,
            max=1.0,
        ),
        Param(
            "coherence_post",
            "float",
            0.5,
            "share of the warped previous frame blended into each output",
            min=0.0,
            max=1.0,
        ),
        Param(
            "preview_every",
            "int",
            10,
            "send a preview every N iterations (0: never)",
            min=0,
            max=5000,
        ),
    )

    def __init__(self) -> None:
        self._models = _Models()

    def prepare(self, task: str, params: dict[str, Any], inputs: dict[str, Input]) -> ClipRequest:
        _require(params, "model", "a VQGAN: a diffusers VQModel folder or a .safetensors file")
        _require(params, "clip_model", "a CLIP model: a transformers CLIPModel folder")
        if not params["prompt"].strip():
            raise InvalidParams("VQGAN+CLIP needs a prompt", field="params.prompt")
        width, height = params["width"], params["height"]
        check_pixel_cap(width, height, params["max_pixels"])
        given = {k: v for k, v in inputs.items() if k in PREVIOUS_INPUTS}
        passes = inputs.get("passes")
        inputs = {k: v for k, v in inputs.items() if k not in (*PREVIOUS_INPUTS, "passes")}
        arrays = read_inputs(inputs, self.inputs)
        image = to_rgb(arrays["image"], "inputs.image") if "image" in arrays else None
        if task in ("img2img", "sequence") and image is None:
            raise InvalidParams(f"{task} needs an image input", field="inputs.image")
        if task == "txt2img" and image is not None:
            raise InvalidParams(
                "txt2img starts from random codes: send the image with task img2img",
                field="inputs.image",
            )
        weight = None
        if "depth" in arrays:
            if image is None:
                raise InvalidParams(
                    "depth weights the prompt against the render: send the image too (img2img)",
                    field="inputs.depth",
                )
            depth = arrays["depth"]
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[..., 0]
            disparity = depth_to_disparity(depth, params["near"], params["far"])
            weight = 1.0 - params["depth_weight"] * (1.0 - disparity)
        frame = None
        if task == "sequence" and coherence.config(params) is not None:
            frame = read_frame(passes)
        return ClipRequest(width, height, image, weight, frame, given)

    def close(self) -> None:
        self._models.clear()

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        req = self.prepare(task, params, inputs)
        import torch

        from .loading import downsampling
        from .optimise import Step, optimise

        vq = self._models.vq(params["model"])
        clip = self._models.clip(params["clip_model"])
        f = downsampling(vq)
        area = min(req.width * req.height, params["max_work_pixels"])
        gw, gh = fit_size(req.width, req.height, area, f)
        init = _resize(req.image, gw, gh) if req.image is not None else None
        weight = _resize_plane(req.weight, gw, gh) if req.weight is not None else None
        coh = coherence.config(params) if req.frame is not None else None
        step = None
        if coh is not None and init is not None:
            render = (np.clip(init, 0, 1) * 255 + 0.5).astype(np.uint8)
            step = coherent.prepare(coh, render, req.frame, previous(ctx, (gw, gh), req.previous))
            init = step.init.astype(np.float32) / 255.0
        every = params["preview_every"]

        def on_step(step: Step) -> None:
            ctx.progress(step.iteration, step.iterations)  # raises Cancelled: stops here
            if every and step.iteration % every == 0 and step.iteration < step.iterations:
                ctx.preview(preview(step.image))

        ctx.progress(0, params["iterations"])
        try:
            result = optimise(
                vq,
                clip,
                params["prompt"],
                width=gw,
                height=gh,
                iterations=params["iterations"],
                lr=params["lr"],
                cutn=params["cutn"],
                cut_pow=params["cut_pow"],
                seed=params["seed"],
                init_image=init,
                init_weight=params["init_weight"],
                weight=weight,
                on_step=on_step,
            )
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise _out_of_memory(self._models.device, gw, gh, exc) from None
        extra: list[Output] = []
        rgb = result.image
        if coh is not None and step is not None:
            pixels = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
            pixels, extra = coherence.finish(coh, pixels, step)
            rgb = pixels.astype(np.float32) / 255.0
        img = rgba(rgb, req.width, req.height)
        return [Output("image", img, "uint8", img.shape, "srgb"), *extra]
