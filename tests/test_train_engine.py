"""Training as a sidecar job (issue 8): the `train` engine trains in chunks, yields the
worker to generation jobs queued meanwhile (they finish first), reports progress, resumes
after a sidecar kill and after a cancel, and returns its evaluation. Real sidecar
processes; the micro VQGAN and the micro SD's autoencoder stage keep it to seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SidecarProcess

from genart_core.micro.train_vqgan import find_checkpoint
from genart_core.protocol import Client, Event
from genart_core.protocol.errors import InvalidParams

pytestmark = pytest.mark.process


def vq_params(out: Path, steps: int, **kw: Any) -> dict[str, Any]:
    return {"out": str(out), "steps": steps, "chunk_seconds": 0.1, "batch": 2,
            "eval_images": 9, **kw}  # fmt: skip


def metrics(c: Client, job: str) -> dict[str, Any]:
    blob = c.result(job).attachments["metrics"]
    return json.loads(bytes(blob.data))


def test_training_yields_to_generation_and_finishes(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    out = tmp_path / "vq"
    with sidecar.connect() as c:
        train = c.submit("train", vq_params(out, 10), task="vqgan")
        deadline = time.monotonic() + 120
        while not any(e.type == "progress" and e.data["step"] >= 2 for e in c.events(train)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        gen = c.submit("fake", {"steps": 3}, task="txt2img")
        c.wait(gen, timeout=60)
        state = c.status(train)["state"]  # when the generation job is done
        events: list[Event] = []
        c.wait(train, events.append, timeout=300)
        m = metrics(c, train)
    assert state in ("running", "queued")  # it did not wait for the training's end
    assert m["step"] == 10 and m["held_out"]["images"] == 9
    steps = [e.data["step"] for e in events if e.type == "progress"]
    assert steps == sorted(steps) and steps[-1] == 10
    assert find_checkpoint(out) is not None


def test_a_killed_sidecar_resumes_the_training(tmp_path: Path) -> None:
    out = tmp_path / "vq"
    sc = SidecarProcess(tmp_path / "state").start()
    try:
        with sc.connect() as c:
            job = c.submit("train", vq_params(out, 16), task="vqgan")
            deadline = time.monotonic() + 120
            while find_checkpoint(out) is None:
                assert time.monotonic() < deadline, sc.log_text()
                time.sleep(0.2)
        sc.kill()
        reached = json.loads((out / "training" / "trainer.json").read_text())["step"]
        assert 0 < reached < 16
        sc.start()
        with sc.connect() as c:
            c.wait(job, timeout=300)
            assert metrics(c, job)["step"] == 16
    finally:
        sc.stop()


def test_cancel_keeps_a_checkpoint(sidecar: SidecarProcess, tmp_path: Path) -> None:
    out = tmp_path / "vq"
    with sidecar.connect() as c:
        job = c.submit("train", vq_params(out, 100_000, chunk_seconds=60), task="vqgan")
        seen: list[Event] = []

        def on(e: Event) -> None:
            seen.append(e)
            if e.type == "progress" and e.data["step"] >= 3 and len(seen) < 1000:
                c.cancel(job)

        with pytest.raises(Exception, match="cancel"):
            c.wait(job, on, timeout=120)
    assert find_checkpoint(out) is not None
    step = json.loads((out / "training" / "trainer.json").read_text())["step"]
    assert step >= 3


def test_the_diffusion_autoencoder_stage_and_bad_requests(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    out = tmp_path / "sd"
    with sidecar.connect() as c:
        job = c.submit(
            "train",
            {"out": str(out), "steps": 3, "ae_steps": 3, "chunk_seconds": 0.1,
             "eval_images": 9},
            task="diffusion",
        )  # fmt: skip
        c.wait(job, timeout=300)
        m = metrics(c, job)
        assert m["step"] == 3 and "quality" not in m  # the UNet has not trained yet
        assert (out / "model_index.json").is_file()
        for params, field in (
            ({"out": ""}, "params.out"),
            ({"out": str(tmp_path / "x"), "data": str(tmp_path / "nowhere")}, "params.data"),
        ):
            bad = c.submit("train", {"steps": 2, **params}, task="diffusion")
            with pytest.raises(InvalidParams) as exc:
                c.wait(bad, timeout=60)
            assert exc.value.field == field
        assert np.isfinite(m["held_out"]["psnr_db"])
