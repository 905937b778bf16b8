"""Generated images into the .blend, in the real `bpy` wheel with the installed add-on's
`images` module: packed while the .blend is unsaved and written under //genart/ on its
first save (relative paths, unpacked), written directly once it is saved; sRGB or
Non-Color; the recipe in the PNG text and the custom properties, and back after a reload;
float images exact. One Blender process runs SCRIPT; pytest checks what it reports, and
the files it left with Pillow."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_blender_addon import build_addon, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

RECIPE = {
    "engine": "sd",
    "task": "control",
    "params": {
        "model": "/models/dreamshaper_8.safetensors",
        "prompt": 'a glazed teapot, "blue", on oak:\nsoft light, café ☕',
        "negative_prompt": "blurry, text",
        "width": 48,
        "height": 32,
        "steps": 20,
        "guidance": 7.5,
        "strength": 0.6,
        "seed": 4294967295,  # beyond a 32-bit IDProperty int
        "loras": ["a.safetensors", "b.safetensors"],
        "lora_weights": [0.5, 1.25],
        "depth_controlnet": "lllyasviel/control_v11f1p_sd15_depth",
        "depth_weight": 0.8,
        "camera_rotation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    },
    "model_hash": "0123456789abcdef" * 4,
    "view_transform": "Standard",
    "frame": 7,
}

# Runs in the Blender process after the add-on is installed (`ZIP`, `OUT` and `RECIPE`
# prepended). Prints GENART-IMAGES-OK and writes OUT/results.json.
SCRIPT = r'''
import importlib
import json
import os
import time
from pathlib import Path

import bpy
import numpy as np

assert bpy.ops.extensions.package_install_files(
    repo="user_default", filepath=ZIP, enable_on_install=True
) == {"FINISHED"}
images = importlib.import_module("bl_ext.user_default.genart.images")
images.register()  # idempotent: also right once the add-on's register() calls it
images.register()
assert sum(h.__name__ == "_on_save_pre" for h in bpy.app.handlers.save_pre) == 1
out = Path(OUT)
res = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
images.register()  # factory settings keep persistent handlers; make sure either way


def picture(h, w, c, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    a[0, :, :3] = (255, 0, 0)  # top row red
    a[-1, :, :3] = (0, 0, 255)  # bottom row blue
    if c == 4:
        a[..., 3] = 255  # straight alpha would change colour where it is < 255
    return a


def pixels_of(image):
    """Rows top to bottom, 0-255 for byte images, raw floats for float ones."""
    w, h = image.size
    px = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(px)
    px = px.reshape(h, w, 4)[::-1]
    return px if image.is_float else np.rint(px * 255).astype(np.uint8)


def state(image):
    return {
        "name": image.name,
        "filepath": image.filepath,
        "abspath": bpy.path.abspath(image.filepath) if image.filepath else "",
        "packed": image.packed_file is not None,
        "pending": image.get(images.PENDING),
        "colorspace": image.colorspace_settings.name,
        "size": list(image.size),
        "is_float": image.is_float,
        "fake_user": image.use_fake_user,
    }


color = picture(32, 48, 3, 1)
control = picture(32, 48, 4, 2)
depth = np.linspace(1.0, 9.0, 32 * 48, dtype=np.float32).reshape(32, 48)
depth[0, :5] = np.inf  # background
depth[5, 5] = 1.2345678e-7  # tiny values survive too
depth[6, 6] = 123456.789

# -- unsaved: packed and pending --------------------------------------------------------
tex = images.store_image("Teapot texture", color, RECIPE, subfolder="textures")
ctl = images.store_image(
    "Teapot depth control", control, RECIPE, non_color=True, subfolder="control"
)
flt = images.store_float_image("Teapot depth", depth, "data", recipe=RECIPE)
res["unsaved"] = [state(i) for i in (tex, ctl, flt)]
assert np.array_equal(pixels_of(tex)[..., :3], color), "colour pixels"
assert np.array_equal(pixels_of(ctl), control), "control pixels"
assert np.array_equal(pixels_of(flt)[..., 0], depth), "float pixels"
assert np.array_equal(pixels_of(flt)[..., 1], depth), "float pixels are grey"
assert images.recipe_of(tex) == RECIPE and images.recipe_of(flt) == RECIPE
props = tex[images.PROP].to_dict()
res["props"] = {k: v for k, v in props.items() if k != "recipe"}
# Without the custom property the packed PNG's text still has it.
del ctl[images.PROP]
res["recipe_from_packed_png"] = images.recipe_of(ctl) == RECIPE
images.set_recipe(ctl, RECIPE)

# -- a save that fails after save_pre (the .blend's path is a folder): packed again ----
saved = out / "project"
(saved / "scene.blend").mkdir(parents=True)
try:
    bpy.ops.wm.save_as_mainfile(filepath=str(saved / "scene.blend"))
except RuntimeError as exc:
    res["failed_save_error"] = str(exc)[:200]
res["after_failed_save"] = [state(i) for i in (tex, ctl, flt)]
res["failed_files"] = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
(saved / "scene.blend").rmdir()
assert bpy.data.filepath == ""

# -- Save Copy of the unsaved file: files beside the copy, the session stays packed -----
copy = out / "copy"
copy.mkdir()
bpy.ops.wm.save_as_mainfile(filepath=str(copy / "copy.blend"), copy=True)
res["after_copy"] = [state(i) for i in (tex, ctl, flt)]
res["copy_files"] = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
assert bpy.data.filepath == ""
assert np.array_equal(pixels_of(tex)[..., :3], color), "colour pixels after the copy"

# -- first save: written under //genart/ (the failed save's files reused), relative ---
bpy.ops.wm.save_as_mainfile(filepath=str(saved / "scene.blend"))
res["after_save"] = [state(i) for i in (tex, ctl, flt)]
assert np.array_equal(pixels_of(tex)[..., :3], color), "colour pixels after the save"
assert np.array_equal(pixels_of(flt)[..., 0], depth), "float pixels after the save"

# -- saved: written directly; a second image of the same name gets its own file ---------
again = images.store_image("Teapot texture", color[::-1], RECIPE, subfolder="textures")
res["direct"] = state(again)
again_name = again.name
assert np.array_equal(pixels_of(again)[..., :3], color[::-1]), "direct pixels"
bpy.ops.wm.save_mainfile()

# -- a bigger image: what storing costs (printed, not asserted) -------------------------
big = picture(1024, 1024, 4, 3)
timings = {}
t0 = time.perf_counter()
images.encode_for_store(big, RECIPE)
timings["of which PNG encode (any thread)"] = time.perf_counter() - t0
t0 = time.perf_counter()
b1 = images.store_image("big saved", big, RECIPE)
timings["store saved 1024 RGBA"] = time.perf_counter() - t0
t0 = time.perf_counter()
b1.pixels[0]
timings["first pixel access (decode)"] = time.perf_counter() - t0
t0 = time.perf_counter()
b2 = bpy.data.images.new("big foreach_set", 1024, 1024, alpha=True)
b2.pixels.foreach_set((big[::-1].astype(np.float32) / 255).ravel())
timings["foreach_set only (no file, no text)"] = time.perf_counter() - t0
t0 = time.perf_counter()
b2.pack()
timings["then Blender's own pack (PNG encode)"] = time.perf_counter() - t0
res["timings"] = timings
bpy.data.images.remove(b1)
bpy.data.images.remove(b2)

# -- reload: everything comes back from the files ---------------------------------------
bpy.ops.wm.open_mainfile(filepath=str(saved / "scene.blend"))
names = ("Teapot texture", "Teapot depth control", "Teapot depth", again_name)
loaded = [bpy.data.images[n] for n in names]
res["reloaded"] = [state(i) for i in loaded]
res["reloaded_recipes"] = [images.recipe_of(i) == RECIPE for i in loaded]
assert np.array_equal(pixels_of(loaded[0])[..., :3], color), "colour after reload"
assert np.array_equal(pixels_of(loaded[1]), control), "control after reload"
assert np.array_equal(pixels_of(loaded[2])[..., 0], depth), "float after reload"
del loaded[0][images.PROP]
del loaded[2][images.PROP]
res["recipe_from_files"] = [images.recipe_of(i) == RECIPE for i in (loaded[0], loaded[2])]

images.unregister()
assert not any(h.__name__.startswith("_on_save") for h in bpy.app.handlers.save_pre)
(out / "results.json").write_text(json.dumps(res, indent=1))
print("GENART-IMAGES-OK")
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("images")
    zip_path = build_addon.build(tmp / "zip")
    out = tmp / "out"
    out.mkdir()
    body = f"OUT = {str(out)!r}\nRECIPE = {RECIPE!r}\n" + SCRIPT
    proc = run_in_blender(tmp, zip_path, body)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0 and "GENART-IMAGES-OK" in proc.stdout, log
    return json.loads((out / "results.json").read_text()), out


def test_unsaved_images_are_packed_and_pending(run: tuple[dict[str, Any], Path]) -> None:
    res, _ = run
    tex, ctl, flt = res["unsaved"]
    assert all(s["packed"] and s["fake_user"] for s in (tex, ctl, flt))
    assert tex["pending"] == "textures/Teapot_texture.png"
    assert ctl["pending"] == "control/Teapot_depth_control.png"
    assert flt["pending"] == "data/Teapot_depth.exr"
    assert (tex["colorspace"], ctl["colorspace"], flt["colorspace"]) == (
        "sRGB",
        "Non-Color",
        "Non-Color",
    )
    assert tex["size"] == [48, 32] and not tex["is_float"] and flt["is_float"]
    assert res["recipe_from_packed_png"]


def test_recipe_as_plain_custom_properties(run: tuple[dict[str, Any], Path]) -> None:
    props = run[0]["props"]
    assert props["prompt"] == RECIPE["params"]["prompt"]
    assert props["engine"] == "sd" and props["task"] == "control"
    assert props["seed"] == "4294967295"  # too big for an int IDProperty: as text
    assert props["steps"] == 20 and props["guidance"] == pytest.approx(7.5)
    assert props["depth_weight"] == pytest.approx(0.8)
    assert props["loras"] == ["a.safetensors", "b.safetensors"]
    assert props["lora_weights"] == pytest.approx([0.5, 1.25])
    assert props["model_hash"] == RECIPE["model_hash"]
    assert props["view_transform"] == "Standard"


def test_a_failed_save_keeps_them_packed(run: tuple[dict[str, Any], Path]) -> None:
    res, _ = run
    assert "is a directory" in res["failed_save_error"]
    # save_pre had written them and switched them to files before the save failed:
    assert res["failed_files"] == [
        "genart/control/Teapot_depth_control.png",
        "genart/data/Teapot_depth.exr",
        "genart/textures/Teapot_texture.png",
    ]
    for before, after in zip(res["unsaved"], res["after_failed_save"], strict=True):
        assert after["packed"] and after["pending"] == before["pending"], after
        assert after["filepath"] == ""


def test_save_copy_writes_files_beside_the_copy_and_stays_packed(
    run: tuple[dict[str, Any], Path],
) -> None:
    res, out = run
    assert res["copy_files"] == [
        "copy.blend",
        "genart/control/Teapot_depth_control.png",
        "genart/data/Teapot_depth.exr",
        "genart/textures/Teapot_texture.png",
    ]
    for before, after in zip(res["unsaved"], res["after_copy"], strict=True):
        assert after["packed"] and after["pending"] == before["pending"], after
    png = Image.open(out / "copy" / "genart" / "textures" / "Teapot_texture.png")
    assert "Seed: 4294967295" in png.text["parameters"]


def test_first_save_writes_under_genart_with_relative_paths(
    run: tuple[dict[str, Any], Path],
) -> None:
    res, out = run
    project = out / "project"
    tex, ctl, flt = res["after_save"]
    assert tex["filepath"] == "//genart/textures/Teapot_texture.png"
    assert ctl["filepath"] == "//genart/control/Teapot_depth_control.png"
    assert flt["filepath"] == "//genart/data/Teapot_depth.exr"
    for s in (tex, ctl, flt):
        assert not s["packed"] and s["pending"] is None, s
        assert Path(s["abspath"]).resolve() == (project / s["filepath"][2:]).resolve()
    assert (tex["colorspace"], ctl["colorspace"], flt["colorspace"]) == (
        "sRGB",
        "Non-Color",
        "Non-Color",
    )
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert files == [
        "genart/big_saved.png",  # the timing run's (its image was removed, its file stays)
        "genart/control/Teapot_depth_control.png",
        "genart/data/Teapot_depth.exr",
        "genart/textures/Teapot_texture-2.png",
        "genart/textures/Teapot_texture.png",
        "scene.blend",
        "scene.blend1",  # Blender's backup from the second save
    ], files
    mode = (project / "genart" / "textures" / "Teapot_texture.png").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)
    # The saved .blend holds no packed copy of them: it is far smaller than the images.
    assert (project / "scene.blend").stat().st_size < 2_000_000


def test_the_png_carries_the_recipe_and_pillow_reads_it(
    run: tuple[dict[str, Any], Path],
) -> None:
    _, out = run
    png = Image.open(out / "project" / "genart" / "textures" / "Teapot_texture.png")
    assert png.mode == "RGB" and png.size == (48, 32)
    top = np.asarray(png)
    assert (top[0] == (255, 0, 0)).all() and (top[-1] == (0, 0, 255)).all()
    params = png.text["parameters"]
    assert params.startswith('a glazed teapot, "blue", on oak:\nsoft light, café ☕\n')
    assert "\nNegative prompt: blurry, text\nSteps: 20, Sampler" not in params  # no sampler
    assert "\nNegative prompt: blurry, text\nSteps: 20, CFG scale: 7.5, Seed: 4294967295, " in (
        params
    )
    assert "Size: 48x32, Model hash: 0123456789, Model: dreamshaper_8, " in params
    assert "View transform: Standard" in params
    assert json.loads(png.text["genart"]) == RECIPE
    ctl = Image.open(out / "project" / "genart" / "control" / "Teapot_depth_control.png")
    assert ctl.mode == "RGBA"


def test_saved_file_takes_new_images_directly(run: tuple[dict[str, Any], Path]) -> None:
    direct = run[0]["direct"]
    assert direct["filepath"] == "//genart/textures/Teapot_texture-2.png"
    assert not direct["packed"] and direct["pending"] is None
    assert direct["name"] == "Teapot texture.001"  # Blender's own unique name


def test_reload_reads_files_and_recipes_back(run: tuple[dict[str, Any], Path]) -> None:
    res, _ = run
    for before, after in zip([*res["after_save"], res["direct"]], res["reloaded"], strict=True):
        for key in ("filepath", "packed", "colorspace", "size", "is_float", "fake_user"):
            assert after[key] == before[key], (key, before, after)
    assert res["reloaded_recipes"] == [True] * 4
    assert res["recipe_from_files"] == [True, True]  # PNG text; EXR header


def test_timings(run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]) -> None:
    timings = run[0]["timings"]
    with capsys.disabled():
        for name, seconds in timings.items():
            print(f"\n  {name}: {seconds * 1000:.0f} ms", end="")
    assert all(t > 0 for t in timings.values())
