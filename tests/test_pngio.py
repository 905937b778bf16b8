"""The add-on's PNG writer and "parameters" text, outside Blender: Pillow decodes what
`pngio` writes to the same pixels and sees the same text; A1111's layout is kept and reads
back, ours exactly and a plain A1111 text as far as it goes."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "genart_pngio", ROOT / "blender_addon" / "pngio.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["genart_pngio"] = module
    spec.loader.exec_module(module)
    return module


pngio = _load()

RECIPE = {
    "engine": "sd",
    "task": "control",
    "params": {
        "model": "/models/sd15/dreamshaper_8.safetensors",
        "prompt": 'a red teapot, "glazed", on a table:\n  studio light, café ☕',
        "negative_prompt": "blurry, low quality\nwatermark: none",
        "width": 768,
        "height": 512,
        "steps": 25,
        "guidance": 7.5,
        "strength": 0.6000000238418579,
        "seed": 4294967295,
        "scheduler": "euler_a",
        "tileable": False,
        "loras": ["a.safetensors"],
        "lora_weights": [0.8],
        "depth_controlnet": "lllyasviel/control_v11f1p_sd15_depth",
        "depth_weight": 0.75,
        "normal_controlnet": "",
        "near": 2.5,
        "far": 7.25,
    },
    "model_hash": "e1441589a6f3c5b7d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2",
    "view_transform": "AgX",
    "frame": 1,
}

A1111_TEXT = (
    "masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:detail:0.6>\n"
    "Negative prompt: (worst quality, low quality:1.4), watermark\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3620085674, Size: 1024x1536, "
    "Model hash: 3d1b3c42ec, Model: AWPainting_v1.2, Denoising strength: 0.45, "
    'ControlNet 0: "Module: tile_resample, Model: control_v11f1e_sd15_tile [3b860298], '
    'Weight: 0.6, Guidance Start: 0.0, Guidance End: 1.0", '
    'Lora hashes: "detail: 7c6f2f1e5a0b", Version: v1.6.0'
)


def image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: compressible like a picture, every byte value used."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x[..., None] * 3 + y[..., None] * 2 + np.arange(c) * 40) % 256
    return ((base + rng.integers(0, 8, (h, w, c))) % 256).astype(np.uint8)


def chunk_types(png: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        data = png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        out.append(kind)
        pos += 12 + length
    return out


@pytest.mark.parametrize("channels,mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("filter_up", [True, False])
def test_pillow_decodes_the_same_pixels(channels: int, mode: str, filter_up: bool) -> None:
    pixels = image(37, 53, channels)  # odd sizes: no row-length coincidences
    flat = pixels if channels > 1 else pixels[..., 0]
    png = pngio.encode_png(pixels, 53, 37, channels, filter_up=filter_up)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == mode and decoded.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(decoded), flat)
    assert chunk_types(png) == [b"IHDR", b"IDAT", b"IEND"]


def test_buffers_of_every_kind_and_rows_top_to_bottom() -> None:
    pixels = image(16, 24, 3)
    pixels[0] = (255, 0, 0)  # top row red
    want = pngio.encode_png(pixels, 24, 16, 3)
    assert pngio.encode_png(pixels.tobytes(), 24, 16, 3) == want
    assert pngio.encode_png(bytearray(pixels.tobytes()), 24, 16, 3) == want
    assert pngio.encode_png(memoryview(pixels), 24, 16, 3) == want
    flipped = pixels[::-1]  # a non-contiguous view is written in its logical order
    top = np.asarray(Image.open(io.BytesIO(pngio.encode_png(flipped, 24, 16, 3))))
    np.testing.assert_array_equal(top, flipped)
    assert tuple(np.asarray(Image.open(io.BytesIO(want)))[0, 0]) == (255, 0, 0)


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(pngio.PngError, match="width\\*height\\*channels is 48"):
        pngio.encode_png(bytes(47), 4, 4, 3)
    with pytest.raises(pngio.PngError, match="8-bit"):
        pngio.encode_png(np.zeros((4, 4, 3), np.float32), 4, 4, 3)
    with pytest.raises(pngio.PngError, match="channels must be"):
        pngio.encode_png(bytes(80), 4, 4, 5)
    with pytest.raises(pngio.PngError, match="1-79"):
        pngio.encode_png(bytes(48), 4, 4, 3, text={"k" * 80: "v"})
    with pytest.raises(pngio.PngError, match="single inner spaces"):
        pngio.encode_png(bytes(48), 4, 4, 3, text={" lead": "v"})
    with pytest.raises(pngio.PngError, match="signature"):
        pngio.read_text(b"GIF89a" + bytes(20))
    png = pngio.encode_png(bytes(48), 4, 4, 3, text={"a": "b"})
    broken = bytearray(png)
    broken[png.index(b"tEXt") + 5] ^= 1  # inside the text: its CRC no longer matches
    with pytest.raises(pngio.PngError, match="bad CRC"):
        pngio.read_text(bytes(broken))
    with pytest.raises(pngio.PngError, match="truncated|IEND"):
        pngio.read_text(png[:-6])


def test_text_latin1_as_text_and_the_rest_as_itxt_before_idat() -> None:
    text = {"parameters": "café, Steps: 20", "Comment": "日本語 ☕", "genart": '{"a":1}'}
    png = pngio.encode_png(image(8, 8, 4), 8, 8, 4, text=text)
    assert chunk_types(png) == [b"IHDR", b"tEXt", b"iTXt", b"tEXt", b"IDAT", b"IEND"]
    assert pngio.read_text(png) == text
    assert Image.open(io.BytesIO(png)).text == text  # Pillow reads both kinds


def test_add_text_inserts_before_idat_and_replaces_a_key(tmp_path: Path) -> None:
    pixels = image(20, 30, 3)
    info = PngImagePlugin.PngInfo()  # a PNG from another writer, with a text already
    info.add_text("parameters", "old")
    info.add_itxt("Keep", "kept ✓", zip=True)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", pnginfo=info)
    out = pngio.add_text(buf.getvalue(), {"parameters": "new ☕", "genart": "{}"})
    types = chunk_types(out)  # every CRC checked
    assert types.count(b"IHDR") == 1 and types[-1] == b"IEND"
    first_idat = types.index(b"IDAT")
    assert types[first_idat - 2 : first_idat] == [b"iTXt", b"tEXt"]
    assert pngio.read_text(out) == {"Keep": "kept ✓", "parameters": "new ☕", "genart": "{}"}
    decoded = Image.open(io.BytesIO(out))
    np.testing.assert_array_equal(np.asarray(decoded), pixels)
    assert decoded.text["parameters"] == "new ☕"
    path = pngio.write_png_atomic(tmp_path / "a" / "b" / "x.png", out)
    assert pngio.read_text(path) == pngio.read_text(str(path)) == pngio.read_text(out)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temp left


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    pngio.write_png_atomic(target, b"first")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by a farm's users
    pngio.write_png_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(TypeError):
        pngio.write_png_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_parameters_layout_is_a1111s() -> None:
    text = pngio.format_parameters(RECIPE, size=(768, 512))
    lines = text.split("\n")
    # Prompt lines as written, then the negative prompt, then one line of pairs.
    assert lines[0] == 'a red teapot, "glazed", on a table:'
    assert lines[1] == "  studio light, café ☕"
    assert lines[2] == "Negative prompt: blurry, low quality"
    assert lines[3] == "watermark: none"
    assert len(lines) == 5
    pairs = lines[4]
    assert pairs.startswith(
        "Steps: 25, Sampler: euler_a, CFG scale: 7.5, Seed: 4294967295, Size: 768x512, "
        "Model hash: e1441589a6, Model: dreamshaper_8, "
        'ControlNet 0: "Module: none, Model: lllyasviel/control_v11f1p_sd15_depth, '
        'Weight: 0.75", View transform: AgX, genart engine: sd, genart task: control, '
        'genart recipe: "{'
    ), pairs
    assert "Denoising strength" not in pairs  # control has no init image
    img2img = {**RECIPE, "task": "img2img"}
    assert "Denoising strength: 0.6," in pngio.format_parameters(img2img)  # 7 digits
    bare = pngio.format_parameters({"params": {"prompt": "x", "seed": 1}})
    assert bare.split("\n")[0] == "x" and "Negative prompt" not in bare


def test_model_sha256_and_blender_values() -> None:
    """The add-on's recipes name the hash `model_sha256`; vectors and numpy values from
    Blender properties are written as lists and numbers."""
    recipe = {"params": {"seed": 3, "size": (2, 3)}, "model_sha256": "abcdef0123456789"}
    text = pngio.format_parameters(recipe)
    assert "Model hash: abcdef0123," in text
    odd = {"options": {"scale": np.array([1.5, 2.0], np.float32), "n": np.int64(4)}}
    assert pngio.parse_parameters(pngio.format_parameters(odd)) == {
        "options": {"scale": [1.5, 2.0], "n": 4}
    }


def test_our_recipe_round_trips_exactly() -> None:
    text = pngio.format_parameters(RECIPE)
    assert pngio.parse_parameters(text) == RECIPE
    # Prompts that would trip the layout: a line starting like the negative one, quotes,
    # backslashes, a trailing newline, empty prompts, non-ASCII.
    tricky = {
        "params": {
            "prompt": 'Negative prompt: a trick\nSteps: 1, Seed: 2, Size: 3x4\n"q" \\ end\n',
            "negative_prompt": "",
            "seed": 0,
        },
        "note": "ünïcödé 🎨",
    }
    assert pngio.parse_parameters(pngio.format_parameters(tricky)) == tricky
    for empty in ({}, {"params": {"prompt": "", "negative_prompt": ""}}):
        assert pngio.parse_parameters(pngio.format_parameters(empty)) == empty


def test_a1111_sees_our_prompts_and_fields() -> None:
    """What A1111's reader gets from our text: prompt and negative prompt (lines stripped,
    as it does) and the pairs, the recipe JSON among them intact."""
    prompt, negative, pairs = pngio.parse_infotext(pngio.format_parameters(RECIPE))
    assert prompt == 'a red teapot, "glazed", on a table:\nstudio light, café ☕'
    assert negative == "blurry, low quality\nwatermark: none"
    assert pairs["Steps"] == "25" and pairs["Size"] == "768x512" and pairs["Seed"] == "4294967295"
    assert pairs["ControlNet 0"].startswith("Module: none, Model: lllyasviel/")
    assert json.loads(pairs["genart recipe"]) == RECIPE
    assert list(pairs)[-1] == "genart recipe"


def test_a_plain_a1111_text_reads_back() -> None:
    recipe = pngio.parse_parameters(A1111_TEXT)
    assert recipe["params"] == {
        "prompt": "masterpiece, best quality, 1girl, (blue eyes:1.2), <lora:detail:0.6>",
        "negative_prompt": "(worst quality, low quality:1.4), watermark",
        "steps": 30,
        "guidance": 7.0,
        "seed": 3620085674,
        "width": 1024,
        "height": 1536,
        "model": "AWPainting_v1.2",
        "strength": 0.45,
    }
    assert recipe["model_hash"] == "3d1b3c42ec" and recipe["sampler"] == "DPM++ 2M Karras"
    assert recipe["fields"]["ControlNet 0"].startswith("Module: tile_resample, Model: control")
    assert recipe["fields"]["Lora hashes"] == "detail: 7c6f2f1e5a0b"
    assert recipe["fields"]["Version"] == "v1.6.0"
    # A text with no pairs line at all is all prompt.
    assert pngio.parse_parameters("just a prompt, nothing else")["params"] == {
        "prompt": "just a prompt, nothing else",
        "negative_prompt": "",
    }


def test_recipe_chunks_in_a_png_read_back_with_pillow() -> None:
    pixels = image(24, 32, 3)
    png = pngio.encode_png(pixels, 32, 24, 3, text=pngio.recipe_text(RECIPE, (32, 24)))
    seen = Image.open(io.BytesIO(png)).text
    assert seen["parameters"].split("\n")[-1].startswith("Steps: 25, ")
    assert "Size: 32x24" in seen["parameters"]
    assert json.loads(seen["genart"]) == RECIPE
    assert pngio.recipe_from_text(pngio.read_text(png)) == RECIPE
    only_a1111 = {"parameters": A1111_TEXT}
    assert pngio.recipe_from_text(only_a1111)["params"]["seed"] == 3620085674
    assert pngio.recipe_from_text({"Comment": "x"}) is None
    with pytest.raises(pngio.PngError, match="JSON values"):
        pngio.recipe_json({"bad": object()})


def test_encode_time_1024_rgba(capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted tightly (a loaded box): 1024² RGBA with Up and zlib level 1,
    against unfiltered rows and Pillow's own writer."""
    pixels = image(1024, 1024, 4)

    def best(fn, n: int = 3) -> tuple[float, int]:  # type: ignore[no-untyped-def]
        times, size = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            size = len(fn())
            times.append(time.perf_counter() - t0)
        return min(times), size

    ours = best(lambda: pngio.encode_png(pixels, 1024, 1024, 4))
    plain = best(lambda: pngio.encode_png(pixels, 1024, 1024, 4, filter_up=False))

    def pil() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    pillow = best(pil)
    with capsys.disabled():
        for name, (t, size) in (("up", ours), ("none", plain), ("pillow l1", pillow)):
            print(f"\n  encode 1024² RGBA {name}: {t * 1000:.0f} ms, {size / 1e6:.2f} MB", end="")
    assert ours[0] < 2.0, ours  # seconds; ~0.1 s here
    assert ours[1] < plain[1]  # Up pays for itself on a picture
