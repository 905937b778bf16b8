"""PNG files with text metadata, and Automatic1111's "parameters" text, in plain Python.

Generated images are saved by the add-on itself (DESIGN §9: colour images 8-bit sRGB) so
that their recipe travels inside the file: `encode_png` writes 8-bit grey/RGB/RGBA with
text chunks, `add_text`/`read_text` edit and read those chunks without decoding pixels,
and `write_png_atomic` puts a file in place with a temp file beside it and `os.replace`.

`format_parameters` writes a recipe the way Automatic1111's web UI writes its
"parameters" text (prompt lines, then `Negative prompt: ...`, then one line of
`Key: value` pairs, values JSON-quoted when they hold a comma, colon or newline), so
A1111, Civitai, ComfyUI readers and exiftool show it; our own fields follow as further
pairs, the last one (`genart recipe`) the whole recipe as compact JSON so nothing is lost.
`parse_parameters` reads either ours (exactly) or a plain A1111 text (what it holds).

Standard library only: no `bpy`, no numpy (a numpy uint8 array is read through the buffer
protocol), so this module imports and is tested outside Blender.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+A, RGB, RGBA)
PARAMETERS_KEY = "parameters"  # A1111's text chunk
RECIPE_KEY = "genart"  # our text chunk: the full recipe as JSON
RECIPE_FIELD = "genart recipe"  # the same JSON as the last pair of "parameters"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# zlib level 1: on a 1024² RGBA picture here level 6 took ~3x as long (90 -> 300 ms) for a
# file ~9% smaller; tests/test_pngio.py prints the time of each run.
DEFAULT_LEVEL = 1
MAX_SIDE = 2**31 - 1  # the PNG spec's limit for width and height

# Automatic1111's reader (modules/infotext_utils.py): a `Key: value` pair on the last line,
# a key starting with a word character, a value either JSON-quoted or up to the next comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE = "Negative prompt:"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
INIT_IMAGE_TASKS = frozenset({"img2img", "inpaint", "sequence"})  # "Denoising strength" applies
CONTROL_INPUTS = ("depth", "normal")  # `<name>_controlnet` and `<name>_weight` in a recipe


class PngError(ValueError):
    """A PNG that cannot be written or read as asked; the message says what is wrong."""


# -- writing --------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _keyword(key: str) -> bytes:
    """A PNG text keyword: 1-79 Latin-1 printable characters, no leading, trailing or
    double spaces (PNG spec 11.3.4.2)."""
    try:
        raw = key.encode("latin-1")
    except UnicodeEncodeError:
        raise PngError(f"PNG text key {key!r} must be Latin-1") from None
    if not 1 <= len(raw) <= 79:
        raise PngError(f"PNG text key {key!r} must be 1-79 characters, not {len(raw)}")
    if key != key.strip(" ") or "  " in key or any(not (32 <= b <= 126 or b >= 161) for b in raw):
        raise PngError(f"PNG text key {key!r}: printable characters and single inner spaces only")
    return raw


def text_chunk(key: str, value: str) -> bytes:
    """tEXt when the value is Latin-1 (as Pillow and A1111 write it), else iTXt (UTF-8,
    uncompressed, no language tag)."""
    kw = _keyword(key)
    try:
        return _chunk(b"tEXt", kw + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", kw + b"\0\0\0\0\0" + value.encode("utf-8"))


def _pixel_bytes(pixels: Any, expected: int) -> memoryview:
    """A flat byte view of `pixels` (bytes, bytearray, memoryview, numpy uint8 array);
    non-contiguous arrays (a flipped view, say) are copied in their logical order."""
    try:
        view = memoryview(pixels)
    except TypeError:
        raise PngError(f"pixels must be a bytes-like buffer, not {type(pixels).__name__}") from None
    if view.itemsize != 1 or view.format not in ("B", "b", "c"):
        raise PngError(f"pixels must be 8-bit (uint8), not format {view.format!r}")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B")
    if view.nbytes != expected:
        raise PngError(f"pixels hold {view.nbytes} bytes, width*height*channels is {expected}")
    return view


def _filter_up(data: memoryview, stride: int) -> bytes:
    """Filter type 2 (Up) on every row: each byte minus the byte above it, mod 256.

    Done on the whole image at once with one big integer per operand (SWAR: the high bit
    of each byte is set on the left and cleared on the right so no borrow crosses a byte,
    then fixed up), so there is no per-pixel Python loop."""
    n = len(data)
    if n <= stride:
        return bytes(data)
    a = int.from_bytes(data, "big")
    b = int.from_bytes(data[: n - stride], "big")  # the row above, shifted down one row
    high = int.from_bytes(b"\x80" * n, "big")
    low = int.from_bytes(b"\x7f" * n, "big")
    diff = ((a | high) - (b & low)) ^ (((a ^ b) & high) ^ high)
    return diff.to_bytes(n, "big")


def encode_png(
    pixels: Any,
    width: int,
    height: int,
    channels: int,
    text: Mapping[str, str] | None = None,
    *,
    level: int = DEFAULT_LEVEL,
    filter_up: bool = True,
) -> bytes:
    """An 8-bit PNG of `pixels`: rows top to bottom, `channels` interleaved bytes per pixel
    (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), with `text` as tEXt/iTXt chunks before the
    image data. `filter_up` filters every row with Up (better compression on images;
    False writes unfiltered rows)."""
    if channels not in COLOR_TYPES:
        raise PngError(f"channels must be 1, 2, 3 or 4, not {channels}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise PngError(f"image size must be positive, not {width}x{height}")
    stride = width * channels
    data = _pixel_bytes(pixels, stride * height)
    rows = _filter_up(data, stride) if filter_up else bytes(data)
    raw = _with_filter_bytes(rows, stride, height, 2 if filter_up else 0)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    chunks = [SIGNATURE, _chunk(b"IHDR", ihdr)]
    chunks += [text_chunk(k, v) for k, v in (text or {}).items()]
    chunks += [_chunk(b"IDAT", zlib.compress(raw, level)), _chunk(b"IEND", b"")]
    return b"".join(chunks)


def _with_filter_bytes(rows: bytes, stride: int, height: int, filter_type: int) -> bytes:
    """Prefix each row with its filter-type byte (the first row's Up is the same as None,
    its row above being zeros, so it is written as Up too)."""
    tag = bytes((filter_type,))
    view = memoryview(rows)
    return tag + tag.join(view[i * stride : (i + 1) * stride] for i in range(height))


# -- chunks ---------------------------------------------------------------------------
def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise PngError("PNG is truncated")
    return data


def _chunks(fh: BinaryIO, want: tuple[bytes, ...]) -> Iterator[tuple[bytes, bytes | None, int]]:
    """(type, data, offset of the chunk) for every chunk up to IEND; data only for the
    types in `want` (their CRC checked), the others skipped without reading them."""
    if _read_exact(fh, 8) != SIGNATURE:
        raise PngError("not a PNG file (bad signature)")
    while True:
        offset = fh.tell()
        head = fh.read(8)
        if not head:
            raise PngError("PNG has no IEND chunk")
        if len(head) != 8:
            raise PngError("PNG is truncated")
        length, kind = struct.unpack(">I4s", head)
        if kind in want:
            data = _read_exact(fh, length)
            (crc,) = struct.unpack(">I", _read_exact(fh, 4))
            if crc != zlib.crc32(data, zlib.crc32(kind)):
                raise PngError(f"PNG chunk {kind.decode('latin-1')} has a bad CRC")
            yield kind, data, offset
        else:
            fh.seek(length + 4, io.SEEK_CUR)
            yield kind, None, offset
        if kind == b"IEND":
            return


def _decode_text(kind: bytes, data: bytes) -> tuple[str, str]:
    key, sep, rest = data.partition(b"\0")
    if not sep:
        raise PngError(f"PNG {kind.decode()} chunk without a keyword separator")
    name = key.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        compressed, _method = rest[0], rest[1]
        _lang, _, rest = rest[2:].partition(b"\0")
        _translated, _, body = rest.partition(b"\0")
        return name, (zlib.decompress(body) if compressed else body).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError) as exc:
        raise PngError(f"PNG text chunk {name!r} cannot be read: {exc}") from None


def read_text(png: bytes | bytearray | memoryview | str | os.PathLike[str]) -> dict[str, str]:
    """Every tEXt, zTXt and iTXt chunk of a PNG (its bytes or its path), key -> text; a key
    written twice keeps its last value. Image data is skipped, not decoded."""
    if isinstance(png, (str, os.PathLike)):
        with open(png, "rb") as fh:
            return _read_text(fh)
    return _read_text(io.BytesIO(png))


def _read_text(fh: BinaryIO) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, data, _ in _chunks(fh, TEXT_CHUNKS):
        if data is not None:
            key, value = _decode_text(kind, data)
            out[key] = value
    return out


def add_text(png: bytes, text: Mapping[str, str]) -> bytes:
    """`png` with `text` in tEXt/iTXt chunks before its first IDAT; chunks already holding
    one of these keys are dropped, so a key is never written twice."""
    new = b"".join(text_chunk(k, v) for k, v in text.items())
    replaced = {_keyword(k) for k in text}
    out, inserted = [SIGNATURE], False
    for kind, data, offset in _chunks(io.BytesIO(png), TEXT_CHUNKS):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        end = offset + 12 + length
        if kind == b"IDAT" and not inserted:
            out.append(new)
            inserted = True
        if not (data is not None and data.partition(b"\0")[0] in replaced):
            out.append(png[offset:end])
    if not inserted:
        raise PngError("PNG has no IDAT chunk")
    return b"".join(out)


def write_png_atomic(path: str | os.PathLike[str], png_bytes: bytes) -> Path:
    """Write `png_bytes` (any file's bytes) to `path`, folders made as needed, through a
    temp file beside it and `os.replace`: a reader sees the old file or the whole new one,
    never a part. The file gets the usual permissions (0666 less the umask), so a render
    farm's other users can read it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(png_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    if png[:8] != SIGNATURE or png[12:16] != b"IHDR":
        raise PngError("not a PNG file (bad signature or no IHDR first)")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# -- Automatic1111 "parameters" -------------------------------------------------------
def quote(value: str) -> str:
    """A1111's quoting: JSON-quoted (non-ASCII kept) when the value holds a comma, colon
    or newline, as is otherwise."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except ValueError:
            return value
        return loaded if isinstance(loaded, str) else value
    return value


def _number(value: Any) -> str:
    """Python's own spelling, as A1111 writes numbers; floats rounded to the 7 digits a
    Blender float property holds (0.6, not 0.6000000238418579)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(float(f"{value:.7g}"))
    return str(value)


def _lookup(recipe: Mapping[str, Any], key: str) -> Any:
    """A recipe value: the request's `params` first, then the recipe's top level (so a flat
    recipe works too)."""
    params = recipe.get("params")
    if isinstance(params, Mapping) and key in params:
        return params[key]
    return recipe.get(key)


def model_label(model: str) -> str:
    """How A1111 names a checkpoint: a file's name without folder or extension; a
    Hugging Face repo id as it is."""
    name = model.replace("\\", "/")
    if name.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.isabs(model) or "\\" in model:
        name = name.rstrip("/").rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in CHECKPOINT_SUFFIXES:
            name = stem
    return name


def a1111_fields(recipe: Mapping[str, Any], size: tuple[int, int] | None = None) -> dict[str, str]:
    """The `Key: value` pairs of a recipe, in A1111's order, then ours (unquoted)."""
    get = _lookup
    task = recipe.get("task")
    width, height = size if size is not None else (get(recipe, "width"), get(recipe, "height"))
    model = get(recipe, "model")
    model_hash = recipe.get("model_hash") or recipe.get("model_sha256")
    strength = get(recipe, "strength") if task in INIT_IMAGE_TASKS else None
    fields: dict[str, Any] = {
        "Steps": get(recipe, "steps"),
        "Sampler": get(recipe, "scheduler"),
        "CFG scale": get(recipe, "guidance"),
        "Seed": get(recipe, "seed"),
        "Size": f"{width}x{height}" if width and height else None,
        "Model hash": model_hash[:10] if isinstance(model_hash, str) else None,  # AutoV2
        "Model": model_label(model) if isinstance(model, str) and model else None,
        "Denoising strength": strength,
        "Tiling": "True" if get(recipe, "tileable") is True else None,
    }
    unit = 0
    for name in CONTROL_INPUTS:
        controlnet = get(recipe, f"{name}_controlnet")
        if isinstance(controlnet, str) and controlnet:
            weight = get(recipe, f"{name}_weight")
            # Module "none": the control image comes from Blender, not from a preprocessor.
            parts = ["Module: none", f"Model: {model_label(controlnet)}"]
            if weight is not None:
                parts.append(f"Weight: {_number(weight)}")
            fields[f"ControlNet {unit}"] = ", ".join(parts)
            unit += 1
    fields["View transform"] = recipe.get("view_transform")
    fields["genart engine"] = recipe.get("engine")
    fields["genart task"] = task
    out = {k: _number(v) for k, v in fields.items() if v is not None and v != ""}
    out[RECIPE_FIELD] = recipe_json(recipe)
    return out


def _jsonable(value: Any) -> Any:
    """JSON for the few non-JSON values a recipe picks up from Blender: vectors and
    property arrays become lists, numpy scalars numbers."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, Mapping)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def recipe_json(recipe: Mapping[str, Any]) -> str:
    """The compact JSON of a recipe (its key order kept, non-ASCII as is)."""
    try:
        return json.dumps(recipe, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise PngError(f"a recipe holds JSON values only: {exc}") from None


def format_parameters(recipe: Mapping[str, Any], size: tuple[int, int] | None = None) -> str:
    """Automatic1111's "parameters" text for `recipe`:

        <prompt>
        Negative prompt: <negative prompt>
        Steps: 20, Sampler: euler, CFG scale: 7.5, Seed: 42, Size: 512x512, ...

    (the negative line only when there is one), then our pairs: `ControlNet N` per control
    input, `View transform`, `genart engine`, `genart task` and `genart recipe`, the full
    recipe as JSON. `size` (width, height) is the image's, else the recipe's width/height.
    """
    prompt = _lookup(recipe, "prompt") or ""
    negative = _lookup(recipe, "negative_prompt") or ""
    pairs = ", ".join(f"{k}: {quote(v)}" for k, v in a1111_fields(recipe, size).items())
    negative_text = f"\n{NEGATIVE} {negative}" if negative else ""
    return f"{prompt}{negative_text}\n{pairs}".strip()


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, pairs) as A1111's reader splits its "parameters": the
    last line holds the pairs when it has at least three of them (or our recipe); prompt
    lines run up to a `Negative prompt:` line; each line is stripped."""
    *lines, last = text.strip().split("\n")
    found = RE_PARAM.findall(last)
    if len(found) < 3 and not any(k == RECIPE_FIELD for k, _ in found):
        lines.append(last)
        found = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE):  # A1111 drops the label on every such line
            negative.append(line[len(NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    pairs = {k: unquote(v) for k, v in found}
    return "\n".join(prompt), "\n".join(negative), pairs


def json_object(raw: str | None) -> dict[str, Any] | None:
    """`raw` parsed as a JSON object, or None (absent, not JSON, not an object)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _typed(pairs: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        return kind(pairs[key])
    except (KeyError, ValueError):
        return None


def parse_parameters(text: str) -> dict[str, Any]:
    """The recipe in a "parameters" text. Ours carries it whole (`genart recipe`) and comes
    back exactly. Another tool's (A1111 and the many that copy it) comes back as
    `{"params": {prompt, negative_prompt, steps, guidance, seed, width, height, model,
    strength}, "model_hash", "sampler", "fields": every pair as written}`, with the keys
    that text lacks (or that do not parse) left out."""
    prompt, negative, pairs = parse_infotext(text)
    ours = json_object(pairs.get(RECIPE_FIELD))
    if ours is not None:
        return ours
    params: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    size = RE_SIZE.match(pairs.get("Size", ""))
    typed = {
        "steps": _typed(pairs, "Steps", int),
        "guidance": _typed(pairs, "CFG scale", float),
        "seed": _typed(pairs, "Seed", int),
        "width": int(size.group(1)) if size else None,
        "height": int(size.group(2)) if size else None,
        "model": pairs.get("Model"),
        "strength": _typed(pairs, "Denoising strength", float),
    }
    params.update({k: v for k, v in typed.items() if v is not None})
    recipe: dict[str, Any] = {"params": params}
    if "Model hash" in pairs:
        recipe["model_hash"] = pairs["Model hash"]
    if "Sampler" in pairs:
        recipe["sampler"] = pairs["Sampler"]
    recipe["fields"] = pairs
    return recipe


def recipe_text(recipe: Mapping[str, Any], size: tuple[int, int] | None = None) -> dict[str, str]:
    """The text chunks a generated PNG carries: A1111's "parameters" and the recipe JSON."""
    return {PARAMETERS_KEY: format_parameters(recipe, size), RECIPE_KEY: recipe_json(recipe)}


def recipe_from_text(text: Mapping[str, str]) -> dict[str, Any] | None:
    """The recipe in a PNG's text chunks: our JSON chunk, else "parameters", else None."""
    ours = json_object(text.get(RECIPE_KEY))
    if ours is not None:
        return ours
    if PARAMETERS_KEY in text:
        return parse_parameters(text[PARAMETERS_KEY])
    return None
