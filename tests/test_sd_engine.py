"""The Stable Diffusion engine on tiny real diffusers models (random weights, built from
configs, saved as diffusers folders): every mode through a real sidecar, sizes, control,
validation, determinism across processes, tileable exactness, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SidecarProcess
from sdtiny import (
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd,
    build_tiny_sdxl,
    build_tiny_taesd,
)

from genart_core.engines.base import Input, RunContext
from genart_core.engines.schema import validate_params
from genart_core.engines.sd.engine import StableDiffusionEngine
from genart_core.engines.sd.wrap import wrapped
from genart_core.protocol import Attachment, Client, Event
from genart_core.protocol.errors import InvalidParams, JobCancelled


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    sd = build_tiny_sd(root)
    cn = build_tiny_controlnet(sd, root / "controlnet")
    return {
        "sd": str(sd),
        "cn": str(cn),
        "sdxl": str(build_tiny_sdxl(root)),
        "taesd": str(build_tiny_taesd(root / "taesd")),
        "lora": str(build_tiny_lora(sd, root / "lora")),
    }


def arr(name: str, a: np.ndarray, color_space: str = "linear") -> Attachment:
    a = np.ascontiguousarray(a)
    return Attachment.array(name, a, str(a.dtype), a.shape, color_space)


def render(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 4) * 255).astype(np.uint8)


def depth_map(h: int, w: int) -> np.ndarray:
    d = np.full((h, w), np.inf, np.float32)
    d[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 4.0
    return d


def run(
    client: Client,
    task: str,
    params: dict,
    inputs: dict | None = None,
    events: list[Event] | None = None,
) -> np.ndarray:
    job = client.submit("sd", params, task=task, inputs=inputs)
    client.wait(job, events.append if events is not None else None, timeout=300)
    img = client.result(job).attachments["image"]
    assert img.shape is not None
    return np.frombuffer(img.data, np.uint8).reshape(img.shape).copy()


@pytest.mark.process
class TestThroughTheSidecar:
    def test_every_mode_gives_the_requested_size(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        base = {"model": models["sd"], "prompt": "a red brick wall", "steps": 4, "preview_every": 2}
        cn = {"depth_controlnet": models["cn"], "near": 1.0, "far": 10.0}
        rot = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
        normal = np.zeros((33, 77, 3), np.float32)
        normal[..., 2] = 1.0
        cases = [
            ("txt2img", {"width": 100, "height": 60}, {}),
            (
                "img2img",
                {"width": 37, "height": 91, "strength": 0.7},
                {"image": arr("image", render(91, 37), "srgb")},
            ),
            (
                "inpaint",
                {"width": 64, "height": 64},
                {
                    "image": arr("image", render(64, 64), "srgb"),
                    "mask": arr(
                        "mask", (np.arange(64 * 64).reshape(64, 64) % 3 == 0).astype(np.uint8) * 255
                    ),
                },
            ),
            (
                "control",
                {"width": 90, "height": 50, **cn},
                {"depth": arr("depth", depth_map(50, 90))},
            ),
            (
                "control",
                {
                    "width": 77,
                    "height": 33,
                    **cn,
                    "normal_controlnet": models["cn"],
                    "camera_rotation": rot,
                    "normal_weight": 0.5,
                },
                {
                    "depth": arr("depth", depth_map(33, 77)),
                    "normal": arr("normal", normal),
                    "image": arr("image", render(33, 77), "srgb"),
                },
            ),
        ]
        with sidecar.connect() as c:
            sd = next(e for e in c.welcome["engines"] if e["name"] == "sd")
            assert "inpaint" in sd["tasks"] and sd["capabilities"]["tileable"] is True
            for task, extra, inputs in cases:
                events: list[Event] = []
                img = run(c, task, {**base, **extra}, inputs, events)
                assert img.shape == (extra["height"], extra["width"], 4), task
                assert (img[..., 3] == 255).all()
                assert img[..., :3].std() > 0, f"{task}: a flat image"
                assert any(e.type == "preview" for e in events), task
                progress = [e.data for e in events if e.type == "progress"]
                assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
                assert progress[-1]["step"] == progress[-1]["steps"] > 0

    def test_sdxl_family_and_taesd_previews(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        with sidecar.connect() as c:
            base = {"model": models["sdxl"], "prompt": "blue sky", "steps": 2}
            img = run(c, "txt2img", {**base, "width": 70, "height": 30})
            assert img.shape == (30, 70, 4)
            img = run(
                c,
                "img2img",
                {**base, "width": 33, "height": 50, "strength": 1.0},
                {"image": arr("image", render(50, 33), "srgb")},
            )
            assert img.shape == (50, 33, 4)
            previews: dict[str, tuple] = {}
            for name, extra in (("latent", {}), ("taesd", {"preview_vae": models["taesd"]})):
                events: list[Event] = []
                run(
                    c,
                    "txt2img",
                    {
                        "model": models["sd"],
                        "steps": 2,
                        "width": 64,
                        "height": 64,
                        "preview_every": 1,
                        **extra,
                    },
                    None,
                    events,
                )
                previews[name] = next(e.attachment.shape for e in events if e.type == "preview")
            # The latent approximation is at latent size; TAESD decodes to full size.
            assert previews == {"latent": (32, 32, 4), "taesd": (64, 64, 4)}

    def test_lora_applies_to_its_job_only(
        self, sidecar: SidecarProcess, models: dict[str, str], tmp_path: Path
    ) -> None:
        base = {
            "model": models["sd"],
            "prompt": "red brick",
            "steps": 2,
            "width": 64,
            "height": 64,
            "seed": 9,
        }
        with sidecar.connect() as c:
            before = run(c, "txt2img", base)
            with_lora = run(c, "txt2img", {**base, "loras": [models["lora"]]})
            half = run(c, "txt2img", {**base, "loras": [models["lora"]], "lora_weights": [0.5]})
            after = run(c, "txt2img", base)
            assert np.array_equal(before, after), "the LoRA leaked into the next job"
            assert np.abs(with_lora.astype(int) - before.astype(int)).mean() > 1.0
            assert not np.array_equal(half, with_lora)
            pickle_lora = tmp_path / "lora.safetensors"
            torch.save({"w": torch.zeros(1)}, pickle_lora)
            for extra, field in (
                ({"loras": [str(pickle_lora)]}, "params.loras"),
                ({"loras": [models["lora"]], "lora_weights": [1.0, 2.0]}, "params.lora_weights"),
                ({"loras": [str(tmp_path / "none.safetensors")]}, "params.loras"),
            ):
                with pytest.raises(InvalidParams) as exc:
                    run(c, "txt2img", {**base, **extra})
                assert exc.value.field == field

    def test_panorama_through_the_sidecar(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        base = {"model": models["sd"], "prompt": "blue sky", "steps": 2, "panorama": True}
        with sidecar.connect() as c:
            img = run(c, "txt2img", {**base, "width": 128, "height": 64})
            assert img.shape == (64, 128, 4)
            with pytest.raises(InvalidParams) as exc:
                run(c, "txt2img", {**base, "width": 100, "height": 64})
            assert exc.value.field == "params.width"

    def test_control_changes_the_image_and_fallback_is_reported(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        base = {
            "model": models["sd"],
            "prompt": "stone",
            "steps": 3,
            "width": 64,
            "height": 64,
            "near": 1.0,
            "far": 10.0,
        }
        depth = {"depth": arr("depth", depth_map(64, 64))}
        with sidecar.connect() as c:
            off = run(
                c, "control", {**base, "depth_controlnet": models["cn"], "depth_weight": 0.0}, depth
            )
            on = run(c, "control", {**base, "depth_controlnet": models["cn"]}, depth)
            assert np.abs(on.astype(int) - off.astype(int)).mean() > 1.0
            with pytest.raises(InvalidParams) as exc:
                run(c, "txt2img", base, depth)
            assert exc.value.field == "params.depth_controlnet"
            events: list[Event] = []
            run(c, "txt2img", {**base, "control_fallback": True}, depth, events)
            (result,) = [e for e in events if e.type == "result"]
            assert "depth_controlnet" in result.data["warnings"][0]

    @pytest.mark.parametrize(
        ("task", "params", "inputs", "field"),
        [
            (
                "txt2img",
                {"width": 4000, "height": 4000, "max_pixels": 1_000_000},
                {},
                "params.width",
            ),
            (
                "control",
                {"depth_controlnet": "CN", "near": 5.0, "far": 1.0},
                {"depth": np.ones((8, 8), np.float32)},
                "params.near",
            ),
            (
                "control",
                {"depth_controlnet": "CN", "near": 1.0, "far": 5.0},
                {"depth": np.full((8, 8), np.nan, np.float32)},
                "inputs.depth",
            ),
            (
                "img2img",
                {},
                {"image": np.zeros((8, 8, 4), np.uint8), "mask": np.zeros((9, 8), np.uint8)},
                "inputs",
            ),
            ("img2img", {}, {}, "inputs.image"),
            (
                "control",
                {"normal_controlnet": "CN"},
                {"normal": np.ones((8, 8, 3), np.float32)},
                "params.camera_rotation",
            ),
            ("txt2img", {"model": "/nowhere/model.safetensors"}, {}, "params.model"),
            ("txt2img", {"model": "not a repo id"}, {}, "params.model"),
        ],
    )
    def test_bad_requests_are_typed_errors(
        self,
        sidecar: SidecarProcess,
        models: dict[str, str],
        task: str,
        params: dict,
        inputs: dict,
        field: str,
    ) -> None:
        p = {"model": models["sd"], "steps": 1, **params}
        if p.get("depth_controlnet") == "CN":
            p["depth_controlnet"] = models["cn"]
        if p.get("normal_controlnet") == "CN":
            p["normal_controlnet"] = models["cn"]
        with sidecar.connect() as c, pytest.raises(InvalidParams) as exc:
            run(c, task, p, {k: arr(k, v) for k, v in inputs.items()})
        assert exc.value.field == field, exc.value

    def test_pickle_checkpoints_are_refused(self, sidecar: SidecarProcess, tmp_path: Path) -> None:
        ckpt = tmp_path / "model.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
        with sidecar.connect() as c, pytest.raises(InvalidParams) as exc:
            run(c, "txt2img", {"model": str(ckpt), "steps": 1})
        assert exc.value.field == "params.model" and "pickle" in exc.value.message.lower()

    def test_cancel_stops_within_a_step(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        with sidecar.connect() as c:
            job = c.submit(
                "sd",
                {
                    "model": models["sd"],
                    "steps": 150,
                    "width": 64,
                    "height": 64,
                    "preview_every": 0,
                },
            )
            seen: list[Event] = []
            while not any(e.type == "progress" and e.data["step"] >= 2 for e in seen):
                ev = c.next_event(timeout=120)
                assert ev is not None
                seen.append(ev)
            at_cancel = max(e.data["step"] for e in seen if e.type == "progress")
            c.cancel(job)
            with pytest.raises(JobCancelled):
                c.wait(job, seen.append, timeout=30)
            # Within one step (a report may already be on its way), whatever the load.
            assert max(e.data["step"] for e in seen if e.type == "progress") <= at_cancel + 2
            assert c.events(job)[-1].data.get("worker_restarted") is None  # it yielded


@pytest.mark.process
def test_same_request_same_pixels_in_two_fresh_sidecars(
    tmp_path: Path, models: dict[str, str]
) -> None:
    params = {
        "model": models["sd"],
        "prompt": "a blue marble",
        "steps": 3,
        "width": 72,
        "height": 48,
        "seed": 1234,
    }
    images = []
    for i in range(2):
        sc = SidecarProcess(tmp_path / f"state{i}").start()
        try:
            with sc.connect() as c:
                images.append(run(c, "txt2img", params))
                if i == 0:
                    other = run(c, "txt2img", {**params, "seed": 1235})
        finally:
            sc.stop()
    assert np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], other)


def test_tileable_is_exactly_shift_equivariant_on_the_torus(models: dict[str, str]) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    k = 6  # latent pixels; a multiple of the UNet's downsampling (2)

    def gen(lat: torch.Tensor) -> np.ndarray:
        return pipe("a brick wall", latents=lat, num_inference_steps=3, output_type="np").images[0]

    factor = pipe.vae_scale_factor
    with wrapped([pipe.unet, pipe.vae], True, True):
        a = gen(latents)
        b = gen(torch.roll(latents, shifts=(k, -k), dims=(2, 3)))
    err = np.abs(np.roll(a, (factor * k, -factor * k), axis=(0, 1)) - b).max()
    assert err < 1e-5, err
    plain_a, plain_b = gen(latents), gen(torch.roll(latents, shifts=(k, -k), dims=(2, 3)))
    plain_err = np.abs(np.roll(plain_a, (factor * k, -factor * k), axis=(0, 1)) - plain_b).max()
    assert plain_err > 1e-2, plain_err
    # The shared modules got their own convolutions back.
    assert not any("_conv_forward" in m.__dict__ for m in pipe.unet.modules())


def test_panorama_wraps_left_right_only(models: dict[str, str]) -> None:
    """Rolling the noise sideways rolls a panorama exactly; rolling it up/down does not."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["sd"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, 16, 32), generator=torch.Generator().manual_seed(3))
    f, k = pipe.vae_scale_factor, 4

    def gen(lat: torch.Tensor) -> np.ndarray:
        return pipe("sky", latents=lat, num_inference_steps=3, output_type="np").images[0]

    with wrapped([pipe.unet, pipe.vae], True, False):
        a = gen(latents)
        sideways = gen(torch.roll(latents, shifts=k, dims=3))
        vertical = gen(torch.roll(latents, shifts=k, dims=2))
    assert a.shape == (32, 64, 3)
    assert np.abs(np.roll(a, f * k, axis=1) - sideways).max() < 1e-5
    assert np.abs(np.roll(a, f * k, axis=0) - vertical).max() > 1e-2


def test_control_map_uses_the_requests_near_far(models: dict[str, str], tmp_path: Path) -> None:
    """A per-image min/max would change the subject's grey level when the background
    changes; the request's near/far must not."""
    engine = StableDiffusionEngine()
    schema = [p.to_dict() for p in engine.params]
    params = validate_params(
        schema, {"model": models["sd"], "depth_controlnet": models["cn"], "near": 1.0, "far": 20.0}
    )
    maps = []
    for background in (np.inf, 8.0, 19.0):
        d = np.full((16, 16), background, np.float32)
        d[4:12, 4:12] = 4.0
        path = tmp_path / f"d{background}.bin"
        d.tofile(path)
        prep = engine.prepare(
            "control", params, {"depth": Input("depth", "array", path, "float32", (16, 16))}
        )
        maps.append(prep.controls[0][3][..., 0])
    subject = [m[8, 8] for m in maps]
    expected = (1 / 4 - 1 / 20) / (1 / 1 - 1 / 20)
    assert np.allclose(subject, expected, atol=1e-6), subject
    assert maps[0][0, 0] == 0.0 and maps[1][0, 0] > maps[2][0, 0] > 0.0


def test_a_capture_exr_stands_in_for_depth_and_normal(
    models: dict[str, str], tmp_path: Path
) -> None:
    """The add-on sends its capture's multilayer EXR as one `passes` input: the engine
    reads the same depth and normal from it as from separate arrays."""
    from genart_core.imaging.passes import write_passes

    engine = StableDiffusionEngine()
    schema = [p.to_dict() for p in engine.params]
    params = validate_params(
        schema,
        {
            "model": models["sd"],
            "depth_controlnet": models["cn"],
            "normal_controlnet": models["cn"],
            "near": 1.0,
            "far": 20.0,
            "camera_rotation": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
        },
    )
    depth = depth_map(16, 16)
    normal = np.zeros((16, 16, 3), np.float32)
    normal[..., 0] = 0.6
    normal[..., 2] = 0.8
    depth.tofile(tmp_path / "d.bin")
    normal.tofile(tmp_path / "n.bin")
    write_passes(
        tmp_path / "p.exr", {"depth": depth, "normal": normal, "vector": np.zeros((16, 16, 4))}
    )
    separate = engine.prepare(
        "control",
        params,
        {
            "depth": Input("depth", "array", tmp_path / "d.bin", "float32", (16, 16)),
            "normal": Input("normal", "array", tmp_path / "n.bin", "float32", (16, 16, 3)),
        },
    )
    exr = engine.prepare(
        "control", params, {"passes": Input("passes", "blob", tmp_path / "p.exr", encoding="exr")}
    )
    assert len(exr.controls) == len(separate.controls) == 2
    for a, b in zip(exr.controls, separate.controls, strict=True):
        assert np.array_equal(a[3], b[3])
    # Only the passes with a ControlNet count: depth alone from the same EXR is fine.
    depth_only = {**params, "normal_controlnet": ""}
    one = engine.prepare(
        "control",
        depth_only,
        {"passes": Input("passes", "blob", tmp_path / "p.exr", encoding="exr")},
    )
    assert [c[0] for c in one.controls] == ["depth"]
    with pytest.raises(InvalidParams) as exc:
        (tmp_path / "bad.exr").write_bytes(b"nope")
        engine.prepare(
            "control",
            params,
            {"passes": Input("passes", "blob", tmp_path / "bad.exr", encoding="exr")},
        )
    assert exc.value.field == "inputs.passes"


@pytest.mark.process
def test_genart_generate_writes_the_image(
    sidecar: SidecarProcess, models: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from PIL import Image

    Image.fromarray(render(40, 56)[..., :3]).save(tmp_path / "render.png")
    np.save(tmp_path / "depth.npy", depth_map(40, 56))
    out = tmp_path / "out.png"
    cmd = [
        sys.executable,
        "-m",
        "genart_core.cli",
        "--connection-file",
        str(sidecar.connection_file),
        "generate",
        "--model",
        models["sd"],
        "--prompt",
        "green wood",
        "--width",
        "56",
        "--height",
        "40",
        "--steps",
        "3",
        "--init-image",
        str(tmp_path / "render.png"),
        "--strength",
        "0.8",
        "--depth",
        str(tmp_path / "depth.npy"),
        "--depth-controlnet",
        models["cn"],
        "--near",
        "1",
        "--far",
        "10",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "0/2" in res.stderr and "2/2" in res.stderr  # 3 steps × strength 0.8
    with Image.open(out) as img:
        assert img.size == (56, 40)
    bad = subprocess.run(
        cmd[:-2] + ["--far", "0.5", "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "params.near" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_depth_from_a_blender_style_multilayer_exr(tmp_path: Path) -> None:
    import OpenEXR

    from genart_core.generate import _depth_input

    z = depth_map(6, 8)
    rgba = np.random.RandomState(0).rand(6, 8).astype(np.float32)
    layers = {f"ViewLayer.Combined.{c}": rgba for c in "RGBA"}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {**layers, "ViewLayer.Depth.Z": z}) as f:
        f.write(str(tmp_path / "passes.exr"))
    att = _depth_input(tmp_path / "passes.exr")
    assert att.shape == (6, 8)
    assert np.array_equal(np.frombuffer(att.data, np.float32).reshape(6, 8), z)
    # Blender 5.0 writes one part per pass, the depth in the second one.
    from genart_core.imaging.passes import write_passes

    write_passes(tmp_path / "parts.exr", {"combined": np.dstack([rgba] * 4), "depth": z})
    att = _depth_input(tmp_path / "parts.exr")
    assert np.array_equal(np.frombuffer(att.data, np.float32).reshape(6, 8), z)
    with OpenEXR.File(header, layers) as f:
        f.write(str(tmp_path / "color.exr"))
    with pytest.raises(InvalidParams) as exc:
        _depth_input(tmp_path / "color.exr")
    assert exc.value.field == "--depth"


@pytest.mark.parametrize(
    ("extra", "wraps"),
    [({}, None), ({"panorama": True}, (True, False)), ({"tileable": True}, (True, True))],
)
def test_the_engine_wraps_while_it_generates_and_unwraps_after(
    models: dict[str, str], extra: dict, wraps: tuple | None
) -> None:
    """Watches a VAE convolution during a real engine run: wrapped only for panorama and
    tileable requests, along the right axes, and restored afterwards."""
    engine = StableDiffusionEngine()
    params = validate_params(
        [p.to_dict() for p in engine.params],
        {"model": models["sd"], "steps": 1, "width": 96, "height": 48, **extra},
    )
    engine._ensure_device()
    conv = engine._base(models["sd"]).vae.decoder.conv_in
    seen: list[object] = []

    def watch(module: torch.nn.Module, args: tuple) -> None:
        patched = module.__dict__.get("_conv_forward")
        if patched is None:
            seen.append(None)
            return
        probe = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, module.in_channels, 1, 1)
        padded = []
        torch.nn.functional.conv2d = _spy_conv(torch.nn.functional.conv2d, padded)
        try:
            patched(probe, module.weight, module.bias)
        finally:
            torch.nn.functional.conv2d = torch.nn.functional.conv2d.__wrapped__
        x = padded[0][0, 0]  # (4 + 2p, 4 + 2p)
        seen.append((bool(x[1, 0] == x[1, -2]), bool(x[0, 1] == x[-2, 1])))

    handle = conv.register_forward_pre_hook(watch)
    try:
        engine.run("txt2img", params, {}, RunContext("t", 0, 1, 1))
    finally:
        handle.remove()
    assert seen and all(s == wraps for s in seen), seen
    assert "_conv_forward" not in conv.__dict__


def _spy_conv(real, padded):  # type: ignore[no-untyped-def]
    def conv2d(x, *a, **k):  # type: ignore[no-untyped-def]
        padded.append(x)
        return real(x, *a, **k)

    conv2d.__wrapped__ = real  # type: ignore[attr-defined]
    return conv2d


@pytest.mark.process
def test_memory_options_unload_and_offload(tmp_path: Path, models: dict[str, str]) -> None:
    sc = SidecarProcess(tmp_path / "state", ["--attention-slicing", "--vae-tiling"]).start()
    params = {
        "model": models["sd"],
        "prompt": "green stone",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 5,
    }
    try:
        with sc.connect() as c:
            assert c.welcome["memory_options"] == ["attention_slicing", "vae_tiling"]
            first = run(c, "txt2img", params)
            assert c.ping()["memory"]["state"] == "loaded"
            for mode in ("offload", "unload"):
                reply = c.call("unload", {"mode": mode}).result
                assert reply["done"] is True and reply["memory"]["state"] == f"{mode}ed"
                assert c.ping()["memory"]["state"] == f"{mode}ed"
                again = run(c, "txt2img", params)  # reloads (or moves back) by itself
                assert np.array_equal(first, again), mode
                assert c.ping()["memory"]["state"] == "loaded"
            with pytest.raises(InvalidParams) as exc:
                c.call("unload", {"mode": "everything"})
            assert exc.value.field == "mode"
    finally:
        sc.stop()
