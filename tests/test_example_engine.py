"""The example third-party engine package examples/genart-texsynth, end to end.

It must be installed into this environment (dev/env.sh does it); the sidecar's worker then
finds it through the `genart.engines` entry point like any engine package. These tests
check the discovery, the handshake, both tasks through a real sidecar subprocess,
parameter validation and cancel.
"""

from __future__ import annotations

import importlib
import time
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import SidecarProcess

from genart_core.engines import ENTRY_POINT_GROUP, available_engines
from genart_core.engines.base import Input, RunContext
from genart_core.engines.schema import validate_params
from genart_core.protocol import Attachment, Client, Event
from genart_core.protocol.errors import EngineFailed, InvalidParams, JobCancelled, JobStateError

pytestmark = pytest.mark.process

INSTALL_HINT = (
    "the example engine package genart_texsynth is not installed in this environment: "
    "run `.venv/bin/python -m pip install -e examples/genart-texsynth` (dev/env.sh does)"
)


def require_texsynth() -> ModuleType:
    try:
        return importlib.import_module("genart_texsynth")
    except ImportError as exc:
        error = exc
    pytest.fail(f"{INSTALL_HINT} ({error})", pytrace=False)


@pytest.fixture(scope="module")
def texsynth_installed() -> ModuleType:
    """Every test here fails (never skips) when the package is missing: the sidecar
    fixture needs this one."""
    return require_texsynth()


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory, texsynth_installed: ModuleType):
    proc = SidecarProcess(tmp_path_factory.mktemp("texsynth-state")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(sc: SidecarProcess):
    """A client whose welcome lists the engines (reconnects while the worker starts)."""
    deadline = time.monotonic() + 30
    c = sc.connect()
    while not c.welcome.get("engines_ready") and time.monotonic() < deadline:
        c.close()
        time.sleep(0.2)
        c = sc.connect()
    yield c
    c.close()


def image_of(client: Client, job: str) -> np.ndarray:
    reply = client.result(job)
    att = reply.attachments["image"]
    assert att.dtype == "uint8" and att.color_space == "srgb"
    assert reply.result["outputs"][0]["color_space"] == "srgb"
    return np.frombuffer(bytes(att.data), dtype=np.uint8).reshape(att.shape)


def run_job(
    client: Client, params: dict[str, Any], **kwargs: Any
) -> tuple[np.ndarray, list[Event]]:
    job = client.submit("texsynth", params, **kwargs)
    seen: list[Event] = []
    last = client.wait(job, seen.append, timeout=60)
    assert last.type == "completed", last
    return image_of(client, job), seen


def seam_and_interior(img: np.ndarray, axis: int) -> tuple[float, np.ndarray]:
    """Mean absolute RGB difference across the wrap-around seam along `axis` (last row or
    column against the first), and the same for every pair of interior neighbours."""
    a = img[..., :3].astype(np.float64)
    other = (0, 2) if axis == 1 else (1, 2)
    interior = np.abs(np.diff(a, axis=axis)).mean(axis=other)
    seam = np.abs(np.take(a, 0, axis=axis) - np.take(a, -1, axis=axis)).mean()
    return float(seam), interior


def palette_image(h: int, w: int) -> np.ndarray:
    """A source texture of exactly five colours: blocks and stripes."""
    colours = np.array(
        [[200, 40, 30, 255], [30, 160, 60, 255], [20, 40, 200, 255], [240, 220, 40, 255],
         [250, 250, 250, 255]],
        dtype=np.uint8,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 4, size=(h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)
    index = blocks[:h, :w]
    index[:, ::7] = 4  # white stripes
    return np.ascontiguousarray(colours[index])


def source_attachment(img: np.ndarray) -> dict[str, Attachment]:
    return {"image": Attachment.array("image", img.tobytes(), "uint8", img.shape, "srgb")}


# -- discovery -------------------------------------------------------------------------
def test_package_is_installed_and_found_through_its_entry_point() -> None:
    engine_cls = require_texsynth().TexSynthEngine
    points = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert points.get("texsynth") == "genart_texsynth:TexSynthEngine", points
    found = available_engines()
    assert found.get("texsynth") is engine_cls, found
    assert "fake" not in found  # the test engine only comes with test_engines=True
    assert engine_cls.name == "texsynth" and engine_cls.tasks == ("txt2img", "img2img")


def test_handshake_advertises_texsynth_with_its_schema(
    client: Client, texsynth_installed: ModuleType
) -> None:
    assert client.welcome["engines_ready"]
    engines = {e["name"]: e for e in client.welcome["engines"]}
    assert "texsynth" in engines, sorted(engines)
    ts = engines["texsynth"]
    assert ts == texsynth_installed.TexSynthEngine.describe()
    assert ts["tasks"] == ["txt2img", "img2img"]
    assert ts["capabilities"] == {"depth_control": False, "tileable": True}
    assert "image" in ts["inputs"] and "RGBA uint8" in ts["inputs"]["image"]
    params = {p["name"]: p for p in ts["params"]}
    assert {"width", "height", "seed", "noise", "octaves", "palette", "tileable", "patch"} <= set(
        params
    )
    assert all(p["help"] for p in params.values())
    assert params["width"]["type"] == "int" and params["width"]["min"] == 1
    assert params["palette"]["type"] == "enum" and "two_color" in params["palette"]["choices"]
    assert params["color_a"]["type"] == "int_list" and params["color_a"]["max"] == 255
    assert params["tileable"] == {
        "name": "tileable",
        "type": "bool",
        "default": True,
        "help": params["tileable"]["help"],
    }


# -- txt2img ---------------------------------------------------------------------------
def test_txt2img_odd_size_deterministic_with_progress_and_preview(client: Client) -> None:
    params = {"width": 96, "height": 40, "seed": 7}
    img, seen = run_job(client, params)
    assert img.shape == (40, 96, 4)
    assert (img[..., 3] == 255).all()
    assert img[..., :3].std() > 10  # a texture, not a flat colour
    progress = [e.data for e in seen if e.type == "progress"]
    assert len(progress) >= 2 and progress[-1]["step"] == progress[-1]["steps"]
    previews = [e for e in seen if e.type == "preview"]
    assert previews and previews[0].attachment is not None
    assert previews[0].attachment.shape[2] == 4

    again, _ = run_job(client, params)
    assert again.tobytes() == img.tobytes()
    other, _ = run_job(client, {**params, "seed": 8})
    assert other.shape == img.shape and other.tobytes() != img.tobytes()


@pytest.mark.parametrize("noise", ["perlin", "value"])
def test_txt2img_tiles_seamlessly_and_the_check_catches_seams(client: Client, noise: str) -> None:
    params = {"width": 96, "height": 40, "seed": 11, "noise": noise}
    tiled, _ = run_job(client, params)
    plain, _ = run_job(client, {**params, "tileable": False})
    for axis in (0, 1):
        seam, interior = seam_and_interior(tiled, axis)
        # The wrap-around seam is just one more pair of neighbours.
        assert seam <= interior.max(), (axis, seam, interior.max())
        # The same statistic flags an image that does not wrap around.
        seam, interior = seam_and_interior(plain, axis)
        assert seam > interior.max(), (axis, seam, interior.max())


def test_txt2img_palettes_and_colours(client: Client) -> None:
    img, _ = run_job(
        client,
        {"width": 32, "height": 32, "color_a": [255, 0, 0], "color_b": [0, 0, 255]},
    )
    assert (img[..., 1] == 0).all()  # blends of pure red and pure blue
    assert img[..., 0].max() == 255 and img[..., 2].max() == 255  # both ends reached
    fire, _ = run_job(client, {"width": 32, "height": 32, "palette": "fire"})
    assert fire.tobytes() != img.tobytes()


# -- img2img ---------------------------------------------------------------------------
def test_img2img_quilts_the_requested_size_from_the_input_palette(client: Client) -> None:
    src = palette_image(48, 56)
    params = {"width": 97, "height": 41, "seed": 2, "patch": 12}
    img, seen = run_job(client, params, task="img2img", inputs=source_attachment(src))
    assert img.shape == (41, 97, 4)
    palette = {tuple(c) for c in src.reshape(-1, 4)}
    used = {tuple(c) for c in img.reshape(-1, 4)}
    assert used <= palette, used - palette
    assert len(used) >= 4  # patches from all over the source, not one flat colour
    assert any(e.type == "preview" for e in seen)
    assert [e.data["step"] for e in seen if e.type == "progress"][-1] > 0

    again, _ = run_job(client, params, task="img2img", inputs=source_attachment(src))
    assert again.tobytes() == img.tobytes()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "needs an input named 'image'"),
        (
            {"image": Attachment.array("image", bytes(4 * 4 * 3 * 4), "float32", (4, 4, 3))},
            "RGBA uint8",
        ),
    ],
)
def test_img2img_without_a_usable_image_fails_naming_the_input(
    client: Client, inputs: dict[str, Attachment] | None, message: str
) -> None:
    job = client.submit("texsynth", {"width": 8, "height": 8}, task="img2img", inputs=inputs)
    with pytest.raises(EngineFailed) as exc:
        client.wait(job, timeout=30)
    assert exc.value.field == "inputs.image" and message in exc.value.message
    assert exc.value.allowed["dtype"] == "uint8"


def test_img2img_is_fast_at_128_pixels(texsynth_installed: ModuleType, tmp_path: Path) -> None:
    """The engine alone, in this process: a 128 x 128 quilt takes well under a second of
    CPU (CPU time, not wall time, so that other processes' load does not count)."""
    src = palette_image(64, 64)
    path = tmp_path / "image.bin"
    path.write_bytes(src.tobytes())
    engine = texsynth_installed.TexSynthEngine()
    schema = [p.to_dict() for p in engine.params]
    params = validate_params(schema, {"width": 128, "height": 128})
    inputs = {"image": Input("image", "array", path, "uint8", src.shape, "srgb")}
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        out = engine.run("img2img", params, inputs, RunContext("j", 0, 1, 1))
        best = min(best, time.process_time() - started)
    assert out[0].shape == (128, 128, 4)
    assert best < 1.0, best


def test_approximations_come_back_as_warnings_with_the_result(client: Client) -> None:
    def warnings_of(seen: list[Event]) -> list[str]:
        (result,) = [e for e in seen if e.type == "result"]
        return result.data["warnings"]

    img, seen = run_job(
        client,
        {"width": 20, "height": 12, "patch": 24},
        task="img2img",
        inputs=source_attachment(palette_image(10, 14)),
    )
    assert img.shape == (12, 20, 4)
    assert any("patch 24" in w and "10-pixel patches" in w for w in warnings_of(seen))
    _, seen = run_job(client, {"width": 8, "height": 8, "scale": 4, "octaves": 5})
    assert any("only 2 were used" in w for w in warnings_of(seen)), warnings_of(seen)
    _, seen = run_job(client, {"width": 64, "height": 64, "scale": 4, "octaves": 5})
    assert warnings_of(seen) == []


# -- validation and cancel -------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"width": 0}, "params.width"),
        ({"height": 4097}, "params.height"),
        ({"octaves": 13}, "params.octaves"),
        ({"persistence": "high"}, "params.persistence"),
        ({"tileable": 1}, "params.tileable"),
        ({"palette": "rainbow"}, "params.palette"),
        ({"noise": "simplex"}, "params.noise"),
        ({"color_a": [0, 300, 0]}, "params.color_a"),
        ({"overlap": 0.9}, "params.overlap"),
        ({"brush": 3}, "params.brush"),
    ],
)
def test_bad_params_are_refused_at_submit(
    client: Client, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidParams) as exc:
        client.submit("texsynth", params)
    assert exc.value.field == field, exc.value
    if field == "params.palette":
        assert exc.value.allowed == [
            "two_color",
            "grayscale",
            "fire",
            "ocean",
            "moss",
            "terrain",
        ]


def test_a_colour_of_the_wrong_length_fails_the_job_naming_it(client: Client) -> None:
    # The schema checks the elements' range only; the engine checks the length.
    job = client.submit("texsynth", {"width": 8, "height": 8, "color_b": [1, 2]})
    with pytest.raises(InvalidParams) as exc:
        client.wait(job, timeout=30)
    assert exc.value.field == "params.color_b"
    assert exc.value.allowed == {"length": 3, "min": 0, "max": 255}


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_cancel_stops_a_long_job_between_steps(client: Client, task: str) -> None:
    if task == "txt2img":  # about 10 s: 11 octaves x 16 bands of 4096 x 4096 noise
        params = {"width": 4096, "height": 4096, "octaves": 12}
        inputs = None
    else:  # about 10 s: ~90 rows of 8-pixel patches
        params = {"width": 512, "height": 512, "patch": 8}
        inputs = source_attachment(palette_image(64, 64))
    job = client.submit("texsynth", params, task=task, inputs=inputs)
    events: list[Event] = []
    while not any(e.type == "progress" and e.data["step"] >= 2 for e in events):
        ev = client.next_event(timeout=30)
        assert ev is not None, "no progress from the texsynth engine"
        if ev.job == job:
            events.append(ev)
    steps = events[-1].data["steps"]
    assert steps > 10
    assert client.cancel(job)["state"] in ("cancelling", "cancelled")
    with pytest.raises(JobCancelled):
        client.wait(job, events.append, timeout=60)
    history = client.events(job)
    summary = [(e.type, e.data) for e in history if e.type != "progress"]
    # The engine stopped at its next step by itself, within the grace period (3 s) after
    # which the sidecar would have killed and restarted the worker.
    assert history[-1].type == "cancelled", summary
    assert not history[-1].data.get("worker_restarted"), summary
    # It was stopped in the middle: no result, not all steps done.
    assert not any(e.type == "result" for e in history), summary
    assert max(e.data["step"] for e in history if e.type == "progress") < steps
    with pytest.raises(JobStateError):
        client.result(job)
    # The worker goes on serving.
    img, _ = run_job(client, {"width": 16, "height": 16})
    assert img.shape == (16, 16, 4)
