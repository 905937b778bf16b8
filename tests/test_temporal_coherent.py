"""The coherence mechanisms (issue 9) on the synthetic moving square of
test_temporal_flow: what each switch does to the init image, the noise and the output,
and that a flickering per-frame "stylizer" flickers less through them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_temporal_flow import scene

from genart_core.temporal.coherent import Coherence, Frame, Previous, Step, finish, prepare
from genart_core.temporal.flow import warping_error


def frames_of(s: dict) -> list[Frame]:
    return [Frame(v, i, d) for v, i, d in zip(s["vectors"], s["ids"], s["depths"], strict=True)]


def test_the_first_frame_is_the_render_with_fresh_noise() -> None:
    s = scene(1, (4, 0))
    step = prepare(Coherence(0.5, True, 0.5), s["frames"][0], frames_of(s)[0], None,
                   latent_shape=(4, 12, 16))  # fmt: skip
    assert step.init is s["frames"][0] and step.warped is None
    assert step.noise is not None and step.noise.shape == (4, 12, 16)


def test_init_blend_uses_the_warped_previous_output_where_valid_only() -> None:
    s = scene(2, (4, 0))
    f = frames_of(s)
    stylized0 = 255 - s["frames"][0]  # any picture of frame 0
    step = prepare(Coherence(init_blend=1.0), s["frames"][1], f[1], Previous(stylized0, f[0]))
    assert step.valid is not None and 0.8 < step.valid_share < 1.0
    on_square = (s["ids"][1] == 2) & step.valid
    expected = 255 - s["frames"][1]  # the square moved, so its inverted pixels moved too
    assert np.abs(step.init[on_square].astype(int) - expected[on_square]).max() <= 1
    assert np.array_equal(step.init[~step.valid], s["frames"][1][~step.valid])


def test_anchored_noise_follows_the_surface_and_stays_gaussian() -> None:
    s = scene(2, (8, 0))  # 2 latent cells at factor 4
    f = frames_of(s)
    shape = (4, 12, 16)
    prev_noise = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    step = prepare(Coherence(anchored_noise=True), s["frames"][1], f[1],
                   Previous(s["frames"][0], f[0], prev_noise), latent_shape=shape,
                   rng=np.random.default_rng(2))  # fmt: skip
    assert step.noise is not None
    # the square's latent cells (rows 10..25 px -> cells 3..5, cols 16..31 -> 4..7 at t=1)
    # carry the noise its cells had at t=0, two cells to the left
    assert np.array_equal(step.noise[:, 3:6, 5:7], prev_noise[:, 3:6, 3:5])
    # static background far from the square keeps its noise in place
    assert np.array_equal(step.noise[:, 9:, 10:], prev_noise[:, 9:, 10:])
    # the uncovered cells (the square's old place) get fresh noise
    assert not np.array_equal(step.noise[:, 3:6, 2:4], prev_noise[:, 3:6, 2:4])
    assert 0.8 < step.noise.std() < 1.2


def test_post_blend_mixes_only_valid_pixels() -> None:
    s = scene(2, (4, 0))
    f = frames_of(s)
    step = prepare(Coherence(post_blend=0.5), s["frames"][1], f[1],
                   Previous(np.zeros_like(s["frames"][0]), f[0]))  # fmt: skip
    out = finish(Coherence(post_blend=0.5), np.full_like(s["frames"][1], 200), step)
    assert step.valid is not None
    assert (out[step.valid] == 100).all() and (out[~step.valid] == 200).all()


def test_a_guided_post_blend_skips_what_the_render_itself_changed() -> None:
    """guided > 0: where the render changed beyond the moving square's own motion (a
    highlight appearing on it), the output is the frame's own; where the render only
    moved, the history is blended as before."""
    s = scene(2, (4, 0))
    f = frames_of(s)
    render = s["frames"][1].copy()
    lit = (s["ids"][1] == 2) & (np.indices(s["ids"][1].shape)[1] % 8 < 4)
    render[lit] = ((render[lit].astype(int) + 128) % 256).astype(np.uint8)  # a change of 128
    history = np.zeros_like(s["frames"][0])
    cfg = Coherence(post_blend=0.5, guided=16.0)
    prev = Previous(history, f[0], render=s["frames"][0])
    step = prepare(cfg, render, f[1], prev)
    out = finish(cfg, np.full_like(render, 200), step)
    assert step.valid is not None and step.weight is not None
    moved_only = step.valid & ~lit & (s["ids"][1] == 2)
    assert (out[step.valid & lit] >= 199).all()  # the render changed: the frame's own
    assert (out[moved_only] <= 101).all()  # it only moved: blended as before
    unguided = prepare(Coherence(post_blend=0.5), render, f[1], prev)
    assert unguided.weight is None


def test_a_coarse_post_blend_keeps_the_frames_own_fine_detail() -> None:
    """post_radius > 0 blends only the local mean of the difference: a fine checker in the
    output survives a blend of 1.0 with a flat history, moved to the history's level."""
    h, w = 32, 32
    fine = np.where((np.indices((h, w)).sum(axis=0) % 2)[..., None], 140, 60) * np.ones(3)
    valid = np.ones((h, w), bool)
    valid[:, :4] = False
    step = Step(np.full((h, w, 3), 180.0, np.float32), valid, fine.astype(np.uint8), None, 0.9)
    flat = finish(Coherence(post_blend=1.0), fine.astype(np.uint8), step)
    kept = finish(Coherence(post_blend=1.0, post_radius=2), fine.astype(np.uint8), step)
    inner = np.s_[4:-4, 8:-4]  # away from the borders and the invalid strip
    assert np.ptp(flat[inner]) == 0 and flat[inner].mean() == 180  # the detail is gone
    assert np.ptp(kept[inner]) >= 70 and abs(kept[inner].mean() - 180) < 2  # kept, moved
    assert (kept[:, :4] == fine[:, :4]).all()  # invalid pixels are the frame's own


def test_a_flickering_stylizer_flickers_less_through_coherence() -> None:
    s = scene(8, (3, 1))
    f = frames_of(s)
    rng = np.random.default_rng(0)

    def stylize(init: np.ndarray) -> np.ndarray:  # a colour shift that changes every call
        return np.clip(init.astype(int) // 2 + rng.integers(0, 60, 3), 0, 255).astype(np.uint8)

    def run(cfg: Coherence) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        prev = None
        for t in range(8):
            step = prepare(cfg, s["frames"][t], f[t], prev)
            o = finish(cfg, stylize(step.init), step)
            out.append(o)
            prev = Previous(o, f[t])
        return out

    naive = warping_error(run(Coherence()), s["vectors"], ids=s["ids"]).mean
    coherent = warping_error(run(Coherence(post_blend=0.8)), s["vectors"], ids=s["ids"]).mean
    assert coherent < naive / 3, (coherent, naive)


def test_previous_inputs_win_over_the_jobs_previous_frame(tmp_path: Path) -> None:
    """A client sends `previous_image` + `previous_passes` when frame t−1 is not the job's
    previous frame (up-to-date frames skipped between, a render frame by frame): those are
    used, not the job's committed frame before it; without them the job's frame is used."""
    from PIL import Image

    from genart_core.engines.base import Input, PreviousFrame, RunContext
    from genart_core.engines.sd import coherence
    from genart_core.imaging.passes import write_passes

    def frame_files(name: str, value: int) -> tuple[Input, Input]:
        Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
        write_passes(tmp_path / f"{name}.exr", {"vector": np.zeros((6, 8, 4))})
        image = Input("image", "blob", tmp_path / f"{name}.png", encoding="png")
        return image, Input("passes", "blob", tmp_path / f"{name}.exr", encoding="exr")

    job_image, job_passes = frame_files("job", 10)
    disk_image, disk_passes = frame_files("disk", 200)
    job_render, _ = frame_files("job-render", 30)
    Image.fromarray(np.full((6, 8), 77, np.uint8)).save(tmp_path / "grey.png")  # a BW render
    disk_render = Input("previous_render", "blob", tmp_path / "grey.png", encoding="png")
    ctx = RunContext("j", 5, 9, 0)
    ctx.previous = PreviousFrame({"passes": job_passes, "image": job_render}, {"image": job_image})
    given = {"previous_image": disk_image, "previous_passes": disk_passes}
    from_disk = coherence.previous(ctx, (8, 6), given)
    assert int(from_disk.stylized.mean()) == 200 and from_disk.render is None
    with_render = coherence.previous(ctx, (8, 6), {**given, "previous_render": disk_render})
    assert with_render.render.shape == (6, 8, 3) and int(with_render.render.mean()) == 77
    from_job = coherence.previous(ctx, (8, 6))
    assert int(from_job.stylized.mean()) == 10 and int(from_job.render.mean()) == 30
    assert coherence.previous(RunContext("j", 0, 9, 0), (8, 6)) is None
