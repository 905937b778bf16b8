"""Stylized sequences: what a frame is sent with, what it is written as, where it goes.

Shared by the Stylize animation operator and the render-pipeline toggle. Per frame:
- its **parameters**, evaluated at that frame (strength, seed, guidance, weights are
  ordinary keyframable properties) with the prompt from the schedule (DESIGN §9);
- its **recipe hash**: the frame's input pixels (colour and passes, read back with
  Blender's OpenImageIO, so file headers with dates do not matter), the engine and its
  version, the model (and its hash when known) and the resolved parameters. A frame file
  whose PNG carries the same hash is up to date and is not generated again: an interrupted
  or re-submitted job costs only what is missing, and moving an object regenerates exactly
  the frames where the inputs changed;
- its **file**: `<folder>/####.png` written atomically, the recipe in its PNG text (the
  Automatic1111 "parameters" and the full JSON) and the hash under `genart_hash`.
Then the frames go on the Video Sequencer as an image strip in a free channel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import compat, pngio

HASH_KEY = "genart_hash"
MARKER_PREFIX = "prompt:"
FRAME_DIGITS = 4


def resolve_prompt(scene: bpy.types.Scene, frame: int, default: str) -> str:
    """The prompt at `frame`: the latest schedule entry or `prompt:` marker at or before
    it (an entry wins over a marker on the same frame), else `default`."""
    settings = scene.genart  # type: ignore[attr-defined]
    keys: list[tuple[int, int, str]] = [
        (int(k.frame), 1, str(k.prompt)) for k in settings.prompt_schedule if k.prompt.strip()
    ]
    if settings.use_marker_prompts:
        for m in scene.timeline_markers:
            if m.name.lower().startswith(MARKER_PREFIX):
                keys.append((int(m.frame), 0, m.name[len(MARKER_PREFIX) :].strip()))
    before = sorted(k for k in keys if k[0] <= frame)
    return before[-1][2] if before else default


def pixels_hash(paths: Iterable[Path]) -> str:
    """SHA-256 of the pixels (every part/subimage, every channel) of image files."""
    oiio = compat.openimageio()
    h = hashlib.sha256()
    for path in paths:
        inp = oiio.ImageInput.open(str(path))
        if inp is None:
            raise OSError(f"cannot read {path}: {oiio.geterror()}")
        try:
            sub = 0
            while inp.seek_subimage(sub, 0):
                spec = inp.spec()
                h.update(",".join(spec.channelnames).encode())
                h.update(np.ascontiguousarray(inp.read_image(oiio.FLOAT)).tobytes())
                sub += 1
        finally:
            inp.close()
    return h.hexdigest()


def frame_hash(
    inputs_hash: str,
    engine: str,
    engine_version: str,
    model_sha: str | None,
    params: Mapping[str, Any],
) -> str:
    """The recipe hash of one frame (see the module docstring)."""
    blob = json.dumps(
        {
            "inputs": inputs_hash,
            "engine": engine,
            "version": engine_version,
            "model_sha256": model_sha,
            "params": params,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def frame_path(folder: Path, frame: int) -> Path:
    return folder / f"{frame:0{FRAME_DIGITS}d}.png"


def existing_hash(path: Path) -> str | None:
    """The recipe hash of a complete frame file already there, else None."""
    try:
        return pngio.read_text(path).get(HASH_KEY)
    except (OSError, ValueError):
        return None  # missing, partial or not a PNG: generate it again


def write_frame(path: Path, pixels: np.ndarray, recipe: Mapping[str, Any], digest: str) -> Path:
    """The frame as a PNG (atomic), with its recipe and hash in the text chunks."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    text = {
        pngio.PARAMETERS_KEY: pngio.format_parameters(recipe, (w, h)),
        pngio.RECIPE_KEY: pngio.recipe_json(recipe),
        HASH_KEY: digest,
    }
    data = pngio.encode_png(np.ascontiguousarray(pixels), w, h, channels, text)
    return pngio.write_png_atomic(path, data)


def output_folder(scene: bpy.types.Scene, name: str, folder: str = "") -> Path:
    """`folder` (Blender's // paths allowed), else `//genart/<name>/` beside the .blend;
    an unsaved .blend has no //: then an error says to save or to give a folder."""
    raw = folder or f"//genart/{bpy.path.clean_name(name)}/"
    if raw.startswith("//") and not bpy.data.filepath:
        raise ValueError(
            "save the .blend first (frames go to //genart/ beside it) or choose an output folder"
        )
    return Path(bpy.path.abspath(raw)).resolve()


def free_channel(scene: bpy.types.Scene, start: int, end: int) -> int:
    """The lowest channel with no strip overlapping frames start..end."""
    se = scene.sequence_editor
    if se is None:
        return 1
    busy = {
        s.channel
        for s in compat.strips(se)
        if s.frame_final_start <= end and s.frame_final_end > start
    }
    channel = 1
    while channel in busy:
        channel += 1
    return channel


REVIEW_SUFFIX = " genart"


def review_scene(scene: bpy.types.Scene) -> bpy.types.Scene:
    """The scene `<scene> genart` whose Video Sequencer holds the stylized strips, with the
    rendered scene's frame rate and size. Not the rendered scene itself: a scene with
    strips renders its sequencer instead of its camera, so F12 would then show (and the
    render toggle stylize again) the stylized frames."""
    review = bpy.data.scenes.get(scene.name + REVIEW_SUFFIX)
    if review is None:
        review = bpy.data.scenes.new(scene.name + REVIEW_SUFFIX)
    r, src = review.render, scene.render
    r.fps, r.fps_base = src.fps, src.fps_base
    r.resolution_x, r.resolution_y = src.resolution_x, src.resolution_y
    r.resolution_percentage = src.resolution_percentage
    return review


def add_strip(scene: bpy.types.Scene, name: str, files: list[Path], frame_start: int) -> Any:
    """An image-sequence strip of `files` (consecutive frames) starting at `frame_start`,
    in a free channel; paths relative to the .blend where it is saved."""
    if not files:
        raise ValueError("no frames to put on the timeline")
    se = scene.sequence_editor or scene.sequence_editor_create()
    previous = compat.strips(se).get(name)
    if previous is not None:  # the same stylized range again: replace, do not stack
        compat.strips(se).remove(previous)
    channel = free_channel(scene, frame_start, frame_start + len(files) - 1)
    first = files[0]
    directory = bpy.path.relpath(str(first.parent)) if bpy.data.filepath else str(first.parent)
    strip = compat.strips(se).new_image(
        name=name, filepath=str(first), channel=channel, frame_start=frame_start
    )
    for f in files[1:]:
        strip.elements.append(f.name)
    strip.directory = directory.rstrip("/\\") + "/"
    return strip


__all__ = [
    "HASH_KEY",
    "MARKER_PREFIX",
    "add_strip",
    "existing_hash",
    "frame_hash",
    "frame_path",
    "free_channel",
    "output_folder",
    "review_scene",
    "pixels_hash",
    "resolve_prompt",
    "write_frame",
]
