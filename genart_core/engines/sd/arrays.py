"""Frame inputs as numpy arrays, checked: the render, masks, depth, normals.

Inputs arrive as the worker stored them: raw arrays with dtype and shape, or encoded
blobs (PNG and other Pillow formats). Each check names the input it rejects.
"""

from __future__ import annotations

import io

import numpy as np

from ...protocol.errors import InvalidParams
from ..base import Input

DTYPES = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "int32": np.int32,
    "float16": np.float16,
    "float32": np.float32,
}


def input_array(inp: Input) -> np.ndarray:
    """An input's pixels: (H, W) or (H, W, C)."""
    field = f"inputs.{inp.name}"
    if inp.kind == "array":
        if inp.dtype not in DTYPES or not inp.shape:
            raise InvalidParams(
                f"{inp.name}: unsupported array", field=field, allowed=sorted(DTYPES)
            )
        arr = np.fromfile(inp.path, dtype=np.dtype(DTYPES[inp.dtype]).newbyteorder("<"))
        try:
            arr = arr.reshape(inp.shape)
        except ValueError:
            raise InvalidParams(
                f"{inp.name}: {arr.size} values do not make shape {list(inp.shape)}", field=field
            ) from None
    else:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(inp.read_bytes())) as img:
                arr = np.asarray(img)
        except OSError as exc:
            raise InvalidParams(
                f"{inp.name}: cannot decode the {inp.encoding} blob ({exc})",
                field=field,
                allowed=["png", "jpeg", "webp", "tiff"],
            ) from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InvalidParams(
            f"{inp.name}: shape {list(arr.shape)} is not (H, W) or (H, W, C) with C in 1, 3, 4",
            field=field,
        )
    if min(arr.shape[:2]) < 1:
        raise InvalidParams(f"{inp.name} is empty", field=field)
    return arr


def _unit(arr: np.ndarray, field: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidParams("contains NaN or inf", field=field)
    return np.clip(out, 0.0, 1.0)


def to_rgb(arr: np.ndarray, field: str) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1]; alpha is dropped, grey is repeated."""
    img = _unit(arr, field)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def to_mask(arr: np.ndarray, field: str) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 1 where the image is regenerated."""
    m = _unit(arr, field)
    return np.ascontiguousarray(m if m.ndim == 2 else m[..., 0])


PASSES = "passes"  # a Blender multilayer EXR (the add-on's capture) standing in for several


def passes_arrays(inp: Input, allowed: dict[str, str]) -> dict[str, np.ndarray]:
    """The passes of a capture's EXR that the engine takes as inputs (depth, normal...)."""
    from ...imaging.passes import PASSES as KNOWN
    from ...imaging.passes import read_passes

    if inp.encoding not in (None, "exr"):
        raise InvalidParams(
            f"passes must be an EXR, not {inp.encoding}", field="inputs.passes", allowed=["exr"]
        )
    passes = read_passes(inp.path)
    return {
        name: getattr(passes, name)
        for name in KNOWN
        if name in allowed and getattr(passes, name) is not None
    }


def read_inputs(inputs: dict[str, Input], allowed: dict[str, str]) -> dict[str, np.ndarray]:
    """A frame's inputs as arrays: only names the engine knows, all of one (H, W)."""
    unknown = sorted(set(inputs) - set(allowed))
    if unknown:
        raise InvalidParams(
            f"unknown input {unknown[0]!r}", field=f"inputs.{unknown[0]}", allowed=sorted(allowed)
        )
    arrays = {name: input_array(inp) for name, inp in inputs.items() if name != PASSES}
    if PASSES in inputs:
        arrays = {**passes_arrays(inputs[PASSES], allowed), **arrays}  # explicit ones win
    shapes = {name: a.shape[:2] for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InvalidParams(
            f"inputs differ in size: {shapes}", field="inputs", allowed="one (H, W) for all inputs"
        )
    return arrays
