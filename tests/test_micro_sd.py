"""The micro Stable Diffusion model's parts and training (issue 8): the word-level tokenizer
(synonyms, unknown words), the two-stage trainer (deterministic, resumable, a standard
diffusers folder the generic loader reads), user folders as data, `genart train`, and the
quality judges calibrated on the procedural textures. Tiny shapes keep each test to
seconds; the shipped model's quality is tested in test_micro_quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genart_core.engines.sd.engine import unknown_words
from genart_core.engines.sd.loading import load_pipeline
from genart_core.micro import quality, sd
from genart_core.micro.data import caption_for, folder_dataset
from genart_core.micro.train_cli import main as train_main
from genart_core.micro.train_sd import SDTrainConfig, Trainer
from genart_core.micro.train_vqgan import find_checkpoint
from genart_core.textures import COLOURS, FAMILIES, render, vocabulary

TINY = sd.MicroSDConfig(
    text_hidden=32,
    text_heads=2,
    vae_channels=(8, 16, 16),
    unet_channels=(16, 16, 32),
    unet_groups=8,
    unet_head_dim=8,
    size=32,
)


def tiny(**kw: object) -> SDTrainConfig:
    base: dict[str, object] = {"ae_steps": 2, "ae_batch": 2, "batch": 4}
    return SDTrainConfig(model=TINY, **{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("tok")
    sd.write_tokenizer(folder)
    return sd.load_tokenizer(folder)


# --- tokenizer ---------------------------------------------------------------------------


def test_every_caption_word_is_one_token_and_synonyms_read_as_their_word(tok: object) -> None:
    ids = sd.token_ids()
    for w in vocabulary():
        assert tok(w, add_special_tokens=False).input_ids == [ids[w]]  # type: ignore[operator]
    for w, target in sd.SYNONYMS.items():
        assert tok(w, add_special_tokens=False).input_ids == [ids[target]], w  # type: ignore[operator]
    a = tok("Crimson BRICK wall!").input_ids  # type: ignore[operator]
    b = tok("red brick wall").input_ids  # type: ignore[operator]
    assert a == b == [0, ids["red"], ids["brick"], ids["wall"], 1]


def test_unknown_words_become_the_unknown_token_and_are_reported(tok: object) -> None:
    ids = tok("a photorealistic red brick wall, 8k").input_ids  # type: ignore[operator]
    unk = tok.unk_token_id  # type: ignore[attr-defined]
    assert ids.count(unk) == 2 and sd.token_ids()["red"] in ids
    assert unknown_words(tok, "a photorealistic red brick wall, 8k, photorealistic") == [
        "photorealistic",
        "8k",
    ]
    assert unknown_words(tok, "navy checker") == []


def test_a_bpe_clip_tokenizer_reports_no_unknown_words(tmp_path: Path) -> None:
    from sdtiny import tiny_tokenizer

    clip = tiny_tokenizer(tmp_path)
    assert unknown_words(clip, "a photorealistic red brick wall") == []


def test_synonyms_must_map_onto_trained_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sd.SYNONYMS, "azure", "cyan")
    with pytest.raises(ValueError, match="cyan"):
        sd.token_ids()


# --- training ----------------------------------------------------------------------------


def _run(cfg: SDTrainConfig, steps: int) -> list[float]:
    t = Trainer(cfg)
    return [t.train_step().loss for _ in range(steps)]


def test_both_stages_run_and_are_deterministic_in_the_seed() -> None:
    a = _run(tiny(), 4)
    b = _run(tiny(), 4)
    c = _run(tiny(seed=1), 4)
    assert a == pytest.approx(b, abs=1e-6)
    assert a != pytest.approx(c, abs=1e-3)


def test_the_autoencoder_stage_lowers_its_loss_and_sets_the_latent_scale() -> None:
    t = Trainer(tiny(ae_steps=30, ae_lr=3e-3))
    first = [t.train_step() for _ in range(5)]
    for _ in range(20):
        t.train_step()
    last = [t.train_step() for _ in range(5)]
    assert all(s.stage == "autoencoder" for s in first + last)
    assert np.mean([s.loss for s in last]) < 0.8 * np.mean([s.loss for s in first])
    assert t.vae.config.scaling_factor == 1.0
    t.cfg = tiny(ae_steps=t.step)  # switch stages now
    before = [p.detach().clone() for p in t.vae.parameters()]
    log = t.train_step()
    assert log.stage == "diffusion"
    assert t.vae.config.scaling_factor != 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, t.vae.parameters(), strict=True))


def test_captions_drop_and_gain_unknown_tokens_as_configured() -> None:
    t = Trainer(tiny(cond_drop=0.5, unk_prob=0.5))
    g = torch.Generator().manual_seed(0)
    ids = t._tokens(["red brick wall"] * 200, g)
    unk, eos = t.tokenizer.unk_token_id, t.tokenizer.eos_token_id
    dropped = (ids[:, 1] == eos).float().mean().item()
    with_unk = (ids == unk).any(dim=1).float().mean().item()
    assert 0.35 < dropped < 0.65
    assert 0.15 < with_unk < 0.4  # half of the captions not dropped
    assert ids.shape == (200, sd.MAX_TOKENS)


def test_checkpoint_is_a_pipeline_folder_that_resumes_exactly(tmp_path: Path) -> None:
    whole = _run(tiny(), 5)
    t = Trainer(tiny())
    for _ in range(3):
        t.train_step()
    t.save(tmp_path / "ck")
    assert find_checkpoint(tmp_path / "ck") is not None
    index = json.loads((tmp_path / "ck" / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    sched = json.loads((tmp_path / "ck" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["rescale_betas_zero_snr"] and sched["prediction_type"] == "v_prediction"
    resumed = Trainer.load(tmp_path / "ck")
    assert resumed.step == 3 and resumed.stage == "diffusion"
    rest = [resumed.train_step().loss for _ in range(2)]
    assert rest == pytest.approx(whole[3:], abs=1e-4)


def test_the_generic_loader_reads_a_checkpoint_and_generates(tmp_path: Path) -> None:
    t = Trainer(tiny())
    for _ in range(3):
        t.train_step()
    t.save(tmp_path / "ck")
    pipe = load_pipeline(str(tmp_path / "ck"), torch_dtype=torch.float32)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    out = pipe(
        "blue tiles",
        num_inference_steps=3,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_ema_is_what_the_exported_pipeline_holds() -> None:
    t = Trainer(tiny(ema=0.9))
    for _ in range(4):
        t.train_step()
    exported = t.exported()
    name, p = next(iter(t.unet.named_parameters()))
    q = dict(exported.unet.named_parameters())[name]
    assert torch.equal(q, t.ema[f"unet.{name}"]) and not torch.equal(q, p)
    assert Trainer(tiny(ema=0.0)).exported().unet is not None


# --- a user's folder ---------------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    Image.fromarray(render("bricks", "red", 48, 1)).save(d / "red_bricks_01.png")
    Image.fromarray(render("dots", "blue", 40, 2)).save(d / "sky-dots.jpg")
    (d / "sky-dots.txt").write_text("Blue   glitter dots\n")
    (d / "notes.md").write_text("not an image")
    return d


def test_a_folder_gives_crops_with_captions_from_files_and_names(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    assert caption_for(d / "red_bricks_01.png") == "red bricks"
    assert caption_for(d / "sky-dots.jpg") == "Blue glitter dots"
    ds = folder_dataset(d, 32, seed=0)
    samples = [ds[i] for i in range(4)]
    assert {s.caption for s in samples} == {"red bricks", "Blue glitter dots"}
    assert all(s.image.shape == (32, 32, 3) for s in samples)
    again = folder_dataset(d, 32, seed=0)
    assert all(np.array_equal(again[i].image, samples[i].image) for i in range(4))
    assert "glitter" in ds.words()


def test_training_on_a_folder_adds_its_words_to_the_tokenizer(tmp_path: Path) -> None:
    t = Trainer(tiny(data=str(_folder(tmp_path))))
    ids = t.tokenizer("glitter", add_special_tokens=False).input_ids
    assert ids != [t.tokenizer.unk_token_id]
    assert t.text.config.vocab_size > max(sd.token_ids().values())
    t.train_step()


def test_a_folder_without_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert train_main(["diffusion", "--out", str(tmp_path / "o"), "--steps", "1",
                       "--data", str(tmp_path / "empty")]) == 2  # fmt: skip


def test_genart_train_diffusion_runs_resumes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from genart_core.cli import main as genart

    out = tmp_path / "m"
    args = ["train", "diffusion", "--out", str(out), "--ae-steps", "2", "--batch", "2",
            "--ae-batch", "2", "--unet-channels", "16,16,32", "--log-every", "1",
            "--eval-seeds", "1", "--eval-images", "18"]  # fmt: skip
    assert genart([*args, "--steps", "2"]) == 0
    assert "quality" not in json.loads((out / "metrics.json").read_text())  # no UNet yet
    assert genart([*args, "--steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "step 3/3 diffusion" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["held_out"]["images"] == 18
    assert metrics["held_out"]["psnr_db"] > 0
    q = metrics["quality"]
    assert q["seeds"] == 1 and len(q["prompts"]) == 18
    assert 0.0 <= q["colour_pass_held_out"] <= 1.0
    assert (tmp_path / "m-samples.png").is_file()


# --- the quality judges ------------------------------------------------------------------


def test_the_colour_judge_is_right_on_procedural_textures() -> None:
    judge = quality.ColourJudge(n=6)
    assert quality.judge_accuracy(judge, n=2) >= 0.97
    # and it can fail: a red texture is not judged blue
    assert judge(render("bricks", "red", 64, 99), "bricks") == "red"
    assert judge(render("bricks", "blue", 64, 99), "bricks") != "red"


def test_peakiness_separates_periodic_from_irregular_families() -> None:
    ref = quality.reference_peakiness(n=4)
    for periodic in ("stripes", "bricks", "checker"):
        for irregular in ("clouds", "marble", "stone"):
            assert ref[periodic] > 1.5 * ref[irregular], (periodic, irregular)
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert quality.peakiness(flat) == 0.0


def test_seen_pairs_are_trained_and_cover_every_family() -> None:
    pairs = quality.seen_pairs()
    assert [f for _, f in pairs] == list(FAMILIES)
    assert all(c in COLOURS for c, _ in pairs)
    from genart_core.textures import HELD_OUT

    assert not set(pairs) & HELD_OUT
