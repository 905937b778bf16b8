"""The micro VQGAN's training pipeline (issue 8): losses go down, checkpoints are standard
diffusers folders that reload to the same outputs and resume, metrics are right on known
cases, and the discriminator is off during the warm-up and on after it. A tiny model
(16/16/16 channels, 32² crops, 32 codes) keeps each test to a few seconds on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genart_core.micro.train_vqgan import (
    TrainConfig,
    Trainer,
    evaluation_dict,
    find_checkpoint,
)
from genart_core.micro.vqgan import (
    LossConfig,
    VQConfig,
    codebook_stats,
    evaluate,
    psnr,
    reconstruct,
    to_tensor,
)

TINY = VQConfig(block_out_channels=(16, 16, 16), num_vq_embeddings=32, sample_size=32)


def tiny(disc_start: int = 1000, **kw: object) -> TrainConfig:
    return TrainConfig(
        vq=TINY,
        loss=LossConfig(disc_start=disc_start, disc_channels=8),
        size=32,
        batch=4,
        lr=2e-3,
        eval_images=18,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_steps_lower_the_loss_on_a_fixed_batch() -> None:
    t = Trainer(tiny())
    batch = t.batch(0)
    logs = [t.train_step(batch) for _ in range(25)]
    first, last = logs[0].l1 + logs[0].grad, np.mean([g.l1 + g.grad for g in logs[-3:]])
    assert last < 0.8 * first, f"reconstruction loss {first:.4f} → {last:.4f}"
    assert logs[-1].psnr > logs[0].psnr, (logs[0].psnr, logs[-1].psnr)


def test_training_is_deterministic_in_the_seed() -> None:
    a, b = Trainer(tiny()), Trainer(tiny())
    la = [a.train_step().loss for _ in range(3)]
    lb = [b.train_step().loss for _ in range(3)]
    assert la == lb


def test_discriminator_is_off_before_the_warm_up_and_on_after() -> None:
    t = Trainer(tiny(disc_start=2))
    before = [p.detach().clone() for p in t.disc.parameters()]
    assert not t.disc_active()
    logs = [t.train_step() for _ in range(2)]
    assert all(g.gan == 0.0 and g.d_loss == 0.0 and g.gan_weight == 0.0 for g in logs)
    assert all(torch.equal(a, p) for a, p in zip(before, t.disc.parameters(), strict=True))
    assert t.disc_active()
    log = t.train_step()
    assert log.d_loss > 0.0 and log.gan_weight > 0.0, log
    assert any(not torch.equal(a, p) for a, p in zip(before, t.disc.parameters(), strict=True))


def test_checkpoint_reloads_with_from_pretrained_and_the_engine_loader(tmp_path: Path) -> None:
    from diffusers import VQModel

    from genart_core.engines.vqgan.loading import load_vqmodel

    t = Trainer(tiny())
    for _ in range(2):
        t.train_step()
    x = to_tensor(t.batch(5))
    t.vq.eval()
    with torch.no_grad():
        before = reconstruct(t.vq, x)
    out = tmp_path / "vq"
    t.save(out, {"psnr": math.inf})
    assert (out / "config.json").is_file()
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text()) == {"psnr": "inf"}
    for vq in (VQModel.from_pretrained(out, local_files_only=True).eval(), load_vqmodel(str(out))):
        with torch.no_grad():
            after = reconstruct(vq, x)
        assert torch.equal(before.codes, after.codes)
        assert torch.allclose(before.image, after.image, atol=1e-6), (
            (before.image - after.image).abs().max()
        )


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "vq"
    straight = Trainer(tiny(disc_start=2))
    expected = [straight.train_step().loss for _ in range(4)]
    first = Trainer(tiny(disc_start=2))
    got = [first.train_step().loss for _ in range(2)]
    first.save(out)
    assert find_checkpoint(out) == out
    resumed = Trainer.load(out)
    assert resumed.step == 2
    got += [resumed.train_step().loss for _ in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_an_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "vq"
    t = Trainer(tiny())
    t.save(out)
    out.rename(tmp_path / "vq.old")  # crashed after moving the old one away
    assert find_checkpoint(out) == out and Trainer.load(out).step == 0
    assert find_checkpoint(tmp_path / "nothing") is None


def test_psnr_known_cases() -> None:
    a = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a.astype(np.int64)
    b[..., 0] = np.where(b[..., 0] < 255, b[..., 0] + 1, 254)  # error 1 on a third
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 3), abs=1e-9)


def test_codebook_stats_known_cases() -> None:
    one = codebook_stats(np.full((4, 16, 16), 7), 256)
    assert (one.used, one.usage, one.perplexity) == (1, 1 / 256, 1.0)
    uniform = codebook_stats(np.arange(64).repeat(3), 64)
    assert uniform.usage == 1.0 and uniform.perplexity == pytest.approx(64.0)
    half = codebook_stats(np.array([0, 0, 1, 1]), 8)
    assert half.used == 2 and half.usage == 0.25 and half.perplexity == pytest.approx(2.0)


def test_evaluate_on_a_model_with_one_code() -> None:
    """Every codebook entry equal: one code is used everywhere (ties go to the first)."""
    t = Trainer(tiny())
    with torch.no_grad():
        t.vq.quantize.embedding.weight.zero_()
    images = np.stack([t.data[i].image for i in range(6)])
    e = evaluate(t.vq, images, ["a", "a", "a", "b", "b", "b"])
    assert e.codebook is not None
    assert e.codebook.used == 1 and e.codebook.usage == 1 / 32 and e.codebook.perplexity == 1.0
    assert set(e.psnr_by_family) == {"a", "b"} and e.images == 6
    assert t.vq.training  # evaluate restores the mode


def test_evaluation_dict_reports_both_splits() -> None:
    t = Trainer(tiny())
    t.train_step()
    m = evaluation_dict(t, 1.0)
    assert m["held_out"]["images"] == 18 and m["train"]["images"] == 18
    assert 0 < m["held_out"]["codebook_usage"] <= 1 and m["codebook_size"] == 32
    assert TrainConfig.from_dict(m["config"]) == t.cfg
