"""Cross-frame attention (issue 9, `engines/sd/crossframe`) on a real diffusers UNet: what
a frame records, that attending to a frame's own recording changes nothing (identical
keys and values only duplicate), that other anchors do change the output, that the
UNet's processors come back, and when a frame may use the previous frame's recording."""

from __future__ import annotations

import pytest
import torch
from sdtiny import build_tiny_sd

from genart_core.engines.sd import crossframe


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    folder = build_tiny_sd(tmp_path_factory.mktemp("sd"))
    return UNet2DConditionModel.from_pretrained(folder / "unet").eval()


def call(unet: torch.nn.Module, x: torch.Tensor, steps: int = 2) -> list[torch.Tensor]:
    text = torch.randn(x.shape[0], 8, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return [unet(x, torch.tensor([900 - 400 * i]), text).sample for i in range(steps)]


def self_attention_layers(unet: torch.nn.Module) -> list[str]:
    return [n for n in unet.attn_processors if n.endswith("attn1.processor")]


def test_a_frame_records_every_self_attention_layer_at_every_step(unet: torch.nn.Module) -> None:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with crossframe.cross_frame(unet, []) as recorded:
        call(unet, x, steps=3)
    layers = self_attention_layers(unet)
    assert layers
    assert set(recorded) == {(n, s) for n in layers for s in range(3)}
    assert all(h.shape[0] == 2 and h.ndim == 3 for h in recorded.values())


def test_own_anchors_change_nothing_and_other_anchors_do(unet: torch.nn.Module) -> None:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    other = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    plain = call(unet, x)
    with crossframe.cross_frame(unet, []) as own:
        assert all(torch.equal(a, b) for a, b in zip(call(unet, x), plain, strict=True))
    with crossframe.cross_frame(unet, []) as theirs:
        call(unet, other)
    with crossframe.cross_frame(unet, [own]):
        same = call(unet, x)
    with crossframe.cross_frame(unet, [theirs]):
        changed = call(unet, x)
    for a, b in zip(same, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(changed, plain, strict=True))


def test_the_processors_come_back_even_after_a_failure(unet: torch.nn.Module) -> None:
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError), crossframe.cross_frame(unet, []):
        raise RuntimeError("cancelled mid-frame")
    assert dict(unet.attn_processors) == before
    assert not unet._forward_pre_hooks


def test_a_frame_uses_the_previous_frame_of_its_own_job_only() -> None:
    jobs: dict[str, crossframe.Anchors] = {}
    key = ("m", 64, 48, 20, 0.4, 7.5)
    first, second = {("a", 0): torch.zeros(1)}, {("a", 0): torch.ones(1)}
    assert crossframe.anchors_for(jobs, "j", 0, key) == ([], "")
    crossframe.remember(jobs, "j", 0, key, first)
    anchors, note = crossframe.anchors_for(jobs, "j", 1, key)
    assert anchors == [first] and not note  # the first frame is also the previous one
    crossframe.remember(jobs, "j", 1, key, second)
    anchors, note = crossframe.anchors_for(jobs, "j", 2, key)
    assert anchors[0] is first and anchors[1] is second and not note
    # a gap (frame 2 never ran here: a worker restart) or changed settings: none, and a note
    for job, frame, k in (("j", 3, key), ("j", 2, ("m", 64, 48, 30, 0.4, 7.5)), ("k", 5, key)):
        anchors, note = crossframe.anchors_for(jobs, job, frame, k)
        assert anchors == [] and "was not recorded" in note
    # after the gap the frame starts over as its own first frame
    crossframe.remember(jobs, "j", 4, key, second)
    assert crossframe.anchors_for(jobs, "j", 5, key)[0] == [second]
    for n in range(crossframe.KEEP + 1):  # older jobs are let go
        crossframe.remember(jobs, f"other{n}", 0, key, first)
    assert "j" not in jobs and len(jobs) == crossframe.KEEP
