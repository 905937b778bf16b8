"""Generated images into the .blend: files under `//genart/`, their recipe kept with them.

`store_image` turns a generated picture into a Blender image. In a saved .blend the PNG is
written (atomically) to `//genart/<subfolder>/<name>.png` beside it and the image refers
to it by a relative path, so render farms and asset tools find it. In a .blend not saved
yet the same PNG bytes are packed into the image and the image is marked pending
(`image["genart_pending"]`); on save, a `save_pre` handler writes pending images under the
new file's `//genart/` and switches them to their relative paths, unpacked, before the
.blend itself is written, so the saved file never carries them twice. When a save leaves
the session unsaved (Save Copy, or a failed save) `save_post`/`save_post_fail` pack them
again, so nothing points at a path that cannot resolve.

Colour images are sRGB, control and data images Non-Color (DESIGN §9). The recipe rides
in the PNG (A1111's "parameters" text and our full JSON, see `pngio`) and on the image as
`image["genart"]`: a group of plain values for the Custom Properties panel and drivers,
its `recipe` entry the whole recipe as JSON, the one exact copy (nested values, seeds
beyond Blender's 32-bit ints). `recipe_of` reads it back, from the file when the
property is gone.

`store_float_image` keeps float data (a projection's depth, say) as a single-channel
float32 EXR (ZIP, lossless) written with Blender's bundled OpenImageIO: exact values, as
Blender's own EXR save also keeps them, at about a quarter of its size (a 1024² depth map:
3.5 MB against 12.6 MB for Blender's uncompressed RGB), loaded Non-Color.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import compat, pngio

GENART_DIR = "genart"
PROP = "genart"  # image[PROP]: the recipe (plain values + "recipe" JSON)
RECIPE_ENTRY = "recipe"
PENDING = "genart_pending"  # image[PENDING]: "<subfolder>/<file>" while packed, before a save
COLOR_SPACE = "sRGB"
DATA_SPACE = "Non-Color"
EXR_ATTRIBUTE = "genart"  # EXR header attribute holding the recipe JSON
INT32 = (-(2**31), 2**31 - 1)  # what an integer IDProperty holds
MAX_KEY = 63  # IDProperty names are at most 63 bytes
MAX_STEM = 80
RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10))}
    | {f"lpt{i}" for i in range(1, 10)}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ImageStoreError(Exception):
    """A generated image that cannot be stored; the message says what to change."""


# -- names and places -----------------------------------------------------------------
def safe_stem(name: str) -> str:
    """A file name stem any file system and farm accepts: ASCII letters, digits, `._-`
    (anything else becomes `_`), no leading dot, not a Windows device name."""
    stem = _UNSAFE.sub("_", name).strip("._ ")[:MAX_STEM].rstrip("._ ") or "image"
    return f"{stem}_" if stem.lower() in RESERVED else stem


def _subfolder_parts(subfolder: str) -> list[str]:
    """The folders of `subfolder`, each made safe; `..` and empty parts dropped."""
    parts = [p for p in re.split(r"[\\/]+", subfolder) if p.strip(". ")]
    return [safe_stem(p) for p in parts]


def blend_dir() -> Path | None:
    """The saved .blend's folder, or None while it is not saved."""
    return Path(bpy.data.filepath).parent if bpy.data.filepath else None


def _claimed_paths() -> set[str]:
    """Files the images of this session refer to (case-folded), so a new file never takes
    the name of one that is only in memory."""
    out = set()
    for image in bpy.data.images:
        if image.filepath:
            out.add(os.path.normcase(os.path.abspath(bpy.path.abspath(image.filepath))).lower())
    return out


def place(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write `data` to `folder/stem.suffix`, or `stem-2`, `stem-3`, ... when a file or an
    image already has that name (an earlier generation is never overwritten); a file
    that already holds exactly `data` and no image claims (left by a Save Copy or a
    failed save) is taken as it is. Atomic (`pngio.write_png_atomic`)."""
    claimed = _claimed_paths()
    n = 1
    while True:
        path = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        if os.path.normcase(os.path.abspath(path)).lower() not in claimed:
            if not path.exists():
                return pngio.write_png_atomic(path, data)
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                return path
        n += 1


def _relative(path: Path, base: Path) -> str:
    """Blender's `//` path of `path` from the folder `base`, with forward slashes (they
    work on every OS, so a farm on another one finds the file)."""
    return "//" + Path(os.path.relpath(path, base)).as_posix()


# -- the recipe as custom properties --------------------------------------------------
def _plain(value: Any) -> Any:
    """`value` as an IDProperty can hold it, or None: strings, bools, 32-bit ints (larger
    ones as text), floats, and lists of numbers or of strings."""
    if isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return value if INT32[0] <= value <= INT32[1] else str(value)
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            if all(isinstance(v, int) and INT32[0] <= v <= INT32[1] for v in value):
                return list(value)
            return [float(v) for v in value]
    return None


def recipe_props(recipe: dict[str, Any]) -> dict[str, Any]:
    """What `image["genart"]` holds: every plain value of the recipe's top level and of its
    `params` (flattened; a readable view, not read back), plus `recipe`, the JSON of the
    whole recipe (what `recipe_of` reads: exact, nested values included)."""
    flat: dict[str, Any] = {}
    params = recipe.get("params")
    sources = [recipe, params if isinstance(params, dict) else {}]
    for source in sources:
        for key, value in source.items():
            plain = _plain(value)
            if plain is not None and len(key.encode()) <= MAX_KEY and key != RECIPE_ENTRY:
                flat[key] = plain
    flat[RECIPE_ENTRY] = pngio.recipe_json(recipe)
    return flat


def set_recipe(image: bpy.types.Image, recipe: dict[str, Any]) -> None:
    image[PROP] = recipe_props(recipe)


def recipe_of(image: bpy.types.Image) -> dict[str, Any] | None:
    """The recipe an image was generated with: its custom property first, else the text in
    its PNG (packed or on disk; ours or A1111's) or its EXR header; None when it has none."""
    group = image.get(PROP)
    if group is not None and hasattr(group, "get"):
        raw = group.get(RECIPE_ENTRY)
        recipe = pngio.json_object(raw) if isinstance(raw, str) else None
        if recipe is not None:
            return recipe
    try:
        if image.packed_file is not None:
            data = bytes(image.packed_file.data)
            if data.startswith(pngio.SIGNATURE):
                return pngio.recipe_from_text(pngio.read_text(data))
            return None
        if not image.filepath:
            return None
        path = bpy.path.abspath(image.filepath, library=image.library)
        if not os.path.isfile(path):
            return None
        if path.lower().endswith(".exr"):
            return _exr_recipe(path)
        with open(path, "rb") as fh:
            if fh.read(8) != pngio.SIGNATURE:
                return None
        return pngio.recipe_from_text(pngio.read_text(path))
    except (pngio.PngError, OSError):
        return None


# -- storing ----------------------------------------------------------------------------
def encode_for_store(pixels: np.ndarray, recipe: dict[str, Any]) -> bytes:
    """The PNG `store_image` writes: no `bpy`, so an operator may run it on a worker thread
    (most of the time is zlib's, which releases the GIL) and hand the bytes to `store_png`
    on the main thread."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ImageStoreError(f"pixels must be uint8, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ImageStoreError(f"pixels must be (H, W) or (H, W, 1-4) uint8, not {arr.shape}")
    h, w, c = arr.shape
    return pngio.encode_png(arr, w, h, c, pngio.recipe_text(recipe, (w, h)))


def store_image(
    name: str,
    pixels: np.ndarray,
    recipe: dict[str, Any],
    *,
    non_color: bool = False,
    subfolder: str = "",
) -> bpy.types.Image:
    """A new image from `pixels` ((H, W, 3|4) uint8, rows top to bottom) with `recipe`:
    a PNG under `//genart/<subfolder>/` (or packed until the .blend is first saved),
    sRGB, or Non-Color with `non_color` (control maps, masks)."""
    return store_png(
        name, encode_for_store(pixels, recipe), recipe, non_color=non_color, subfolder=subfolder
    )


def store_png(
    name: str,
    png: bytes,
    recipe: dict[str, Any],
    *,
    non_color: bool = False,
    subfolder: str = "",
) -> bpy.types.Image:
    """`store_image` for a PNG already encoded (by `encode_for_store`); a PNG without our
    recipe text gets it added."""
    if pngio.RECIPE_KEY not in pngio.read_text(png):
        png = pngio.add_text(png, pngio.recipe_text(recipe, pngio.png_size(png)))
    image = _store(name, png, ".png", subfolder, float_buffer=False)
    image.colorspace_settings.name = DATA_SPACE if non_color else COLOR_SPACE
    set_recipe(image, recipe)
    return image


def store_float_image(
    name: str,
    array: np.ndarray,
    subfolder: str = "",
    *,
    recipe: dict[str, Any] | None = None,
) -> bpy.types.Image:
    """A new Non-Color float image from `array` ((H, W) float32, rows top to bottom), as
    a float32 EXR under `//genart/<subfolder>/` (or packed until the first save); the
    values read back exactly, +inf included. `recipe`, if any, goes into the EXR header
    and onto the image."""
    arr = np.asarray(array)
    if arr.ndim != 2 or 0 in arr.shape or arr.dtype.kind != "f":
        raise ImageStoreError(
            f"a float image needs an (H, W) float array, not {arr.dtype} {arr.shape}"
        )
    with tempfile.TemporaryDirectory(prefix="genart-exr-") as tmp:
        path = Path(tmp) / "image.exr"
        _write_exr(path, arr.astype(np.float32, copy=False), recipe)
        data = path.read_bytes()
    image = _store(name, data, ".exr", subfolder, float_buffer=True)
    image.colorspace_settings.name = DATA_SPACE
    if recipe is not None:
        set_recipe(image, recipe)
    return image


def _store(name: str, data: bytes, suffix: str, subfolder: str, float_buffer: bool) -> Any:
    """The image for a file's bytes: written under //genart/ and loaded when the .blend is
    saved, packed and pending otherwise. A fake user keeps it through save and reload
    even while nothing uses it yet (generating it cost minutes)."""
    stem = safe_stem(name)
    parts = _subfolder_parts(subfolder)
    base = blend_dir()
    if base is not None:
        folder = base.joinpath(GENART_DIR, *parts)
        try:
            path = place(folder, stem, suffix, data)
        except OSError as exc:
            raise ImageStoreError(
                f"cannot write {stem}{suffix} into {folder}: {exc.strerror or exc}; save the "
                f".blend in a folder you can write to"
            ) from None
        image = bpy.data.images.load(_relative(path, base), check_existing=False)
        image.name = name
    else:
        image = bpy.data.images.new(name, 1, 1, float_buffer=float_buffer)
        image.pack(data=data, data_len=len(data))
        image.source = "FILE"
        image[PENDING] = "/".join([*parts, stem + suffix])
    image.use_fake_user = True
    return image


def _write_exr(path: Path, arr: np.ndarray, recipe: dict[str, Any] | None) -> None:
    """One float32 channel named R (Blender reads it as grey; a channel named Y it
    misreads), ZIP-compressed, rows top to bottom."""
    oiio = compat.openimageio()
    h, w = arr.shape
    spec = oiio.ImageSpec(w, h, 1, "float")
    spec.channelnames = ("R",)
    spec.attribute("compression", "zip")
    if recipe is not None:
        spec.attribute(EXR_ATTRIBUTE, pngio.recipe_json(recipe))
    out = oiio.ImageOutput.create(str(path))
    if out is None or not out.open(str(path), spec):
        raise ImageStoreError(f"cannot write the EXR {path}: {oiio.geterror()}")
    try:
        # (H, W, 1): a 2-D array would be taken for one row of pixels.
        if not out.write_image(np.ascontiguousarray(arr[..., None])):
            raise ImageStoreError(f"cannot write the EXR {path}: {out.geterror()}")
    finally:
        out.close()


def _exr_recipe(path: str) -> dict[str, Any] | None:
    oiio = compat.openimageio()
    inp = oiio.ImageInput.open(path)
    if inp is None:
        return None
    try:
        raw = inp.spec().get_string_attribute(EXR_ATTRIBUTE, "")
    finally:
        inp.close()
    return pngio.json_object(raw) if raw else None


# -- save handlers ----------------------------------------------------------------------
def write_pending(blend_path: str) -> list[str]:
    """Write every pending image under `//genart/` of the .blend being saved to
    `blend_path` (the session's own folder when it has one: Blender's relative-path remap
    then carries the paths to a Save As target) and switch it to that file, unpacked.
    Returns the names written; an image that cannot be written stays packed and pending."""
    current = bpy.data.filepath or blend_path
    if not current:
        return []  # the startup file
    base = Path(current).parent
    written = []
    for image in bpy.data.images:
        pending = image.get(PENDING)
        if not isinstance(pending, str):
            continue
        if image.packed_file is None:  # the user unpacked it already
            del image[PENDING]
            continue
        *folders, file_name = pending.split("/")
        stem, dot, suffix = file_name.rpartition(".")
        folder = base.joinpath(GENART_DIR, *folders)
        try:
            path = place(folder, stem, dot + suffix, bytes(image.packed_file.data))
        except OSError as exc:
            print(f"genart: {image.name} stays packed, cannot write it into {folder}: {exc}")
            continue
        image.filepath_raw = _relative(path, base)
        image.unpack(method="REMOVE")
        del image[PENDING]
        written.append(image.name)
    return written


def repack_unresolved(blend_path: str) -> list[str]:
    """After a save that left the session without a file (Save Copy of an unsaved .blend,
    or a failed save): the images `write_pending` switched to `//` paths, which now
    resolve nowhere, are packed again from the files written beside `blend_path` and are
    pending again. Returns their names."""
    if bpy.data.filepath or not blend_path:
        return []
    base = Path(blend_path).parent
    restored = []
    for image in bpy.data.images:
        rel = image.filepath
        # The stubs' bpy_struct lacks the __contains__ that ID properties give every ID.
        if PROP not in image or image.packed_file is not None or not rel.startswith("//"):  # type: ignore[operator]
            continue
        path = base / rel[2:]
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts = Path(rel[2:]).parts
        image.filepath_raw = ""
        image.pack(data=data, data_len=len(data))
        image[PENDING] = "/".join(parts[1:] if parts[:1] == (GENART_DIR,) else parts)
        restored.append(image.name)
    return restored


@persistent
def _on_save_pre(filepath: str = "", *_: Any) -> None:
    write_pending(filepath)


@persistent
def _on_save_post(filepath: str = "", *_: Any) -> None:
    repack_unresolved(filepath)


HANDLERS = (
    ("save_pre", _on_save_pre),
    ("save_post", _on_save_post),
    ("save_post_fail", _on_save_post),
)


def register() -> None:
    compat.add_handlers(HANDLERS)


def unregister() -> None:
    compat.remove_handlers(HANDLERS)


__all__ = [
    "ImageStoreError",
    "encode_for_store",
    "recipe_of",
    "recipe_props",
    "register",
    "repack_unresolved",
    "store_float_image",
    "store_image",
    "store_png",
    "place",
    "unregister",
    "write_pending",
]
