"""The VQGAN family on tiny real models (random weights, built from configs): the `vqgan`
round trip, VQGAN+CLIP (`optimise` in-process, `vqgan_clip` through a sidecar), aMUSEd,
and the taming → diffusers converter checked against a re-implementation of taming's
VQGAN module layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SidecarProcess
from safetensors.torch import save_file
from torch import nn
from vqtiny import build_tiny_amused, build_tiny_clip, build_tiny_vqgan

from genart_core.engines.vqgan.loading import load_clip, load_vqmodel
from genart_core.engines.vqgan.optimise import optimise, vector_quantize
from genart_core.protocol import Attachment, Client, Event
from genart_core.protocol.errors import InvalidParams, JobCancelled


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vqmodels")
    return {
        "vq": str(build_tiny_vqgan(root / "vq")),
        "clip": str(build_tiny_clip(root / "clip")),
        "amused": str(build_tiny_amused(root)),
    }


def arr(name: str, a: np.ndarray, color_space: str = "srgb") -> Attachment:
    a = np.ascontiguousarray(a)
    return Attachment.array(name, a, str(a.dtype), a.shape, color_space)


def render(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGBA test image (gradients and a square), not noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y + seed)], axis=2)
    rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (0.9, 0.2, 0.1)
    a = np.concatenate([rgb, np.ones((h, w, 1))], axis=2)
    return (a * 255).astype(np.uint8)


def run(
    client: Client,
    engine: str,
    task: str,
    params: dict,
    inputs: dict | None = None,
    events: list[Event] | None = None,
) -> dict[str, np.ndarray]:
    job = client.submit(engine, params, task=task, inputs=inputs)
    client.wait(job, events.append if events is not None else None, timeout=120)
    out = {}
    for name, att in client.result(job).attachments.items():
        assert att.shape is not None and att.dtype is not None
        out[name] = np.frombuffer(att.data, np.dtype(att.dtype)).reshape(att.shape).copy()
    return out


# -- through a real sidecar -----------------------------------------------------------


@pytest.mark.process
class TestThroughTheSidecar:
    def test_handshake(self, sidecar: SidecarProcess) -> None:
        with sidecar.connect() as c:
            engines = {e["name"]: e for e in c.welcome["engines"]}
        assert engines["vqgan"]["tasks"] == ["img2img", "reconstruct"]
        assert engines["vqgan_clip"]["tasks"] == ["txt2img", "img2img", "sequence"]
        assert engines["amused"]["tasks"] == ["txt2img"]
        clip = engines["vqgan_clip"]
        assert "artistic" in clip["help"] and "56×" in clip["help"] and "SD 1.5" in clip["help"]
        assert "depth" in clip["inputs"] and "depth_weight" in clip["help"]

    def test_round_trip_sizes_and_pixels(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        with sidecar.connect() as c:
            for task, (h, w), extra, want in [
                ("reconstruct", (23, 37), {}, (23, 37)),  # 0: the input's size
                ("img2img", (23, 37), {"width": 51, "height": 29}, (29, 51)),
                ("reconstruct", (40, 40), {"width": 9, "height": 77}, (77, 9)),
                ("reconstruct", (20, 30), {"width": 45}, (30, 45)),  # the input's aspect
            ]:
                out = run(
                    c,
                    "vqgan",
                    task,
                    {"model": models["vq"], **extra},
                    {"image": arr("image", render(h, w))},
                )
                assert out["image"].shape == (*want, 4), (task, extra)
                assert (out["image"][..., 3] == 255).all()
                assert out["image"][..., :3].std() > 1.0
            # At a size the VQGAN takes as is (a multiple of its 4× downsampling) the result
            # is exactly the model's own encode → quantise → decode.
            src = render(32, 48)
            out = run(
                c, "vqgan", "reconstruct", {"model": models["vq"]}, {"image": arr("image", src)}
            )
        vq = load_vqmodel(models["vq"])
        x = torch.from_numpy(src[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            h = vq.encode(x * 2 - 1).latents
            _, _, (_, _, codes) = vq.quantize(h)
            ref = vq.decode(h).sample[0].add(1).div(2).clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.array_equal(out["codes"], codes.view(8, 12).numpy().astype(np.int32))
        expected = np.clip(ref * 255 + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(out["image"][..., :3].astype(int) - expected).max() <= 1

    def test_vqgan_clip_sizes_progress_previews_and_seed(
        self, sidecar: SidecarProcess, models: dict[str, str]
    ) -> None:
        base = {
            "model": models["vq"],
            "clip_model": models["clip"],
            "prompt": "a red brick wall",
            "iterations": 4,
            "cutn": 2,
            "preview_every": 2,
        }
        depth = np.full((21, 30), np.inf, np.float32)
        depth[5:15, 8:20] = 2.0
        with sidecar.connect() as c:
            events: list[Event] = []
            img = run(c, "vqgan_clip", "txt2img", {**base, "width": 45, "height": 27}, None, events)
            assert img["image"].shape == (27, 45, 4)
            steps = [e.data["step"] for e in events if e.type == "progress"]
            assert steps == [0, 1, 2, 3, 4], steps  # every iteration
            assert [e.attachment.shape for e in events if e.type == "preview"]
            img = run(
                c,
                "vqgan_clip",
                "img2img",
                {**base, "width": 30, "height": 21, "near": 1.0, "far": 10.0, "init_weight": 1.0},
                {"image": arr("image", render(21, 30)), "depth": arr("depth", depth, "linear")},
            )
            assert img["image"].shape == (21, 30, 4)
            small = {**base, "iterations": 3, "width": 32, "height": 32, "preview_every": 0}
            a = run(c, "vqgan_clip", "txt2img", {**small, "seed": 7})["image"]
            b = run(c, "vqgan_clip", "txt2img", {**small, "seed": 7})["image"]
            other = run(c, "vqgan_clip", "txt2img", {**small, "seed": 8})["image"]
        assert np.array_equal(a, b)
        assert not np.array_equal(a, other)

    def test_amused_txt2img(self, sidecar: SidecarProcess, models: dict[str, str]) -> None:
        with sidecar.connect() as c:
            events: list[Event] = []
            params = {
                "model": models["amused"],
                "prompt": "blue sky",
                "width": 50,
                "height": 30,
                "steps": 4,
                "preview_every": 2,
            }
            img = run(c, "amused", "txt2img", params, None, events)["image"]
            again = run(c, "amused", "txt2img", params)["image"]
        assert img.shape == (30, 50, 4) and img[..., :3].std() > 0
        assert np.array_equal(img, again)
        assert [e.data["step"] for e in events if e.type == "progress"] == [0, 1, 2, 3, 4]
        assert any(e.type == "preview" for e in events)

    @pytest.mark.parametrize(
        ("engine", "task", "params", "inputs", "field"),
        [
            ("vqgan", "reconstruct", {"model": ""}, {"image": (8, 8, 4)}, "params.model"),
            ("vqgan", "img2img", {}, {}, "inputs.image"),
            ("vqgan", "img2img", {}, {"mask": (8, 8)}, "inputs.mask"),
            (
                "vqgan",
                "reconstruct",
                {"model": "/nowhere/vq.safetensors"},
                {"image": (8, 8, 4)},
                "params.model",
            ),
            (
                "vqgan",
                "reconstruct",
                {"width": 5000, "height": 5000, "max_pixels": 10**6},
                {"image": (8, 8, 4)},
                "params.width",
            ),
            (
                "vqgan",
                "reconstruct",
                {"max_work_pixels": 1},
                {"image": (8, 8, 4)},
                "params.max_work_pixels",
            ),
            ("vqgan_clip", "txt2img", {"prompt": ""}, {}, "params.prompt"),
            ("vqgan_clip", "txt2img", {"clip_model": ""}, {}, "params.clip_model"),
            ("vqgan_clip", "txt2img", {"clip_model": "VQ"}, {}, "params.clip_model"),
            ("vqgan_clip", "txt2img", {"cutn": 0}, {}, "params.cutn"),
            ("vqgan_clip", "txt2img", {"lr": 2.0}, {}, "params.lr"),
            ("vqgan_clip", "img2img", {}, {}, "inputs.image"),
            ("vqgan_clip", "txt2img", {}, {"depth": (8, 8)}, "inputs.depth"),
            (
                "vqgan_clip",
                "img2img",
                {"near": 5.0, "far": 1.0},
                {"image": (8, 8, 4), "depth": (8, 8)},
                "params.near",
            ),
            ("amused", "txt2img", {"model": ""}, {}, "params.model"),
            ("amused", "txt2img", {"model": "VQ"}, {}, "params.model"),
        ],
    )
    def test_bad_requests_name_the_field(
        self,
        sidecar: SidecarProcess,
        models: dict[str, str],
        engine: str,
        task: str,
        params: dict,
        inputs: dict,
        field: str,
    ) -> None:
        p = {"model": models["vq"], **params}
        if engine == "vqgan_clip":
            p = {"clip_model": models["clip"], "prompt": "sky", "iterations": 1, **p}
        p = {k: models["vq"] if v == "VQ" else v for k, v in p.items()}
        atts = {
            k: arr(k, np.ones(s, np.float32) if k == "depth" else np.zeros(s, np.uint8))
            for k, s in inputs.items()
        }
        with sidecar.connect() as c, pytest.raises(InvalidParams) as exc:
            run(c, engine, task, p, atts)
        assert exc.value.field == field, exc.value

    def test_pickle_vqgans_are_refused_with_the_way_out(
        self, sidecar: SidecarProcess, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "vqgan.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
        with sidecar.connect() as c, pytest.raises(InvalidParams) as exc:
            run(
                c,
                "vqgan",
                "reconstruct",
                {"model": str(ckpt)},
                {"image": arr("image", render(8, 8))},
            )
        assert exc.value.field == "params.model"
        assert "pickle" in exc.value.message and "genart convert taming" in exc.value.message

    def test_cancel_mid_optimisation(self, sidecar: SidecarProcess, models: dict[str, str]) -> None:
        params = {
            "model": models["vq"],
            "clip_model": models["clip"],
            "prompt": "green stone",
            "iterations": 5000,
            "width": 64,
            "height": 64,
        }
        with sidecar.connect() as c:
            job = c.submit("vqgan_clip", params, task="txt2img")
            seen: list[Event] = []
            while not any(e.type == "progress" and e.data["step"] >= 3 for e in seen):
                ev = c.next_event(timeout=60)
                assert ev is not None
                seen.append(ev)
            at_cancel = max(e.data["step"] for e in seen if e.type == "progress")
            c.cancel(job)
            with pytest.raises(JobCancelled):
                c.wait(job, seen.append, timeout=30)
            # Within one iteration (a report may already be on its way), whatever the load.
            assert max(e.data["step"] for e in seen if e.type == "progress") <= at_cancel + 2
            assert c.events(job)[-1].data.get("worker_restarted") is None  # it yielded


# -- VQGAN+CLIP in-process ------------------------------------------------------------


def test_optimise_lowers_the_clip_loss(models: dict[str, str]) -> None:
    vq, clip = load_vqmodel(models["vq"]), load_clip(models["clip"])
    result = optimise(vq, clip, "a blue marble", width=48, height=32, iterations=30, cutn=1)
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < losses[0] - 0.1, losses
    assert result.image.shape == (32, 48, 3) and result.codes.shape == (8, 12)
    # The codes are the image: decoding them gives the returned pixels.
    zq = vq.quantize.embedding(torch.from_numpy(result.codes)[None]).movedim(3, 1)
    with torch.no_grad():
        again = vq.decode(zq, force_not_quantize=True).sample.add(1).div(2).clamp(0, 1)
    assert np.allclose(again[0].permute(1, 2, 0).numpy(), result.image, atol=1e-5)
    # Nothing of the shared models was left trainable or changed.
    assert all(p.requires_grad for p in vq.parameters())  # from_pretrained's default


def test_pixel_weight_gates_the_prompt(models: dict[str, str]) -> None:
    """Weight 0 everywhere: the prompt sends no gradient, so the result does not depend on
    it (and the codes stay those of the init image); weight 1: it does."""
    vq, clip = load_vqmodel(models["vq"]), load_clip(models["clip"])
    init = render(32, 32)[..., :3].astype(np.float32) / 255.0
    common = {"width": 32, "height": 32, "iterations": 8, "cutn": 2, "init_image": init}
    zero = np.zeros((32, 32), np.float32)
    a = optimise(vq, clip, "red brick", weight=zero, **common)
    b = optimise(vq, clip, "blue sky", weight=zero, **common)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.image, b.image)
    c = optimise(vq, clip, "red brick", weight=zero + 1, **common)
    d = optimise(vq, clip, "blue sky", weight=zero + 1, **common)
    assert not np.array_equal(c.codes, d.codes)


# -- taming → diffusers ---------------------------------------------------------------
# A faithful re-implementation of taming-transformers' VQGAN (taming/models/vqgan.py,
# taming/modules/diffusionmodules/model.py, taming/modules/vqvae/quantize.py): the same
# module tree and attribute names, so its state dict has taming's keys, and the same
# forward passes, so the converted diffusers model must compute the same numbers.


def _normalize(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _normalize(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = _normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, 1, 1, 0)
        self.k = nn.Conv2d(in_channels, in_channels, 1, 1, 0)
        self.v = nn.Conv2d(in_channels, in_channels, 1, 1, 0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = torch.nn.functional.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c)
    mid.attn_1 = AttnBlock(c)
    mid.block_2 = ResnetBlock(c, c)
    return mid


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        ch,
        out_ch,
        ch_mult,
        num_res_blocks,
        attn_resolutions,
        in_channels,
        resolution,
        z_channels,
        double_z=False,
        **ignore,
    ) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        curr_res, in_ch_mult = resolution, (1, *ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = _mid(block_in)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1])
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1])))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch,
        out_ch,
        ch_mult,
        num_res_blocks,
        attn_resolutions,
        in_channels,
        resolution,
        z_channels,
        **ignore,
    ) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):  # taming's VectorQuantizer2, legacy
    def __init__(self, n_e: int, e_dim: int, beta: float) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        d = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(self.embedding.weight**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, self.embedding.weight.t())
        )
        indices = torch.argmin(d, dim=1)
        z_q = self.embedding(indices).view(z.shape)
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), indices

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return self.embedding(indices).view(shape).permute(0, 3, 1, 2).contiguous()


class TamingVQModel(nn.Module):
    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = nn.Module()  # training only: LPIPS + discriminator (a stand-in here)
        self.loss.discriminator = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1))
        self.loss.logvar = nn.Parameter(torch.zeros(()))
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        b, h, w = codes.shape
        quant = self.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, self.quantize.e_dim))
        return self.decoder(self.post_quant_conv(quant))


DDCONFIG = {
    "double_z": False,
    "z_channels": 8,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],  # the middle level only: catches level-order mistakes
    "dropout": 0.0,
}
YAML = """model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 64
    ddconfig:
      double_z: false
      z_channels: 8
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 1, 2]
      num_res_blocks: 1
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_conditional: false, disc_in_channels: 3, disc_start: 10000}
"""


def _taming_model() -> TamingVQModel:
    torch.manual_seed(3)
    model = TamingVQModel(DDCONFIG, n_embed=64, embed_dim=8).eval()
    with torch.no_grad():  # random everything, norms and codebook included
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
        model.quantize.embedding.weight.normal_(0.0, 1.0)
    return model


def convert_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`genart convert ...` with a connection file that leads nowhere: no sidecar needed."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "genart_core.cli",
            "--connection-file",
            "/nonexistent/c.json",
            "convert",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_taming_checkpoints_convert_to_identical_outputs(tmp_path: Path) -> None:
    taming = _taming_model()
    state = taming.state_dict()
    assert "encoder.down.1.attn.0.q.weight" in state and "loss.logvar" in state
    assert not any(k.startswith("encoder.down.0.attn") for k in state)
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "last.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vqgan.safetensors"))
    (tmp_path / "model.yaml").write_text(YAML)

    res = convert_cli(
        "taming",
        str(tmp_path / "last.ckpt"),
        str(tmp_path / "a"),
        "--config",
        str(tmp_path / "model.yaml"),
    )
    assert res.returncode == 0, res.stderr
    assert "64 codes" in res.stdout
    res = convert_cli("taming", str(tmp_path / "vqgan.safetensors"), str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr

    # float64 on both sides: float32 rounding (up to ~6e-6 here) would eat the margin.
    taming = taming.double()
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    codes = torch.randint(64, (2, 8, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_h = taming.encode_pre(x)
        _, want_codes = taming.quantize(want_h)
        want_dec = taming.decode_code(codes)
        # From the converted folders (YAML config, shapes config) and straight from the
        # taming .safetensors as the engines load it.
        for ref in (tmp_path / "a", tmp_path / "b", tmp_path / "vqgan.safetensors"):
            vq = load_vqmodel(str(ref)).double()
            h = vq.encode(x).latents
            assert torch.allclose(h, want_h, atol=1e-5), (ref, (h - want_h).abs().max())
            _, _, (_, _, got_codes) = vq.quantize(h)
            assert torch.equal(got_codes.view(-1), want_codes.view(-1))
            zq = vq.quantize.get_codebook_entry(codes.reshape(-1), (2, 8, 12, 8))
            dec = vq.decode(zq, force_not_quantize=True).sample
            assert torch.allclose(dec, want_dec, atol=1e-5), (ref, (dec - want_dec).abs().max())
            # The optimiser's own quantiser agrees with both.
            assert torch.equal(
                vector_quantize(h, vq.quantize.embedding.weight)[1].view(-1), got_codes.view(-1)
            )
    assert want_dec.abs().max() > 0.1  # not a degenerate, all-zero network


def test_convert_refuses_what_it_cannot_map(tmp_path: Path) -> None:
    state = _taming_model().state_dict()
    bad = dict(state)
    bad["encoder.down.0.block.0.temb_proj.weight"] = torch.zeros(32, 4)  # not in a VQGAN
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "extra.safetensors"))
    res = convert_cli("taming", str(tmp_path / "extra.safetensors"), str(tmp_path / "x"))
    assert res.returncode == 2 and "temb_proj" in res.stderr and "Traceback" not in res.stderr
    wrong = YAML.replace("ch_mult: [1, 1, 2]", "ch_mult: [1, 2, 2]")
    (tmp_path / "wrong.yaml").write_text(wrong)
    torch.save({"state_dict": state}, tmp_path / "m.ckpt")
    res = convert_cli(
        "taming",
        str(tmp_path / "m.ckpt"),
        str(tmp_path / "y"),
        "--config",
        str(tmp_path / "wrong.yaml"),
    )
    assert res.returncode == 2 and "--config" in res.stderr and "wrong shape" in res.stderr
    res = convert_cli("taming", str(tmp_path / "none.ckpt"), str(tmp_path / "z"))
    assert res.returncode == 2 and "source" in res.stderr
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))
