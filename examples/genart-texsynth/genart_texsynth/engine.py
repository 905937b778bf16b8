"""TexSynthEngine: the `texsynth` engine the sidecar's worker runs.

txt2img paints tileable fractal noise; img2img grows a texture of the requested size from
an input image by image quilting. Both are deterministic for a given seed, report progress
at every step (where a cancel takes effect) and send small previews as they go.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genart_core.engines.base import Engine, Input, Output, RunContext
from genart_core.engines.schema import Param
from genart_core.protocol.errors import EngineFailed, InvalidParams

from . import noise, quilt

PREVIEW_SIZE = 128  # longest side of a preview, pixels


def _preview(image: np.ndarray) -> Output:
    """A strided thumbnail (at most PREVIEW_SIZE on its longest side) of an RGBA image."""
    k = max(1, -(-max(image.shape[:2]) // PREVIEW_SIZE))
    small = np.ascontiguousarray(image[::k, ::k], dtype=np.uint8)
    return Output("preview", small, "uint8", small.shape, "srgb")


def _colour(params: dict[str, Any], name: str) -> tuple[int, int, int]:
    value = params[name]
    if len(value) != 3:  # the schema checks each element's range, not the list's length
        raise InvalidParams(
            f"params.{name} must be three integers [r, g, b], not {value!r}",
            field=f"params.{name}",
            allowed={"length": 3, "min": 0, "max": 255},
        )
    return (value[0], value[1], value[2])


def _read_image(inputs: dict[str, Input]) -> np.ndarray:
    """The `image` input as an (H, W, 4) uint8 array, or EngineFailed naming it."""
    allowed = {"kind": "array", "dtype": "uint8", "shape": "[H, W, 4]"}
    src = inputs.get("image")
    if src is None:
        raise EngineFailed(
            "img2img needs an input named 'image'", field="inputs.image", allowed=allowed
        )
    shape = src.shape or ()
    if src.kind != "array" or src.dtype != "uint8" or len(shape) != 3 or shape[2] != 4:
        raise EngineFailed(
            f"input 'image' must be an RGBA uint8 array [H, W, 4], not a {src.kind} "
            f"of {src.dtype} {list(shape)}",
            field="inputs.image",
            allowed=allowed,
        )
    if shape[0] < 1 or shape[1] < 1:
        raise EngineFailed("input 'image' is empty", field="inputs.image", allowed=allowed)
    return np.frombuffer(src.read_bytes(), dtype=np.uint8).reshape(shape)


class TexSynthEngine(Engine):
    name = "texsynth"
    version = "1.0"
    tasks = ("txt2img", "img2img")
    help = (
        "Classic texture synthesis, no model: txt2img paints tileable fractal noise "
        "(Perlin or value fBm) through a palette; img2img quilts a texture of any size "
        "from an input image (Efros-Freeman). Deterministic for a seed."
    )
    # `tileable` describes txt2img: with tileable=true (the default) its images wrap
    # around seamlessly. img2img quilts do not wrap.
    capabilities = {"depth_control": False, "tileable": True}
    inputs = {
        "image": "img2img only: the source texture, RGBA uint8 array [H, W, 4] (sRGB); "
        "patches are copied from it, so the output uses its colours",
    }
    params = (
        Param("width", "int", 256, "output width in pixels", min=1, max=4096),
        Param("height", "int", 256, "output height in pixels", min=1, max=4096),
        Param("seed", "int", 0, "random seed: the same seed gives the same image", min=0,
              max=2**31 - 1),
        # txt2img
        Param("noise", "enum", "perlin", "txt2img: noise basis (gradient or value noise)",
              choices=("perlin", "value")),
        Param("scale", "int", 4, "txt2img: noise cells across the width in the coarsest "
              "octave (the height gets as many as keep cells square)", min=1, max=256),
        Param("octaves", "int", 5, "txt2img: noise layers summed, each finer than the last "
              "(layers finer than a pixel are skipped)", min=1, max=12),
        Param("lacunarity", "int", 2, "txt2img: how many times finer each octave is (an "
              "integer, so every octave tiles)", min=2, max=4),
        Param("persistence", "float", 0.5, "txt2img: amplitude of each octave relative to "
              "the previous one", min=0.0, max=1.0),
        Param("turbulence", "bool", False, "txt2img: fold the noise at zero for ridges and "
              "veins"),
        Param("tileable", "bool", True, "txt2img: wrap the noise around so the image tiles "
              "seamlessly in both directions"),
        Param("palette", "enum", "two_color", "txt2img: colour map; two_color blends "
              "color_a into color_b", choices=noise.PALETTE_CHOICES),
        Param("color_a", "int_list", [24, 28, 48], "txt2img, two_color: [r, g, b] of the "
              "noise's low values (sRGB, 0-255)", min=0, max=255),
        Param("color_b", "int_list", [236, 208, 160], "txt2img, two_color: [r, g, b] of the "
              "noise's high values (sRGB, 0-255)", min=0, max=255),
        # img2img
        Param("patch", "int", 24, "img2img: side of the square patches copied from the "
              "input, pixels (clamped to the input's size)", min=2, max=256),
        Param("overlap", "float", 0.25, "img2img: overlap of neighbouring patches, as a "
              "fraction of the patch", min=0.05, max=0.5),
        Param("tolerance", "float", 0.1, "img2img: pick at random among patches whose "
              "overlap error is within this fraction of the best one's", min=0.0, max=2.0),
        Param("candidates", "int", 2000, "img2img: source positions tried per patch "
              "(a random sample when the input has more)", min=16, max=100000),
    )  # fmt: skip

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        rng = np.random.default_rng(params["seed"])
        if task == "txt2img":
            image = self._noise(params, rng, ctx)
        elif task == "img2img":
            image = self._quilt(params, _read_image(inputs), rng, ctx)
        else:  # the sidecar only sends tasks from `tasks`; this guards direct callers
            raise EngineFailed(
                f"texsynth has no task {task!r}", field="task", allowed=list(self.tasks)
            )
        return [Output("image", image, "uint8", image.shape, "srgb")]

    def _noise(self, params: dict[str, Any], rng: np.random.Generator, ctx: RunContext):
        width, height, kind = params["width"], params["height"], params["noise"]
        turbulence, tileable = params["turbulence"], params["tileable"]
        if params["palette"] == "two_color":
            stops = [(0.0, _colour(params, "color_a")), (1.0, _colour(params, "color_b"))]
        else:
            stops = noise.PALETTES[params["palette"]]
        layers = noise.octaves(
            rng,
            width,
            height,
            params["scale"],
            params["octaves"],
            params["lacunarity"],
            params["persistence"],
            kind,
            tileable,
        )
        if len(layers) < params["octaves"]:
            ctx.warn(
                f"octaves {len(layers) + 1} to {params['octaves']} would be finer than a "
                f"pixel at {width} x {height}: only {len(layers)} were used"
            )
        field = None
        for field in noise.fbm(
            layers, width, height, kind, turbulence, tileable, step=ctx.progress
        ):
            ctx.preview(_preview(noise.colourise(noise.normalise(field), stops)))
        assert field is not None  # there is always at least one octave
        steps = len(layers) * len(noise.row_bands(width, height))
        ctx.progress(steps, steps)
        return noise.colourise(noise.normalise(field), stops)

    def _quilt(
        self,
        params: dict[str, Any],
        src: np.ndarray,
        rng: np.random.Generator,
        ctx: RunContext,
    ) -> np.ndarray:
        lay = quilt.layout(
            params["width"], params["height"], *src.shape[:2], params["patch"], params["overlap"]
        )
        if lay.patch < params["patch"]:
            ctx.warn(
                f"patch {params['patch']} is larger than the {src.shape[1]} x {src.shape[0]} "
                f"input: {lay.patch}-pixel patches were used"
            )
        return quilt.quilt(
            src,
            params["width"],
            params["height"],
            patch=params["patch"],
            overlap=params["overlap"],
            tolerance=params["tolerance"],
            candidates=params["candidates"],
            rng=rng,
            on_row=ctx.progress,
            on_patch=ctx.check_cancelled,
            on_preview=lambda canvas: ctx.preview(_preview(canvas)),
        )
