"""The micro depth ControlNet's training (issue 8, `micro/train_control`) on a tiny pipeline:
a folder of triples, a ControlNet made from the UNet that starts as a no-op, a checkpoint
that is a pipeline folder with `controlnet/` and resumes exactly, and `genart train
controlnet`. The shipped ControlNet's quality is tested in test_micro_quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_micro_sd import TINY

from genart_core.micro.train_control import (
    CONTROLNET_DIR,
    ControlFolder,
    ControlTrainConfig,
    ControlTrainer,
    control_pipeline,
)
from genart_core.micro.train_sd import SDTrainConfig, Trainer


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny micro pipeline, two diffusion steps in."""
    t = Trainer(SDTrainConfig(model=TINY, ae_steps=1, ae_batch=2, batch=2))
    for _ in range(3):
        t.train_step()
    folder = tmp_path_factory.mktemp("base") / "sd"
    t.save(folder)
    return folder


@pytest.fixture(scope="module")
def triples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight discs at random places: the render, its disparity map, a caption."""
    folder = tmp_path_factory.mktemp("triples")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(8):
        cy, cx, r = rng.uniform(8, 24, 2).tolist() + [rng.uniform(4, 9)]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image = np.where(disc[..., None], [200, 30, 30], [90, 90, 90]).astype(np.uint8)
        control = np.repeat(np.where(disc, 220, 0)[..., None], 3, axis=2).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        Image.fromarray(control).save(folder / f"{i:03d}.control.png")
        (folder / f"{i:03d}.txt").write_text("red dots\n")
    return folder


def config(triples: Path, base: Path, **kw: object) -> ControlTrainConfig:
    fields: dict[str, object] = {
        "data": str(triples),
        "base": str(base),
        "size": 32,
        "batch": 2,
        "texture_batch": 2,
        "hold_out": 2,
        "warmup": 1,
    }
    return ControlTrainConfig(**{**fields, **kw})  # type: ignore[arg-type]


def test_the_folder_holds_out_the_last_triples_and_flips_pairs_together(triples: Path) -> None:
    f = ControlFolder(triples, 32, 0, hold_out=2)
    assert f.evaluation == ["006", "007"] and len(f.train) == 6
    for i in range(12):
        t = f[i]
        assert t.caption == "red dots" and t.image.shape == t.control.shape == (32, 32, 3)
        # the disc is where the map is bright, flipped or not
        assert np.array_equal(t.image[..., 0] == 200, t.control[..., 0] == 220)
    with pytest.raises(ValueError, match="more than the 8 held out"):
        ControlFolder(triples, 32, 0, hold_out=8)


def test_a_new_controlnet_changes_nothing_until_trained(triples: Path, base: Path) -> None:
    t = ControlTrainer(config(triples, base))
    pipe, net = t.exported()
    held = t.pairs.held_out()[0]
    common = {"num_inference_steps": 3, "height": 32, "width": 32, "output_type": "np"}
    plain = pipe("red dots", generator=torch.Generator().manual_seed(0), **common).images[0]
    ctl = control_pipeline(pipe, net)
    image = Image.fromarray(held.control)
    same = ctl("red dots", image=image, generator=torch.Generator().manual_seed(0), **common)
    np.testing.assert_allclose(same.images[0], plain, atol=1e-5)  # zero convolutions
    for _ in range(3):
        t.train_step()
    pipe, net = t.exported()
    ctl = control_pipeline(pipe, net)
    moved = ctl("red dots", image=image, generator=torch.Generator().manual_seed(0), **common)
    unmoved = pipe("red dots", generator=torch.Generator().manual_seed(0), **common).images[0]
    assert np.abs(moved.images[0] - unmoved).max() > 1e-4


def test_a_frozen_unet_stays_as_it_was(triples: Path, base: Path) -> None:
    t = ControlTrainer(config(triples, base, unet_lr=0.0))
    before = {n: p.clone() for n, p in t.unet.named_parameters()}
    for _ in range(2):
        t.train_step()
    assert all(torch.equal(before[n], p) for n, p in t.unet.named_parameters())
    assert not any(n.startswith("unet.") for n in t._params())


def test_checkpoints_resume_exactly(triples: Path, base: Path, tmp_path: Path) -> None:
    whole = ControlTrainer(config(triples, base))
    losses = [whole.train_step().loss for _ in range(4)]
    t = ControlTrainer(config(triples, base))
    for _ in range(2):
        t.train_step()
    t.save(tmp_path / "ck")
    assert (tmp_path / "ck" / CONTROLNET_DIR / "config.json").is_file()
    assert json.loads((tmp_path / "ck" / "model_index.json").read_text())["unet"]
    resumed = ControlTrainer.load(tmp_path / "ck")
    assert resumed.step == 2
    rest = [resumed.train_step().loss for _ in range(2)]
    assert rest == pytest.approx(losses[2:], abs=1e-4)


def test_genart_train_controlnet_runs_and_reports(
    triples: Path, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from genart_core.cli import main as genart

    out = tmp_path / "cn"
    args = ["train", "controlnet", "--out", str(out), "--data", str(triples), "--base",
            str(base), "--size", "32", "--batch", "2", "--texture-batch", "2",
            "--hold-out", "2", "--eval-seeds", "1", "--log-every", "1"]  # fmt: skip
    assert genart([*args, "--steps", "2"]) == 0
    assert genart([*args, "--steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "step 3/3" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["step"] == 3 and m["control"]["maps"] == 2
    assert m["img2img_layout"]["strength"] == 0.6 and m["quality"]["seeds"] == 1
    assert (tmp_path / "cn-samples.png").is_file()
    assert genart(["train", "controlnet", "--out", str(tmp_path / "x"), "--data",
                   str(tmp_path / "none"), "--steps", "1"]) == 2  # fmt: skip
