"""The embedded micro model's quality bar (issue 8), checked on the shipped weights:
colour words control the colour (seen and held-out colour × family pairs, 8 seeds each,
pass rates printed), family words control the structure, tileable output is seamless,
img2img on a Blender render keeps its layout while taking the prompt's colour, and the
sidecar uses the model when a request names none. The thresholds sit below the measured
rates (docs/micro-models.md) so that a broken model, loader or scheduler fails them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SidecarProcess
from PIL import Image

from genart_core import micro
from genart_core.engines.sd.engine import model_ref
from genart_core.micro import quality
from genart_core.protocol import Attachment
from genart_core.protocol.errors import InvalidParams
from genart_core.temporal.flow import edge_correlation

ROOT = Path(__file__).resolve().parents[1]
# A Cycles render (frame 1 of bench/temporal_scenes.py's turntable at 256×192).
RENDER = Path(__file__).resolve().parent / "data" / "turntable_render.png"


@pytest.fixture(scope="module")
def pipe() -> Any:
    from genart_core.engines.sd.loading import load_pipeline

    folder = micro.embedded_model()
    assert folder is not None, "the checkout has no embedded model (genart_core/micro/weights)"
    p = load_pipeline(str(folder), torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def report(pipe: Any) -> dict[str, Any]:
    torch.set_num_threads(2)
    r = quality.evaluate_pipeline(pipe, seeds=8, size=64)
    print(
        f"\ncolour pass rate over 8 seeds: seen {r['colour_pass_seen']:.0%}, held-out "
        f"{r['colour_pass_held_out']:.0%}; by prompt: "
        + ", ".join(f"{k} {v['colour_pass']:.0%}" for k, v in r["prompts"].items())
    )
    return r


def test_the_pins_hold_and_the_model_is_small() -> None:
    pins = micro.pins()
    assert pins and micro.embedded_model() == micro.EMBEDDED_DIR
    size = sum((micro.EMBEDDED_DIR / f).stat().st_size for f in pins)
    assert size <= 30 * 2**20
    on_disk = {
        f.relative_to(micro.EMBEDDED_DIR).as_posix()
        for f in micro.EMBEDDED_DIR.rglob("*")
        if f.is_file()
    }
    assert on_disk == set(pins)  # nothing unpinned rides along


def test_a_changed_weight_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "weights" / micro.EMBEDDED_NAME
    shutil.copytree(micro.EMBEDDED_DIR, copy)
    shutil.copy(micro.PINS_FILE, copy.parent / "pins.json")
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    monkeypatch.setattr(micro, "EMBEDDED_DIR", copy)
    monkeypatch.setattr(micro, "PINS_FILE", copy.parent / "pins.json")
    micro.embedded_model.cache_clear()
    try:
        with pytest.raises(InvalidParams) as exc:
            model_ref({"model": ""})
        assert exc.value.field == "params.model" and "sha256" in exc.value.message
        (copy.parent / "pins.json").unlink()  # an installation without an embedded model
        micro.embedded_model.cache_clear()
        with pytest.raises(InvalidParams, match="choose a model"):
            model_ref({"model": ""})
    finally:
        micro.embedded_model.cache_clear()


def test_colour_words_control_the_colour(report: dict[str, Any]) -> None:
    assert report["judge_accuracy_on_procedural"] >= 0.97
    # measured with the shipped weights: 79% seen, 78% held out (10-way judge; chance 10%)
    assert report["colour_pass_seen"] >= 0.7, report["prompts"]
    assert report["colour_pass_held_out"] >= 0.7, report["prompts"]


def test_red_is_red_and_blue_is_blue_by_dominant_channel(pipe: Any) -> None:
    gens = [torch.Generator().manual_seed(s) for s in range(8)]
    for word, channel in (("red", 0), ("green", 1), ("blue", 2)):
        images = pipe(
            [f"{word} tiles"] * 8, num_inference_steps=20, guidance_scale=5.0,
            height=64, width=64, generator=gens, output_type="np",
        ).images  # fmt: skip
        dominant = images.reshape(8, -1, 3).mean(axis=1).argmax(axis=1)
        assert (dominant == channel).mean() >= 0.75, (word, dominant)


def test_family_words_control_the_structure(report: dict[str, Any]) -> None:
    p = report["peakiness_by_family"]
    periodic = np.mean([p["stripes"], p["checker"], p["bricks"]])
    irregular = np.mean([p["clouds"], p["marble"], p["stone"]])
    assert periodic > 1.5 * irregular, p
    assert p["stripes"] > max(p["clouds"], p["marble"], p["stone"]), p


def test_prompt_words_outside_the_vocabulary_change_nothing(pipe: Any) -> None:
    def gen(prompt: str) -> np.ndarray:
        return pipe(
            prompt, num_inference_steps=10, height=64, width=64,
            generator=torch.Generator().manual_seed(3), output_type="np",
        ).images[0]  # fmt: skip

    plain = gen("red brick wall")
    assert np.abs(gen("Crimson brick wall!") - plain).max() == 0.0  # a synonym, punctuation
    noisy = gen("red brick wall, photorealistic, 8k, trending")
    # unknown words may nudge the picture (the model learnt to mostly ignore them) but
    # never its colour
    judge = quality.ColourJudge()
    u8 = (noisy * 255).astype(np.uint8)
    assert judge(u8, "bricks") == "red"


def _seam(img: np.ndarray) -> float:
    """Mean jump across the wrap-around edges over the mean jump between neighbours."""
    f = img.astype(np.float64)
    inner = np.abs(np.diff(f, axis=1)).mean() + np.abs(np.diff(f, axis=0)).mean()
    wrap = np.abs(f[:, 0] - f[:, -1]).mean() + np.abs(f[0] - f[-1]).mean()
    return float(wrap / inner)


@pytest.mark.process
def test_sidecar_uses_the_embedded_model_when_none_is_named(sidecar: SidecarProcess) -> None:
    with sidecar.connect() as c:
        sd = next(e for e in c.welcome["engines"] if e["name"] == "sd")
        default = sd["default_model"]
        assert default["name"] == micro.EMBEDDED_NAME
        assert default["sha256"] == micro.folder_digest(micro.pins())
        assert any("ControlNet" in n for n in default["notes"])
        job = c.submit(
            "sd",
            {"prompt": "blue checker, hyperreal", "width": 64, "height": 64, "steps": 8,
             "tileable": True, "seed": 1},
            task="txt2img",
        )  # fmt: skip
        events: list[Any] = []
        c.wait(job, events.append, timeout=300)
        res = c.result(job)
        img = res.attachments["image"]
        assert img.shape is not None
        pixels = np.frombuffer(img.data, np.uint8).reshape(img.shape)[..., :3]
        warnings = [w for e in events if e.type == "result" for w in e.data["warnings"]]
    assert any("hyperreal" in w for w in warnings), warnings
    assert quality.ColourJudge()(pixels, "checker") == "blue"
    assert _seam(pixels) < 1.5  # seamless: the wrap is no worse than any neighbour step


def test_img2img_on_a_render_keeps_its_layout_and_takes_the_colour(pipe: Any) -> None:
    """Issue 8's bar, strength 0.6. Measured (seeds 0 / 1): edge correlation with the
    render at 1/4 scale 0.53 / 0.51, 0.49 / 0.46, 0.44 / 0.40, 0.35 / 0.29 at strength 0.4
    / 0.5 / 0.6 / 0.7 (a flipped render: 0.14-0.22), while blue − red goes from −14 to
    +27-32 at 0.6. What survives is the light and dark masses (shadows, silhouettes
    against the ground), not the shading inside objects. The model before its training
    on renders kept nothing at 0.6 (0.33 at 0.4, ~0 at 0.6)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    render = Image.open(RENDER).convert("RGB")
    src = np.asarray(render)

    def quarter(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        return np.asarray(Image.fromarray(a).resize((w // 4, h // 4), Image.Resampling.BOX))

    out = i2i(
        "blue marble", image=render, strength=0.6, num_inference_steps=20,
        guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]  # fmt: skip
    out8 = (out * 255).astype(np.uint8)
    assert out8.shape == src.shape
    kept = edge_correlation(quarter(out8), quarter(src))
    other = edge_correlation(quarter(out8), quarter(np.ascontiguousarray(src[::-1, ::-1])))
    assert kept > 0.3 and kept > other + 0.15, (kept, other)
    before, after = src.reshape(-1, 3).mean(0), out8.reshape(-1, 3).mean(0)
    assert after[2] - after[0] > before[2] - before[0] + 20, (before, after)  # bluer


def test_recorded_quality_matches_the_pins() -> None:
    trained = json.loads(micro.PINS_FILE.read_text())["trained"]
    base = trained["base"]  # the text-to-image training, then the ControlNet's on renders
    assert base["config"]["seed"] == 0 and base["step"] > base["config"]["ae_steps"]
    assert trained["config"]["seed"] == 0 and trained["config"]["base"] == ""
    assert trained["control"]["edge_corr_control"] > trained["control"]["edge_corr_no_control"]
    layout = trained["img2img_layout"]
    assert layout["strength"] == 0.6 and layout["edge_corr"] > layout["edge_corr_flipped"]


@pytest.fixture(scope="module")
def fresh_renders(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """12 scenes the depth ControlNet never saw (another seed of dev/render_depth_data.py),
    rendered now by Blender through the add-on's capture."""
    import subprocess
    import sys

    from genart_core.micro.train_control import ControlFolder

    out = tmp_path_factory.mktemp("renders")
    script = ROOT / "dev" / "render_depth_data.py"
    args = [sys.executable, str(script), "--out", str(out), "--count", "13", "--seed", "101"]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    return ControlFolder(out, 64, 0, hold_out=12).held_out()


@pytest.mark.blender
def test_the_depth_controlnet_follows_fresh_depth_maps(pipe: Any, fresh_renders: Any) -> None:
    """The shipped ControlNet's generations have edges where the depth map has them
    (2×2-block edge correlation); without it the same prompts and seeds do not."""
    from diffusers import ControlNetModel

    from genart_core.micro.train_control import evaluate_control

    folder = micro.embedded_controlnet()
    assert folder is not None, "the embedded model ships no depth ControlNet"
    net = ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
    m = evaluate_control(pipe, net, fresh_renders)
    print(f"\ndepth control on 12 fresh Blender renders: {m}")
    assert m["edge_corr_control"] > 0.12, m
    assert m["edge_corr_control"] > m["edge_corr_no_control"] + 0.08, m


@pytest.mark.blender
def test_img2img_at_strength_0_6_keeps_a_fresh_renders_layout(
    pipe: Any, fresh_renders: Any
) -> None:
    """Issue 8's bar: at strength 0.6, asked for another colour, the result keeps the
    render's edges (against a flipped render's as the floor)."""
    from genart_core.micro.train_control import evaluate_img2img

    m = evaluate_img2img(pipe, fresh_renders, strength=0.6)
    print(f"\nimg2img at 0.6 on 12 fresh Blender renders: {m}")
    assert m["edge_corr"] > m["edge_corr_flipped"] + 0.06, m


@pytest.mark.process
def test_depth_control_needs_no_model_on_the_defaults(
    sidecar: SidecarProcess, fresh_renders: Any
) -> None:
    """A `control` request with only a depth input and no model runs on the embedded
    model's own ControlNet (without one it would be refused: no depth_controlnet)."""
    near, far = 2.0, 10.0
    d = fresh_renders[0].control[..., 0].astype(np.float64) / 255.0
    with np.errstate(divide="ignore"):
        z = np.where(d > 0, 1.0 / (d * (1 / near - 1 / far) + 1 / far), np.inf).astype(np.float32)
    with sidecar.connect() as c:
        sd = next(e for e in c.welcome["engines"] if e["name"] == "sd")
        assert sd["default_model"]["controls"] == ["depth"]
        job = c.submit(
            "sd",
            {"prompt": fresh_renders[0].caption, "width": 64, "height": 64, "steps": 8,
             "near": near, "far": far},
            task="control",
            inputs={"depth": Attachment.array("depth", z, "float32", z.shape, "linear")},
        )  # fmt: skip
        events: list[Any] = []
        c.wait(job, events.append, timeout=300)
        img = c.result(job).attachments["image"]
    warnings = [w for e in events if e.type == "result" for w in e.data["warnings"]]
    assert not any("ControlNet" in w for w in warnings), warnings
    assert img.shape == (64, 64, 4)
