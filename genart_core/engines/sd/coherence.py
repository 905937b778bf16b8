"""The `sd` engine's temporal coherence for sequences (issue 9): its parameters, reading
a frame's passes and the previous frame (from `RunContext.previous`, i.e. from disk), and
the noise hook. The mechanisms themselves are `temporal.coherent`.

Defaults from the first measurement (tests/test_temporal_blender.py's 8 rendered frames,
tiny random SD, 4 steps, strength 0.6; warping error, naive 9.85): post blend 0.5 alone
4.98; init blend 0.5 alone 9.94; anchored noise alone 15.1; post 0.5 + noise 7.30. With
random weights and global attention, any change of the noise anywhere changes the whole
picture, so moving noise costs more than it saves; the trained micro model is the real
test (bench/temporal.py). With it (BENCHMARKS.md, 16-frame turntable and dolly, strength
0.4), error against naive: post 0.8 0.25 / 0.20; anchored noise + post 0.8 0.25 / 0.17
with fidelity, layout and stylization at or above naive's on both shots (issue 9's
target); init blend 0.5 raises the error (1.71 / 1.14). So the defaults became anchored
noise + post blend 0.8, init blend off. With the weights tuned on renders (naive flickers
far less: 2.47 / 2.88), the same default gave 0.34 / 0.31 of naive with the turntable's
fidelity below naive's (its objects turn under a fixed light: the carried history keeps
shading that has moved on). Cross-frame attention (`crossframe`) takes it to 0.31 / 0.26
at about twice the time per frame, so it is off. The guided post blend fixes the
turntable: it blends less where the render itself changed (|render_t − render_{t−1}
warped|, weight exp(−(change / g)²)), so moving shading comes through fresh while model
flicker on unchanged surfaces is still evened out. And anchored noise turned out to hurt
with depth control (the embedded model's ControlNet, strength 0.6): on the dolly it
alone drops fidelity from 0.241 to 0.085 (why is not investigated; the latent noise is
warped cell by cell, nearest, under a moving camera), so it is off. Post 0.9 guided 32
without it (the defaults): 0.30 / 0.21 of naive's error, fidelity 0.290 / 0.288 against
naive's 0.240 / 0.254, stylization 1.01 / 0.99 (issue 9's target on both shots); with
depth control at 0.6, 0.34 / 0.19 of naive with fidelity above naive's on both. It
needs frame t−1's render: the job's previous frame's `image`, or `previous_render`
beside `previous_image`; without it the frame blends unguided.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ...protocol.errors import InvalidParams
from ...temporal import coherent
from ...temporal.coherent import MODES, Coherence, Frame, Previous
from ..base import Input, Output, RunContext
from ..schema import Param
from .arrays import input_array

NOISE = "coherence_noise"  # the output carrying a frame's initial noise to the next frame
# Inputs that stand in for the committed previous frame when there is none in this job
# (the first frame of a re-run whose predecessor is on disk, F12 frames, farm chunks).
PREVIOUS_INPUTS = {
    "previous_image": "coherence: the previous frame's stylized image (when it is not in this job)",
    "previous_passes": "coherence: the previous frame's capture EXR (with previous_image)",
    "previous_render": "coherence: the previous frame's render, the image it was made from "
    "(with previous_image; coherence_guided needs it)",
}

PARAMS = (
    Param(
        "coherence",
        "enum",
        "off",
        "sequences: exact_flow carries the previous stylized frame and the noise along the "
        "render's motion vectors (needs the passes with the Vector pass)",
        choices=MODES,
    ),
    Param(
        "coherence_init",
        "float",
        0.0,
        "share of the warped previous frame in each frame's init image",
        min=0.0,
        max=1.0,
    ),
    Param("coherence_noise", "bool", False, "noise that follows the surfaces"),
    Param(
        "coherence_post",
        "float",
        0.9,
        "share of the warped previous frame blended into each output",
        min=0.0,
        max=1.0,
    ),
    Param(
        "coherence_post_radius",
        "int",
        0,
        "post blend only what is coarser than this many pixels (0: everything); the frame "
        "keeps its own finer detail",
        min=0,
        max=64,
    ),
    Param(
        "coherence_guided",
        "float",
        32.0,
        "post blend less where the render itself changed by about this much (0-255; "
        "shading that moves over a turning surface): 0 blends the same everywhere",
        min=0.0,
        max=255.0,
    ),
    Param(
        "coherence_attention",
        "bool",
        False,
        "self-attention also attends to the first and the previous frame (cross-frame)",
    ),
)


def config(params: dict[str, Any]) -> Coherence | None:
    """The request's coherence, None when off. Engines without latent noise or a coarse
    blend (`vqgan_clip`) have no `coherence_noise` / `coherence_post_radius`: off."""
    if params.get("coherence", "off") == "off":
        return None
    return Coherence(
        init_blend=params["coherence_init"],
        anchored_noise=params.get("coherence_noise", False),
        post_blend=params["coherence_post"],
        post_radius=params.get("coherence_post_radius", 0),
        guided=params.get("coherence_guided", 0.0),
    )


def read_frame(inp: Input | None, field: str = "inputs.passes") -> Frame:
    """A frame's vector, object index and depth passes from its capture EXR."""
    if inp is None:
        raise InvalidParams(
            "coherence exact_flow needs each frame's passes (a capture EXR with the Vector pass)",
            field=field,
        )
    stat = inp.path.stat()
    frame = _frame_of(str(inp.path), stat.st_mtime_ns, stat.st_size)
    if frame is None:
        raise InvalidParams(
            "coherence exact_flow needs the Vector pass in the frame's passes", field=field
        )
    return frame


@lru_cache(maxsize=2)
def _frame_of(path: str, mtime_ns: int, size: int) -> Frame | None:
    """The passes of one EXR file version, decoded once: frame t reads its own passes, and
    frame t+1 reads them again as its previous frame's (the arrays are never written)."""
    from ...imaging.passes import read_passes

    passes = read_passes(Path(path))
    if passes.vector is None:
        return None
    return Frame(passes.vector, passes.object_index, passes.depth)


def previous(
    ctx: RunContext, size: tuple[int, int], given: dict[str, Input] | None = None
) -> Previous | None:
    """Frame t−1's stylized image at `size` (w, h), its passes and noise: the
    `previous_image` + `previous_passes` inputs when the frame has them (the client sends
    them when frame t−1 is not the job's previous frame: a re-run's first frame, a gap of
    up-to-date frames, a render frame by frame), else the job's committed previous frame;
    None for a first frame."""
    from PIL import Image

    prev = ctx.previous
    given = given or {}
    if "previous_image" in given and "previous_passes" in given:
        rgb = input_array(given["previous_image"])[..., :3]
        if (rgb.shape[1], rgb.shape[0]) != size:
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        render = _rgb(given["previous_render"]) if "previous_render" in given else None
        frame = read_frame(given["previous_passes"], "inputs.previous_passes")
        return Previous(rgb, frame, render=render)
    if prev is None or "image" not in prev.outputs or "passes" not in prev.inputs:
        return None
    rgb = input_array(prev.outputs["image"])[..., :3]
    if (rgb.shape[1], rgb.shape[0]) != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    noise = input_array(prev.outputs[NOISE]) if NOISE in prev.outputs else None
    if noise is not None:
        noise = np.moveaxis(noise, -1, 0).astype(np.float32)  # stored (h, w, C)
    render = _rgb(prev.inputs["image"]) if "image" in prev.inputs else None
    return Previous(rgb, read_frame(prev.inputs["passes"]), noise, render)


def _rgb(inp: Input) -> np.ndarray:
    """An image input as (H, W, 3) uint8 (grey and RGBA renders alike)."""
    arr = input_array(inp)
    arr = arr >> 8 if arr.dtype == np.uint16 else arr  # a 16-bit PNG render
    arr = arr[..., None] if arr.ndim == 2 else arr
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
    return np.ascontiguousarray(arr.astype(np.uint8))


VALID = "coherence_valid"  # the share of the frame carried from the previous one


def scalar_output(name: str, value: float) -> Output:
    """One number as a float32 output (the valid share, the frame's warping error)."""
    arr = np.array([value], np.float32)
    return Output(name, arr, "float32", (1,), "linear")


def noise_output(noise: np.ndarray) -> Output:
    """The (C, h, w) noise as an output (h, w, C) float32 for the next frame."""
    arr = np.ascontiguousarray(np.moveaxis(noise, 0, -1), np.float32)
    return Output(NOISE, arr, "float32", arr.shape, "linear")


def finish(
    coh: Coherence, pixels: np.ndarray, step: coherent.Step
) -> tuple[np.ndarray, list[Output]]:
    """Frame t's output (h, w, 3) uint8 after the post blend, and what it reports: its
    warping error (not on a first frame), its initial noise for the next frame (when
    anchored) and the share of it carried from the previous frame."""
    pixels = coherent.finish(coh, pixels, step)
    extra = []
    error = coherent.frame_error(pixels, step)
    if error is not None:
        extra.append(scalar_output("warping_error", error))
    if step.noise is not None:
        extra.append(noise_output(step.noise))
    extra.append(scalar_output(VALID, step.valid_share))
    return pixels, extra


@contextmanager
def fixed_noise(pipe: Any, noise: np.ndarray | None) -> Iterator[Any]:
    """A pipeline sharing `pipe`'s models whose image-to-image start noise is `noise`
    ((C, h, w)): its own scheduler's `add_noise` uses it instead of fresh noise. `pipe`
    itself is untouched."""
    if noise is None:
        yield pipe
        return
    import torch

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    call = type(pipe).from_pipe(pipe, scheduler=scheduler)
    call.set_progress_bar_config(disable=True)
    add = scheduler.add_noise
    fixed = torch.from_numpy(noise)[None]

    def add_noise(original: Any, _noise: Any, timesteps: Any) -> Any:
        return add(original, fixed.to(original.device, original.dtype), timesteps)

    scheduler.add_noise = add_noise
    yield call
