"""StableDiffusionEngine: SD 1.5 / 2.x / SDXL (and Turbo, LCM) through diffusers.

One engine serves text-to-image, image-to-image, inpainting and ControlNet control from
the renderer's exact depth and normals (several ControlNets at once, each with a weight).
Everything a request carries is validated before a model is touched. Models stay loaded
between jobs; pipeline variants share one set of components (`from_pipe`), and nothing
shared is changed per request except inside a `finally` that restores it (tileable
padding). torch and diffusers are imported on first use, so describing the engine is free.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...imaging.control import (
    check_near_far,
    depth_to_disparity,
    fit_size,
    has_near_far,
    normals_to_bae,
)
from ...protocol.errors import EngineFailed, InvalidParams, OutOfMemory
from ...temporal import coherent
from ...temporal.coherent import Frame
from ..base import Engine, Input, Output, RunContext
from ..schema import MAX_PIXELS_PARAM, MAX_SIDE, Param, check_pixel_cap
from . import coherence, crossframe
from .arrays import read_inputs, to_mask, to_rgb
from .wrap import wrapped

log = logging.getLogger("genart.engines.sd")

SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp_2m", "lcm")
# Latent → RGB factors for cheap previews without a VAE decode (SD 1.x/2.x and SDXL).
LATENT_RGB_SD = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
LATENT_RGB_SDXL = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]


@dataclass
class Prepared:
    """A request after validation: what the pipeline call needs, nothing model-specific."""

    mode: str  # txt2img | img2img | inpaint
    width: int
    height: int
    image: np.ndarray | None  # (H, W, 3) float32 sRGB in [0, 1]
    mask: np.ndarray | None  # (H, W) float32, 1 = repaint
    controls: list[tuple[str, str, float, np.ndarray]]  # (kind, model ref, weight, map)
    frame: Frame | None = None  # a sequence frame's passes when coherence is on
    previous: dict[str, Input] | None = None  # coherence.PREVIOUS_INPUTS that came


class StableDiffusionEngine(Engine):
    name = "sd"
    version = "1"
    tasks = ("txt2img", "img2img", "inpaint", "control", "sequence")
    help = (
        "Stable Diffusion 1.5 / 2.x / SDXL and their Turbo/LCM variants through "
        "diffusers: text, a render, a mask, and exact depth/normal control."
    )
    capabilities = {
        "depth_control": "with depth_controlnet",
        "normal_control": "with normal_controlnet",
        "inpaint": True,
        "tileable": True,
        "panorama": True,
        "lora": True,
        "multi_controlnet": True,
    }
    inputs = {
        "image": "the render: (H, W, 3|4) uint8 or float32 sRGB; init image / inpaint source",
        "mask": "(H, W) uint8 or float32; white/1 = regenerate (inpaint)",
        "depth": "(H, W) float32 planar Z in scene units, +inf for background",
        "normal": "(H, W, 3) float32 world-space normals (Blender's Normal pass)",
        "passes": "a Blender multilayer EXR (the add-on's capture); its depth and normal "
        "passes stand in for those inputs",
        **coherence.PREVIOUS_INPUTS,
    }
    params = (
        Param(
            "model",
            "string",
            "",
            "Hugging Face repo id, diffusers folder or .safetensors file; empty: the "
            "embedded micro model (64 px textures, trained by the project)",
            max=4096,
        ),
        Param("prompt", "string", "", "what to generate", max=4000),
        Param("negative_prompt", "string", "", "what to avoid", max=4000),
        Param(
            "width",
            "int",
            512,
            "output width in pixels (resampled from the model's size)",
            min=8,
            max=MAX_SIDE,
        ),
        Param("height", "int", 512, "output height in pixels", min=8, max=MAX_SIDE),
        MAX_PIXELS_PARAM,
        Param("steps", "int", 20, "denoising steps", min=1, max=150),
        Param(
            "guidance",
            "float",
            7.5,
            "classifier-free guidance scale (0-1 for Turbo)",
            min=0.0,
            max=30.0,
        ),
        Param(
            "strength",
            "float",
            0.6,
            "how much an init image changes (img2img, inpaint)",
            min=0.0,
            max=1.0,
        ),
        Param(
            "seed",
            "int",
            0,
            "noise seed: the same request gives the same pixels",
            min=0,
            max=2**32 - 1,
        ),
        Param("scheduler", "enum", "default", "sampler", choices=SCHEDULERS),
        Param("tileable", "bool", False, "seamless on all four edges (circular padding)"),
        Param(
            "panorama",
            "bool",
            False,
            "360° panorama for world backgrounds: width = 2 × height, wraps left-right only",
        ),
        Param("loras", "string_list", [], "LoRA .safetensors files, applied for this request"),
        Param(
            "lora_weights",
            "float_list",
            [],
            "one weight per LoRA (default 1.0 each)",
            min=-5.0,
            max=5.0,
        ),
        Param(
            "depth_controlnet",
            "string",
            "",
            "ControlNet for the depth input (repo, folder or file); empty: depth is not used",
            max=4096,
        ),
        Param("depth_weight", "float", 1.0, "depth control weight", min=0.0, max=2.0),
        Param("normal_controlnet", "string", "", "ControlNet for the normal input", max=4096),
        Param("normal_weight", "float", 1.0, "normal control weight", min=0.0, max=2.0),
        Param("near", "float", 0.0, "depth mapped to white (scene units; sequence-wide)", min=0.0),
        Param("far", "float", 0.0, "depth mapped to black and beyond", min=0.0),
        Param(
            "camera_rotation",
            "float_list",
            [],
            "camera-to-world 3×3 rotation, row-major (needed with a normal input)",
            min=-1.0,
            max=1.0,
        ),
        Param(
            "control_fallback",
            "bool",
            False,
            "run without control (and say so) when a "
            "control input has no ControlNet, instead of failing",
        ),
        Param(
            "preview_vae",
            "string",
            "",
            "TAESD (AutoencoderTiny) for sharp previews; empty: a latent approximation",
            max=4096,
        ),
        Param("preview_every", "int", 5, "send a preview every N steps (0: never)", min=0, max=150),
        *coherence.PARAMS,
    )

    @classmethod
    def describe(cls) -> dict[str, Any]:
        from ...micro import embedded_info, has_embedded_controlnet

        out = {**super().describe(), "default_model": embedded_info()}
        if has_embedded_controlnet():  # no model named: the embedded depth ControlNet
            caps = out["capabilities"]
            caps["depth_control"] = f"{caps['depth_control']} or without model"
        return out

    def __init__(self) -> None:
        self._device: str | None = None
        self._dtype: Any = None
        self._bases: dict[str, Any] = {}
        self._controlnets: dict[str, Any] = {}
        self._anchors: dict[str, crossframe.Anchors] = {}  # cross-frame attention, per job
        self._preview_vaes: dict[str, Any] = {}
        self._variants: dict[tuple[Any, ...], Any] = {}

    # -- validation (before any model is touched) -----------------------------------
    def prepare(
        self,
        task: str,
        params: dict[str, Any],
        inputs: dict[str, Input],
        ctx: RunContext | None = None,
    ) -> Prepared:
        model_ref(params)  # an empty model needs the embedded one
        width, height = params["width"], params["height"]
        check_pixel_cap(width, height, params["max_pixels"])
        given = {k: v for k, v in inputs.items() if k in coherence.PREVIOUS_INPUTS}
        inputs = {k: v for k, v in inputs.items() if k not in coherence.PREVIOUS_INPUTS}
        arrays = read_inputs(inputs, self.inputs)
        image = to_rgb(arrays["image"], "inputs.image") if "image" in arrays else None
        mask = to_mask(arrays["mask"], "inputs.mask") if "mask" in arrays else None

        controls: list[tuple[str, str, float, np.ndarray]] = []
        bundled = set(arrays) - set(inputs)  # came inside a capture's `passes`, not asked for
        for kind in ("depth", "normal"):
            if kind not in arrays:
                continue
            ref = params[f"{kind}_controlnet"]
            near_far = has_near_far(params["near"], params["far"])
            if not ref and kind == "depth" and (kind not in bundled or near_far):
                ref = embedded_depth(params)  # a capture's depth counts with its near/far
            if not ref and kind in bundled:
                continue  # a pass the capture carries anyway; only a ControlNet makes it count
            if not ref:
                message = (
                    f"a {kind} input was sent but no {kind}_controlnet is set: the "
                    f"model alone cannot use {kind} control"
                )
                if not params["control_fallback"]:
                    raise InvalidParams(message, field=f"params.{kind}_controlnet")
                if ctx is not None:
                    ctx.warn(message + "; generated without it (control_fallback)")
                continue
            if kind == "depth":
                check_near_far(params["near"], params["far"])
                cmap = depth_to_disparity(arrays["depth"], params["near"], params["far"])
                cmap = np.repeat(cmap[..., None], 3, axis=2)
            else:
                if len(params["camera_rotation"]) != 9:
                    raise InvalidParams(
                        "a normal input needs camera_rotation (9 numbers)",
                        field="params.camera_rotation",
                    )
                cmap = normals_to_bae(arrays["normal"], np.array(params["camera_rotation"]))
            controls.append((kind, ref, params[f"{kind}_weight"], cmap))
        for kind in ("depth", "normal"):
            if params[f"{kind}_controlnet"] and kind not in arrays:
                raise InvalidParams(
                    f"{kind}_controlnet is set but no {kind} input was sent", field=f"inputs.{kind}"
                )

        mode = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "inpaint"}.get(task)
        if mode is None:  # control and sequence: decided by what came with the frame
            mode = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
        if mode == "img2img" and image is None:
            raise InvalidParams("img2img needs an image input", field="inputs.image")
        if mode == "inpaint" and (image is None or mask is None):
            raise InvalidParams("inpaint needs an image and a mask", field="inputs.mask")
        if task == "control" and not controls:
            if image is None:
                raise InvalidParams(
                    "control needs a depth or normal input with its ControlNet, or an image",
                    field="inputs.depth",
                )
            if ctx is not None:  # e.g. a model set without a ControlNet
                ctx.warn("no depth or normal ControlNet: image-to-image on the render only")
        if mode != "txt2img" and int(params["steps"] * params["strength"]) < 1:
            raise InvalidParams(
                f"strength {params['strength']} × steps {params['steps']} leaves no denoising "
                "step: raise strength or steps",
                field="params.strength",
                allowed={"min": 1.0 / params["steps"]},
            )
        if params["panorama"]:
            if width != 2 * height:
                raise InvalidParams(
                    f"a 360° panorama is 2:1; got {width}×{height}",
                    field="params.width",
                    allowed=f"2 × height = {2 * height}",
                )
            if params["tileable"]:
                raise InvalidParams(
                    "panorama and tileable exclude each other", field="params.panorama"
                )
        self._check_loras(params)
        frame = None
        if task == "sequence" and mode == "img2img" and coherence.config(params) is not None:
            frame = coherence.read_frame(inputs.get("passes"))
        return Prepared(mode, width, height, image, mask, controls, frame, given)

    @staticmethod
    def _check_loras(params: dict[str, Any]) -> None:
        from .singlefile import is_safetensors

        loras, weights = params["loras"], params["lora_weights"]
        if weights and len(weights) != len(loras):
            raise InvalidParams(
                f"{len(loras)} LoRAs but {len(weights)} weights",
                field="params.lora_weights",
                allowed=f"{len(loras)} numbers, or none for 1.0 each",
            )
        for path in loras:
            file = Path(os.path.expanduser(path))
            if not file.is_file():
                raise InvalidParams(f"no LoRA file at {path}", field="params.loras")
            if not is_safetensors(file):
                raise InvalidParams(
                    f"{path} is not a .safetensors file (pickle LoRAs are refused)",
                    field="params.loras",
                )

    # -- models ----------------------------------------------------------------------
    def _ensure_device(self) -> None:
        if self._device is None:
            from ..device import pick_device

            self._device, self._dtype = pick_device()
            log.info("sd engine on %s (%s)", self._device, self._dtype)

    def _base(self, ref: str) -> Any:
        if ref not in self._bases:
            from .loading import load_pipeline

            pipe = load_pipeline(ref, torch_dtype=self._dtype)
            pipe.set_progress_bar_config(disable=True)
            self._bases[ref] = pipe
        pipe = self._bases[ref]
        self._place(pipe)
        return pipe

    def _place(self, pipe: Any) -> None:
        """Puts a pipeline on the device with the sidecar's memory options (GENART_MEMORY:
        attention_slicing, vae_tiling, cpu_offload)."""
        options = set(filter(None, os.environ.get("GENART_MEMORY", "").split(",")))
        if getattr(pipe, "_genart_placed", False):
            return
        if "attention_slicing" in options:
            pipe.enable_attention_slicing()
        if "vae_tiling" in options:
            pipe.vae.enable_tiling()
        if "cpu_offload" in options and self._device != "cpu":
            pipe.enable_sequential_cpu_offload(device=self._device)
        else:
            pipe.to(self._device)
        pipe._genart_placed = True

    def _controlnet(self, ref: str) -> Any:
        if ref not in self._controlnets:
            from .loading import load_controlnet

            self._controlnets[ref] = load_controlnet(ref, torch_dtype=self._dtype)
        return self._controlnets[ref].to(self._device)  # back from an offload, if any

    def _preview_vae(self, ref: str) -> Any:
        if ref not in self._preview_vaes:
            from .loading import load_preview_vae

            self._preview_vaes[ref] = load_preview_vae(ref, torch_dtype=self._dtype)
        return self._preview_vaes[ref].to(self._device)

    def _pipeline(self, ref: str, mode: str, control_refs: tuple[str, ...]) -> Any:
        key = (ref, mode, control_refs)
        if key not in self._variants:
            from diffusers import (
                AutoPipelineForImage2Image,
                AutoPipelineForInpainting,
                AutoPipelineForText2Image,
                MultiControlNetModel,
            )

            base = self._base(ref)
            cls = {
                "txt2img": AutoPipelineForText2Image,
                "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting,
            }[mode]
            kwargs: dict[str, Any] = {}
            if control_refs:
                nets = [self._controlnet(r) for r in control_refs]
                kwargs["controlnet"] = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
            pipe = cls.from_pipe(base, **kwargs)
            pipe.set_progress_bar_config(disable=True)
            self._variants[key] = pipe
        return self._variants[key]

    def model_capabilities(self, params: dict[str, Any]) -> dict[str, Any]:
        self._ensure_device()
        base = self._base(model_ref(params))
        return {
            **self.capabilities,
            "family": _family(base),
            "native_size": _native_side(base),
            "depth_control": bool(params.get("depth_controlnet") or embedded_depth(params)),
            "normal_control": bool(params.get("normal_controlnet")),
        }

    def offload(self) -> None:
        """Models to the CPU (kept loaded); the next run puts them back on the device."""
        for pipe in self._bases.values():
            pipe.to("cpu")
            pipe._genart_placed = False
        for net in [*self._controlnets.values(), *self._preview_vaes.values()]:
            net.to("cpu")
        self._variants.clear()

    def close(self) -> None:
        self._preview_vaes.clear()
        self._variants.clear()
        self._bases.clear()
        self._controlnets.clear()
        self._anchors.clear()

    # -- running ---------------------------------------------------------------------
    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        prep = self.prepare(task, params, inputs, ctx)
        self._ensure_device()
        import torch

        try:
            pipe = self._pipeline(model_ref(params), prep.mode, tuple(c[1] for c in prep.controls))
            image, extra = self._generate(pipe, prep, params, ctx)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise OutOfMemory(
                f"out of memory on {self._device} at {prep.width}×{prep.height}: lower the "
                "resolution or the number of ControlNets, or free GPU memory (close other "
                f"GPU programs, render first, then generate). ({exc})".split("\n")[0]
            ) from None
        return [Output("image", image, "uint8", (prep.height, prep.width, 4), "srgb"), *extra]

    @contextlib.contextmanager
    def _loras(self, base: Any, params: dict[str, Any]) -> Iterator[None]:
        """Loads the request's LoRAs into the shared model and removes them afterwards, so
        nothing of them reaches the next job."""
        loras = params["loras"]
        if not loras:
            yield
            return
        weights = params["lora_weights"] or [1.0] * len(loras)
        names: list[str] = []
        try:
            for i, path in enumerate(loras):
                name = f"genart_lora_{i}"
                try:
                    base.load_lora_weights(os.path.expanduser(path), adapter_name=name)
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise InvalidParams(
                        f"LoRA {path} does not fit this model: {str(exc)[:200]}",
                        field="params.loras",
                    ) from None
                names.append(name)
            base.set_adapters(names, adapter_weights=weights)
            yield
        finally:
            if names:
                base.delete_adapters(names)

    def _generate(
        self, pipe: Any, prep: Prepared, params: dict[str, Any], ctx: RunContext
    ) -> tuple[np.ndarray, list[Output]]:
        import torch
        from PIL import Image

        base = self._bases[model_ref(params)]
        unknown = unknown_words(base.tokenizer, params["prompt"])
        if unknown:
            ctx.warn(f"words the model does not know, ignored: {', '.join(unknown)}")
        # diffusers' SD pipelines want sides divisible by 8; a tileable latent must also
        # stay a torus through every downsampling of the UNet.
        multiple = pipe.vae_scale_factor
        if params["tileable"] or params["panorama"]:
            multiple *= 2 ** (len(base.unet.config.down_block_types) - 1)
        multiple = math.lcm(multiple, 8)
        side = _native_side(base)
        gw, gh = fit_size(prep.width, prep.height, side * side, multiple)
        if params["panorama"]:  # exactly 2:1, so the wrap is a full turn
            gh = max(multiple, round((side * side / 2) ** 0.5 / multiple) * multiple)
            gw = 2 * gh

        def pil(arr: np.ndarray, mode: str = "RGB") -> Image.Image:
            data = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
            img = Image.fromarray(data, "L" if data.ndim == 2 else "RGB")
            return img.resize((gw, gh), Image.Resampling.LANCZOS).convert(mode)

        kwargs: dict[str, Any] = {
            "prompt": params["prompt"],
            "negative_prompt": params["negative_prompt"] or None,
            "num_inference_steps": params["steps"],
            "guidance_scale": params["guidance"],
            "generator": torch.Generator("cpu").manual_seed(params["seed"]),
            "output_type": "np",
        }
        if prep.mode == "txt2img":
            kwargs.update(width=gw, height=gh)
        else:
            kwargs.update(image=pil(prep.image), strength=params["strength"])  # type: ignore[arg-type]
        coh = coherence.config(params) if prep.frame is not None else None
        step = None
        if coh is not None and prep.frame is not None:
            f = pipe.vae_scale_factor
            step = coherent.prepare(
                coh,
                np.asarray(kwargs["image"]),
                prep.frame,
                coherence.previous(ctx, (gw, gh), prep.previous),
                latent_shape=(base.unet.config.in_channels, gh // f, gw // f),
                rng=np.random.default_rng(params["seed"]),  # the same base noise every frame
            )
            kwargs["image"] = Image.fromarray(step.init)
        if prep.mode == "inpaint":
            kwargs.update(mask_image=pil(prep.mask, "L"), width=gw, height=gh)  # type: ignore[arg-type]
        if prep.controls:
            maps = [pil(c[3]) for c in prep.controls]
            weights = [c[2] for c in prep.controls]
            key = "image" if prep.mode == "txt2img" else "control_image"
            kwargs[key] = maps[0] if len(maps) == 1 else maps
            kwargs["controlnet_conditioning_scale"] = weights[0] if len(weights) == 1 else weights
        if params["scheduler"] != "default":
            pipe = type(pipe).from_pipe(
                pipe, scheduler=_scheduler(params["scheduler"], pipe.scheduler.config)
            )
            pipe.set_progress_bar_config(disable=True)
        factors = LATENT_RGB_SDXL if _family(base) == "sdxl" else LATENT_RGB_SD
        every = params["preview_every"]
        taesd = self._preview_vae(params["preview_vae"]) if params["preview_vae"] else None

        def on_step(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            total = int(getattr(p, "num_timesteps", 0) or params["steps"])
            ctx.progress(i + 1, total)  # raises Cancelled: the loop stops at this step
            if every and ((i + 1) % every == 0) and "latents" in kw:
                ctx.preview(_latent_preview(kw["latents"], factors, taesd))
            return kw

        # img2img and inpaint run only the last `strength` share of the schedule.
        expected = (
            params["steps"] if prep.mode == "txt2img" else int(params["steps"] * params["strength"])
        )
        ctx.progress(0, expected)
        modules = [base.unet, base.vae, *self._controlnets.values()]
        wrap_x = params["tileable"] or params["panorama"]
        attend = coh is not None and params["coherence_attention"]
        same = (model_ref(params), gw, gh, params["steps"], params["strength"], params["guidance"])
        anchors: list[Any] = []
        if attend:
            anchors, note = crossframe.anchors_for(self._anchors, ctx.job, ctx.frame, same)
            if note:
                ctx.warn(note)
        with (
            self._loras(base, params),
            wrapped(modules, wrap_x, params["tileable"]),
            coherence.fixed_noise(pipe, step.noise if step else None) as call,
            _attention(base.unet, anchors, attend) as recorded,
            torch.inference_mode(),
        ):
            out = call(
                **kwargs,
                callback_on_step_end=on_step,
                callback_on_step_end_tensor_inputs=["latents"],
            ).images[0]
        if not np.isfinite(out).all():
            raise EngineFailed(
                "the model produced NaN or inf pixels (try fp32 or another VAE)",
                field="params.model",
            )
        if attend:
            crossframe.remember(self._anchors, ctx.job, ctx.frame, same, recorded)
        pixels = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
        extra: list[Output] = []
        if coh is not None and step is not None:
            pixels, extra = coherence.finish(coh, pixels, step)
        img = Image.fromarray(pixels, "RGB")
        wrap_x = params["tileable"] or params["panorama"]
        img = resize(img, (prep.width, prep.height), wrap_x, params["tileable"])
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))), extra


def _attention(unet: Any, anchors: list[Any], on: bool) -> contextlib.AbstractContextManager[Any]:
    """Cross-frame attention while the frame is denoised (yields its recording), or nothing."""
    return crossframe.cross_frame(unet, anchors) if on else contextlib.nullcontext({})


def model_ref(params: dict[str, Any]) -> str:
    """The model a request names, or the embedded micro model when it names none."""
    if params["model"]:
        return str(params["model"])
    from ...micro import EmbeddedModelError, embedded_model

    try:
        folder = embedded_model()
    except EmbeddedModelError as exc:
        raise InvalidParams(str(exc), field="params.model") from None
    if folder is None:
        raise InvalidParams(
            "choose a model: a Hugging Face repo id, a diffusers folder or a .safetensors file "
            "(this installation has no embedded model)",
            field="params.model",
        )
    return str(folder)


def embedded_depth(params: dict[str, Any]) -> str:
    """The embedded model's own depth ControlNet when the request names no model (and no
    ControlNet): texture from camera is then depth-controlled on the defaults too."""
    if params.get("model"):
        return ""
    from ...micro import EmbeddedModelError, embedded_controlnet

    try:
        folder = embedded_controlnet()
    except EmbeddedModelError as exc:
        raise InvalidParams(str(exc), field="params.model") from None
    return "" if folder is None else str(folder)


def unknown_words(tokenizer: Any, prompt: str) -> list[str]:
    """The words of `prompt` that `tokenizer` can only read as its unknown token, each
    once, in order. Byte-level BPE tokenizers (real CLIP) have none; the embedded model's
    word-level tokenizer knows its training words and their synonyms."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        return []
    out: list[str] = []
    for word in re.findall(r"\w+", prompt.lower()):
        if word not in out and unk in tokenizer(word, add_special_tokens=False).input_ids:
            out.append(word)
    return out


def resize(img: Any, size: tuple[int, int], wrap_x: bool, wrap_y: bool) -> Any:
    """Lanczos resize that keeps a periodic image periodic: the filter sees the wrapped
    neighbours (three copies side by side), not a clamped edge."""
    from PIL import Image

    if img.size == size:
        return img
    if not (wrap_x or wrap_y):
        return img.resize(size, Image.Resampling.LANCZOS)
    nx, ny = (3 if wrap_x else 1), (3 if wrap_y else 1)
    tiled = Image.fromarray(np.tile(np.asarray(img), (ny, nx, 1)))
    big = tiled.resize((size[0] * nx, size[1] * ny), Image.Resampling.LANCZOS)
    x0, y0 = (size[0] if wrap_x else 0), (size[1] if wrap_y else 0)
    return big.crop((x0, y0, x0 + size[0], y0 + size[1]))


def _family(pipe: Any) -> str:
    name = type(pipe).__name__
    if "XL" in name:
        return "sdxl"
    return "sd2" if getattr(pipe.unet.config, "cross_attention_dim", 768) == 1024 else "sd1"


def _native_side(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def _scheduler(name: str, config: Any) -> Any:
    import diffusers

    cls = {
        "ddim": diffusers.DDIMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "euler_a": diffusers.EulerAncestralDiscreteScheduler,
        "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
        "lcm": diffusers.LCMScheduler,
    }[name]
    return cls.from_config(config)


def _latent_preview(latents: Any, factors: list[list[float]], taesd: Any = None) -> Output:
    """An RGB preview of the current latents: through TAESD when given (a few ms), else
    a linear latent → RGB map (no decode at all)."""
    import torch

    lat = latents[0].float().cpu()  # (C, h, w)
    if taesd is not None:
        with torch.no_grad():
            img = taesd.decode(latents[:1].to(taesd.dtype)).sample[0]  # (3, H, W) in [-1, 1]
        rgb = (img.float().cpu().permute(1, 2, 0) + 1.0) * 0.5
    elif lat.shape[0] == len(factors):
        rgb = torch.einsum("chw,cr->hwr", lat, torch.tensor(factors))
        rgb = (rgb + 1.0) * 0.5
    else:  # an unknown latent space: its first three channels, normalised
        rgb = lat[:3].permute(1, 2, 0)
        rgb = (rgb - rgb.amin()) / (rgb.amax() - rgb.amin() + 1e-8)
    data = (rgb.clamp(0, 1) * 255).to(torch.uint8).numpy()
    rgba = np.concatenate([data, np.full(data.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return Output("preview", np.ascontiguousarray(rgba), "uint8", rgba.shape, "srgb")
