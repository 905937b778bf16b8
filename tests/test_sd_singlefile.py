"""Offline single-file loading (genart_core.engines.sd.singlefile) on the real architectures.

No pretrained weights exist on these machines, so each test writes a genuine A1111-style
single-file checkpoint for the real SD 1.5 / SD 2.1-v / SDXL base / SD 1.5 ControlNet v1.1
architecture: every tensor of the original (LDM) layout with its real name, shape and fp16
dtype, produced by inverting diffusers' own key conversion. To stay cheap the file is sparse:
large tensors are zero (holes on disk), small ones random, and a few chosen weights are
planted with random values whose round trip through `load_single_file` is checked. Before
writing, diffusers' forward conversion is run on the layout (on the meta device) to prove it
yields exactly the keys and shapes of the diffusers models, so no parameter is left to
random initialisation by the non-strict load. That proof is what allows the one test-only
economy, `cheap_construction`: the models diffusers builds before copying the file in are not
randomly initialised (transformers' `no_init_weights`), and SDXL's are built in float16 so the
test fits in 24 GB. The loading code itself runs unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from genart_core.engines.sd import singlefile
from genart_core.protocol.errors import InvalidParams

CONFIGS = singlefile.CONFIGS
PROMPT = "a photo of a red brick wall"
PROMPT_IDS = [49406, 320, 1125, 539, 320, 736, 9518, 2569, 49407]  # OpenAI CLIP's ids
DTYPES = {torch.float16: ("F16", 2), torch.float32: ("F32", 4), torch.int64: ("I64", 8)}
SMALL = 1 << 16  # tensors up to this many elements get random values; larger ones are zero

# ---------------------------------------------------------------------------------------
# diffusers key -> original (LDM / A1111) key: the inverse of diffusers' single_file_utils.

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_mid_block": "middle_block_out.0",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _res(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def unet_key(k: str, keys: list[str], lpb: int = 2) -> str:
    """UNet or ControlNet key (diffusers) -> LDM key (without model.diffusion_model.)."""
    for d, ldm in _UNET_TOP.items():
        if k.startswith(d + "."):
            return ldm + k[len(d) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
        i = 1 + int(m[1]) * (lpb + 1) + int(m[3])
        return (
            f"input_blocks.{i}.0.{_res(m[4])}"
            if m[2] == "resnets"
            else f"input_blocks.{i}.1.{m[4]}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k):
        return f"middle_block.{2 * int(m[1])}.{_res(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
        i = int(m[1]) * (lpb + 1) + int(m[3])
        return (
            f"output_blocks.{i}.0.{_res(m[4])}"
            if m[2] == "resnets"
            else f"output_blocks.{i}.1.{m[4]}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k):
        b = int(m[1])
        attn = any(x.startswith(f"up_blocks.{b}.attentions.") for x in keys)
        return f"output_blocks.{b * (lpb + 1) + lpb}.{2 if attn else 1}.conv.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", k):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", k):
        n = len(
            {x.split(".")[2] for x in keys if x.startswith("controlnet_cond_embedding.blocks.")}
        )
        return f"input_hint_block.{2 * (n + 1)}.{m[1]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", k):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    raise KeyError(k)


def vae_key(k: str, n_up: int = 4) -> tuple[str, str]:
    """VAE key -> (LDM key without first_stage_model., transform)."""
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", k):
        return f"{m[1]}.norm_out.{m[2]}", "same"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
        return (
            f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}",
            "same",
        )
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", "same"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
        rest = m[3].replace("conv_shortcut", "nin_shortcut")
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{rest}", "same"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k):
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}", "same"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", "same"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", k):
        conv = m[3] == "weight" and m[2] != "group_norm"  # 1x1 convs in LDM, linear here
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}", "conv1x1" if conv else "same"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\..+", k):
        return k, "same"
    raise KeyError(k)


def openclip_key(k: str) -> tuple[str, str]:
    """OpenCLIP text tower: CLIPTextModel(WithProjection) key -> (LDM key, transform)."""
    k2 = k.removeprefix("text_model.")
    if k2 == "embeddings.token_embedding.weight":
        return "token_embedding.weight", "same"
    if k2 == "embeddings.position_embedding.weight":
        return "positional_embedding", "same"
    if k2.startswith("final_layer_norm."):
        return "ln_final." + k2.rsplit(".", 1)[1], "same"
    if k2 == "text_projection.weight":
        return "text_projection", "T"
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k2):
        return f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", "qkv" + m[2]
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k2):
        return f"transformer.resblocks.{m[1]}.{_OPENCLIP[m[2]]}.{m[3]}", "same"
    raise KeyError(k)


# ---------------------------------------------------------------------------------------
# The layout of one checkpoint: every LDM tensor with its shape and where its values come
# from, built from the diffusers models on the meta device (no memory, no init).


class Layout:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, Any] = {}
        # LDM key -> (component, [diffusers keys], transform)
        self.sources: dict[str, tuple[str, list[str], str]] = {}
        self.models: dict[str, Any] = {}  # component -> (meta model, config)

    def add(self, key: str, shape: tuple[int, ...], dtype: Any = None, source: Any = None) -> None:
        self.shapes[key] = tuple(int(s) for s in shape)
        self.dtypes[key] = dtype or torch.float16
        if source is not None:
            self.sources[key] = source

    def plant(self, component: str, keys: list[str], gen: torch.Generator) -> tuple[dict, dict]:
        """Random values for the given diffusers params: ({LDM key: tensor to write},
        {diffusers key: expected loaded value}). Fused LDM tensors get all their parts."""
        model_sd = self.models[component][0].state_dict()
        wanted = set(keys)
        ldm_keys = [
            k for k, (c, ks, _) in self.sources.items() if c == component and wanted & set(ks)
        ]
        written: dict[str, torch.Tensor] = {}
        expected: dict[str, torch.Tensor] = {}
        for lk in ldm_keys:
            _, dkeys, how = self.sources[lk]
            parts = []
            for dk in dkeys:
                t = (torch.randn(model_sd[dk].shape, generator=gen) * 0.05).half()
                expected[dk] = t
                parts.append(t)
            if how.startswith("qkv"):
                written[lk] = torch.cat(parts, 0)
            elif how == "T":
                written[lk] = parts[0].T.contiguous()
            elif how == "conv1x1":
                written[lk] = parts[0][:, :, None, None].contiguous()
            else:
                written[lk] = parts[0]
        assert wanted <= set(expected), wanted - set(expected)
        return written, expected


def _meta(cls: Any, family: str, sub: str | None) -> tuple[Any, dict]:
    cfg = cls.load_config(str(CONFIGS / family), subfolder=sub)
    with torch.device("meta"):
        return cls.from_config(cfg), cfg


def _meta_clip(cls: Any, family: str, sub: str) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig

    cfg = CLIPTextConfig.from_pretrained(str(CONFIGS / family), subfolder=sub)
    with torch.device("meta"):
        return cls(cfg), cfg


def _add_unet(lay: Layout, family: str, prefix: str, component: str = "unet") -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    if component == "controlnet":
        model, cfg = _meta(ControlNetModel, family, None)
    else:
        model, cfg = _meta(UNet2DConditionModel, family, "unet")
    lay.models[component] = (model, cfg)
    sd = model.state_dict()
    keys = list(sd)
    for k, v in sd.items():
        lay.add(prefix + unet_key(k, keys), v.shape, source=(component, [k], "same"))


def _add_vae(lay: Layout, family: str) -> None:
    from diffusers import AutoencoderKL

    model, cfg = _meta(AutoencoderKL, family, "vae")
    lay.models["vae"] = (model, cfg)
    for k, v in model.state_dict().items():
        lk, how = vae_key(k)
        shape = tuple(v.shape) + ((1, 1) if how == "conv1x1" else ())
        lay.add("first_stage_model." + lk, shape, source=("vae", [k], how))


def _add_clip_l(lay: Layout, family: str, prefix: str) -> None:
    from transformers import CLIPTextModel

    model, cfg = _meta_clip(CLIPTextModel, family, "text_encoder")
    lay.models["text_encoder"] = (model, cfg)
    for k, v in model.state_dict().items():
        lk = k if k.startswith("text_model.") else "text_model." + k
        lay.add(prefix + lk, v.shape, source=("text_encoder", [k], "same"))
    # Real files carry the (then persistent) position_ids buffer too.
    lay.add(prefix + "text_model.embeddings.position_ids", (1, 77), torch.int64)


def _add_openclip(lay: Layout, family: str, sub: str, prefix: str, extra_layer: bool) -> None:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if sub == "text_encoder_2" else CLIPTextModel
    model, cfg = _meta_clip(cls, family, sub)
    lay.models[sub] = (model, cfg)
    fused: dict[str, list[str]] = {}
    for k, v in model.state_dict().items():
        lk, how = openclip_key(k)
        if how.startswith("qkv"):
            fused.setdefault(lk, []).append(k)
            continue
        shape = tuple(v.shape)[::-1] if how == "T" else v.shape
        lay.add(prefix + lk, shape, source=(sub, [k], how))
    for lk, ks in fused.items():
        ks.sort(key=lambda k: "qkv".index(k.split("_proj.")[0][-1]))
        first = model.state_dict()[ks[0]].shape
        lay.add(prefix + lk, (3 * first[0], *first[1:]), source=(sub, ks, "qkv"))
    width = cfg.hidden_size
    if extra_layer:
        # SD 2.x files hold all 24 OpenCLIP layers and the projection; diffusers uses 23.
        n = cfg.num_hidden_layers
        for lk in [k for k in lay.shapes if k.startswith(f"{prefix}transformer.resblocks.0.")]:
            lay.add(lk.replace(".resblocks.0.", f".resblocks.{n}."), lay.shapes[lk])
        lay.add(prefix + "text_projection", (width, width))


def _add_ldm_extras(lay: Layout) -> None:
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev"):
        lay.add(name, (1000,), torch.float32)
    lay.add("model_ema.decay", (), torch.float32)
    lay.add("model_ema.num_updates", (), torch.int64)


def build_layout(family: str) -> Layout:
    lay = Layout()
    if family == "controlnet_sd15":
        _add_unet(lay, family, "", component="controlnet")  # v1.1 layout: no prefix
        return lay
    _add_unet(lay, family, "model.diffusion_model.")
    _add_vae(lay, family)
    if family == "sd15":
        _add_clip_l(lay, family, "cond_stage_model.transformer.")
        _add_ldm_extras(lay)
    elif family == "sd2_v":
        _add_openclip(lay, family, "text_encoder", "cond_stage_model.model.", extra_layer=True)
        _add_ldm_extras(lay)
    else:
        _add_clip_l(lay, family, "conditioner.embedders.0.transformer.")
        _add_openclip(lay, family, "text_encoder_2", "conditioner.embedders.1.model.", False)
    return lay


def assert_diffusers_converts_layout(lay: Layout, family: str) -> None:
    """diffusers' own forward conversion of this layout gives exactly each model's keys and
    shapes (so the non-strict load leaves nothing at its random init)."""
    from diffusers.loaders import single_file_utils as sfu

    ckpt = {k: torch.empty(s, device="meta") for k, s in lay.shapes.items()}
    for comp, (model, cfg) in lay.models.items():
        if comp == "unet":
            conv = sfu.convert_ldm_unet_checkpoint(ckpt, cfg)
        elif comp == "controlnet":
            conv = sfu.convert_controlnet_checkpoint(ckpt, cfg)
        elif comp == "vae":
            conv = sfu.convert_ldm_vae_checkpoint(ckpt, cfg)
        elif comp == "text_encoder" and family != "sd2_v":
            conv = sfu.convert_ldm_clip_checkpoint(ckpt)
        else:
            prefix = (
                "cond_stage_model.model." if family == "sd2_v" else "conditioner.embedders.1.model."
            )
            conv = sfu.convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
        if not hasattr(model, "text_model"):
            conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
        conv = {k: v for k, v in conv.items() if not k.endswith("position_ids")}
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in conv.items()}
        assert got == want, (comp, sorted(set(got) ^ set(want))[:10])


def write_sparse_safetensors(
    path: Path, lay: Layout, data: dict[str, torch.Tensor], gen: torch.Generator
) -> None:
    """A valid safetensors file: the header for every tensor of the layout, small tensors
    random, `data` written where given, and the rest left as holes (read back as zeros)."""
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(lay.shapes):
        dt, size = DTYPES[lay.dtypes[name]]
        n = math.prod(lay.shapes[name]) * size
        header[name] = {
            "dtype": dt,
            "shape": list(lay.shapes[name]),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    base = 8 + len(raw)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(base + offset)
        for name in sorted(lay.shapes):
            shape, dtype = lay.shapes[name], lay.dtypes[name]
            if name in data:
                t = data[name]
            elif name.endswith("position_ids"):
                t = torch.arange(77, dtype=torch.int64)[None]
            elif dtype == torch.float16 and math.prod(shape) <= SMALL:
                t = (torch.randn(shape, generator=gen) * 0.05).half()
            else:
                continue
            assert tuple(t.shape) == shape and t.dtype == dtype, name
            f.seek(base + header[name]["data_offsets"][0])
            f.write(t.contiguous().numpy().tobytes())


def make_checkpoint(
    tmp_path: Path, family: str, plant: dict[str, list[str]], name: str | None = None
) -> tuple[Path, dict[str, dict[str, torch.Tensor]], Layout]:
    gen = torch.Generator().manual_seed(1234)
    lay = build_layout(family)
    assert_diffusers_converts_layout(lay, family)
    written: dict[str, torch.Tensor] = {}
    expected: dict[str, dict[str, torch.Tensor]] = {}
    for comp, keys in plant.items():
        w, e = lay.plant(comp, keys, gen)
        written.update(w)
        expected[comp] = e
    path = tmp_path / (name or f"{family}.safetensors")
    write_sparse_safetensors(path, lay, written, gen)
    return path, expected, lay


def assert_planted(component: Any, expected: dict[str, torch.Tensor]) -> None:
    params = dict(component.named_parameters())
    for key, value in expected.items():
        got = params[key]
        assert got.dtype == torch.float16, key
        assert torch.equal(got.detach(), value), key
        assert value.abs().sum() > 0


@contextlib.contextmanager
def cheap_construction(float16: bool = False) -> Iterator[None]:
    """Skip the random initialisation of the models diffusers builds (every parameter is then
    overwritten from the file, see assert_diffusers_converts_layout); with `float16`, build
    them in float16 (the file's dtype) instead of float32-then-cast, halving peak memory.
    Without this the four loads take ~5 min and SDXL peaks near 21 GB on 2 CPU cores."""
    from transformers.initialization import no_init_weights

    before = torch.get_default_dtype()
    with no_init_weights():
        if float16:
            torch.set_default_dtype(torch.float16)
        try:
            yield
        finally:
            torch.set_default_dtype(before)


def _timed(label: str, fn: Callable[[], Any], float16: bool = False) -> Any:
    t0 = time.perf_counter()
    with cheap_construction(float16):
        out = fn()
    print(f"{label}: {time.perf_counter() - t0:.1f} s")
    return out


# ---------------------------------------------------------------------------------------
# Cheap tests: content sniffing, pickle refusal, tokenizers, detection.


def _tiny_safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(path))
    return path


def test_is_safetensors_by_content(tmp_path: Path) -> None:
    assert singlefile.is_safetensors(_tiny_safetensors(tmp_path / "a.safetensors"))
    assert singlefile.is_safetensors(_tiny_safetensors(tmp_path / "renamed.ckpt"))
    torch.save({"x": torch.zeros(2)}, tmp_path / "pickled.safetensors")
    assert not singlefile.is_safetensors(tmp_path / "pickled.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert not singlefile.is_safetensors(tmp_path / "empty.safetensors")
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert not singlefile.is_safetensors(tmp_path / "short.safetensors")  # header past EOF
    (tmp_path / "array.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]")
    assert not singlefile.is_safetensors(tmp_path / "array.safetensors")
    assert not singlefile.is_safetensors(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "model.safetensors"])
def test_pickle_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    torch.save(
        {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, path
    )
    with pytest.raises(InvalidParams) as info:
        singlefile.load_single_file(path, torch_dtype=torch.float16)
    assert info.value.field == "params.model"
    assert "pickle" in info.value.message and name in info.value.message
    with pytest.raises(InvalidParams):
        singlefile.detect_family(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(InvalidParams) as info:
        singlefile.load_single_file(path, torch_dtype=torch.float16)
    assert str(path) in info.value.message and info.value.field == "params.model"
    with pytest.raises(InvalidParams) as info:
        singlefile.load_single_file(tmp_path, torch_dtype=torch.float16, field="params.x")
    assert info.value.field == "params.x"


def test_offline_flag_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = constants.HF_HUB_OFFLINE
    seen = {}

    def fake_load(target: str, family: str, torch_dtype: Any, tokenizers: dict) -> str:
        seen["env"], seen["const"] = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
        return "loaded"

    monkeypatch.setattr(singlefile, "_load", fake_load)
    path, _, _ = make_checkpoint(tmp_path, "controlnet_sd15", {})
    assert singlefile.load_single_file(path, torch_dtype=None, kind="controlnet") == "loaded"
    assert seen == {"env": "1", "const": True}
    assert "HF_HUB_OFFLINE" not in os.environ
    assert before == constants.HF_HUB_OFFLINE


@pytest.mark.parametrize(
    ("family", "sub", "pad_id"),
    [
        ("sd15", "tokenizer", 49407),
        ("sd2_v", "tokenizer", 0),
        ("sdxl", "tokenizer", 49407),
        ("sdxl", "tokenizer_2", 0),
    ],
)
def test_shipped_tokenizers_are_real_clip(family: str, sub: str, pad_id: int) -> None:
    tok = singlefile.load_tokenizers(family)[sub]
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok(PROMPT).input_ids == PROMPT_IDS
    assert tok.convert_ids_to_tokens([1125, 320]) == ["photo</w>", "a</w>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, pad_id)
    padded = tok(PROMPT, padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == pad_id
    # The four shipped copies are the same vocabulary (git stores the blob once).
    for name in ("vocab.json", "merges.txt"):
        assert (CONFIGS / family / sub / name).read_bytes() == (
            CONFIGS / "sd15" / "tokenizer" / name
        ).read_bytes()


def test_shipped_configs_are_the_reference_architectures() -> None:
    def cfg(rel: str) -> dict:
        return json.loads((CONFIGS / rel).read_text())

    assert cfg("sd15/unet/config.json")["cross_attention_dim"] == 768
    assert cfg("sd2_v/unet/config.json")["cross_attention_dim"] == 1024
    assert cfg("sd2_v/scheduler/scheduler_config.json")["prediction_type"] == "v_prediction"
    assert cfg("sd2_v/text_encoder/config.json")["num_hidden_layers"] == 23
    assert cfg("sdxl/unet/config.json")["transformer_layers_per_block"] == [1, 2, 10]
    assert cfg("sdxl/text_encoder_2/config.json")["num_hidden_layers"] == 32
    assert cfg("sdxl/vae/config.json")["scaling_factor"] == 0.13025
    assert cfg("controlnet_sd15/config.json")["conditioning_embedding_out_channels"] == [
        16,
        32,
        96,
        256,
    ]


@pytest.mark.parametrize("family", ["sd15", "sd2_v", "sdxl", "controlnet_sd15"])
def test_detect_family_from_header(tmp_path: Path, family: str) -> None:
    lay = build_layout(family)
    path = tmp_path / "x.safetensors"
    write_sparse_safetensors(path, lay, {}, torch.Generator().manual_seed(0))
    assert singlefile.detect_family(path) == family
    renamed = path.rename(tmp_path / "x.ckpt")  # content decides, not the name
    assert singlefile.detect_family(renamed) == family


def test_detect_family_variants_and_refusals(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)

    def write(lay: Layout, name: str) -> Path:
        path = tmp_path / name
        write_sparse_safetensors(path, lay, {}, gen)
        return path

    # ControlNet v1.0-style keys under control_model. are still an SD 1.5 ControlNet.
    cn = build_layout("controlnet_sd15")
    prefixed = Layout()
    for k, s in cn.shapes.items():
        prefixed.add("control_model." + k, s, cn.dtypes[k])
    assert singlefile.detect_family(write(prefixed, "cn_v10.safetensors")) == "controlnet_sd15"

    def refused(lay: Layout, name: str, words: str) -> None:
        with pytest.raises(InvalidParams) as info:
            singlefile.detect_family(write(lay, name))
        assert words in info.value.message and info.value.field == "params.model"

    sd = build_layout("sd15")
    inpaint = Layout()
    for k, s in sd.shapes.items():
        inpaint.add(k, (320, 9, 3, 3) if k.endswith("input_blocks.0.0.weight") else s, sd.dtypes[k])
    refused(inpaint, "inpaint.safetensors", "inpainting")
    no_vae = Layout()
    for k, s in sd.shapes.items():
        if not k.startswith("first_stage_model."):
            no_vae.add(k, s, sd.dtypes[k])
    refused(no_vae, "novae.safetensors", "without a VAE")
    lora = Layout()
    lora.add("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", (4, 320))
    refused(lora, "lora.safetensors", "LoRA")


def test_kind_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cn.safetensors"
    write_sparse_safetensors(path, build_layout("controlnet_sd15"), {}, torch.Generator())
    with pytest.raises(InvalidParams) as info:
        singlefile.load_single_file(path, torch_dtype=torch.float16, kind="pipeline")
    assert "ControlNet" in info.value.message


# ---------------------------------------------------------------------------------------
# Full loads of the real architectures (sparse files, fp16).

CONTROLNET_PLANT = {
    "controlnet": [
        "controlnet_cond_embedding.blocks.5.weight",
        "controlnet_cond_embedding.conv_out.weight",
        "controlnet_down_blocks.11.weight",
        "controlnet_mid_block.weight",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight",
    ]
}


@pytest.mark.slow
def test_load_controlnet_sd15(tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    path, expected, _ = make_checkpoint(tmp_path, "controlnet_sd15", CONTROLNET_PLANT)
    cn = _timed(
        "controlnet",
        lambda: singlefile.load_single_file(path, torch_dtype=torch.float16, kind="controlnet"),
    )
    assert isinstance(cn, ControlNetModel)
    assert cn.config.cross_attention_dim == 768 and cn.config.conditioning_channels == 3
    assert_planted(cn, expected["controlnet"])


@pytest.mark.slow
def test_load_pickle_controlnet_when_allowed(tmp_path: Path) -> None:
    """allow_pickle=True: a .ckpt is read with torch's restricted unpickler."""
    from safetensors.torch import load_file

    st, expected, _ = make_checkpoint(tmp_path, "controlnet_sd15", CONTROLNET_PLANT)
    ckpt = tmp_path / "control_v11f1p_sd15_depth.safetensors"  # pickle under a misleading name
    state = load_file(str(st))
    st.unlink()
    torch.save(state, ckpt)
    del state
    with pytest.raises(InvalidParams):
        singlefile.load_single_file(ckpt, torch_dtype=torch.float16, kind="controlnet")
    cn = _timed(
        "controlnet (pickle)",
        lambda: singlefile.load_single_file(
            ckpt, torch_dtype=torch.float16, kind="controlnet", allow_pickle=True
        ),
    )
    assert_planted(cn, expected["controlnet"])


@pytest.mark.slow
def test_mis_shaped_checkpoint_is_invalid_params(tmp_path: Path) -> None:
    lay = build_layout("controlnet_sd15")
    lay.shapes["middle_block_out.0.weight"] = (1280, 1280, 3, 3)  # really 1x1
    path = tmp_path / "broken.safetensors"
    write_sparse_safetensors(path, lay, {}, torch.Generator())
    with pytest.raises(InvalidParams) as info:
        _timed(
            "controlnet (broken)",
            lambda: singlefile.load_single_file(path, torch_dtype=torch.float16, kind="controlnet"),
        )
    assert "could not be loaded" in info.value.message and info.value.field == "params.model"


@pytest.mark.slow
def test_load_sd15(tmp_path: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    path, expected, _ = make_checkpoint(
        tmp_path,
        "sd15",
        {
            "unet": [
                "down_blocks.0.attentions.0.proj_in.weight",  # 1x1 conv in SD 1.x
                "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q.weight",
                "up_blocks.2.upsamplers.0.conv.weight",
                "mid_block.resnets.1.conv2.weight",
            ],
            "vae": [
                "encoder.mid_block.attentions.0.to_q.weight",  # conv 1x1 -> linear
                "decoder.up_blocks.0.upsamplers.0.conv.bias",  # up.3 in LDM order
            ],
            "text_encoder": ["encoder.layers.11.self_attn.v_proj.weight"],
        },
        name="dreamshaper_8.SAFETENSORS",  # extension is not lowercase .safetensors
    )
    pipe = _timed("sd15", lambda: singlefile.load_single_file(path, torch_dtype=torch.float16))
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.unet.config.cross_attention_dim == 768 and pipe.unet.config.sample_size == 64
    assert pipe.text_encoder.config.num_hidden_layers == 12
    assert pipe.tokenizer.pad_token_id == 49407 and pipe.safety_checker is None
    assert pipe.vae.config.scaling_factor == 0.18215
    assert_planted(pipe.unet, expected["unet"])
    assert_planted(pipe.vae, expected["vae"])
    assert_planted(pipe.text_encoder, expected["text_encoder"])
    embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)  # tokenizer + text encoder work
    assert embeds.shape == (1, 77, 768) and torch.isfinite(embeds).all()


@pytest.mark.slow
def test_load_sd2_v(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path, expected, _ = make_checkpoint(
        tmp_path,
        "sd2_v",
        {
            "unet": ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"],
            "vae": ["decoder.mid_block.attentions.0.to_out.0.weight"],
            "text_encoder": [  # fused in_proj in OpenCLIP
                "encoder.layers.0.self_attn.q_proj.weight",
                "encoder.layers.22.self_attn.v_proj.bias",
                "final_layer_norm.weight",
            ],
        },
    )
    pipe = _timed("sd2_v", lambda: singlefile.load_single_file(path, torch_dtype=torch.float16))
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.cross_attention_dim == 1024 and pipe.unet.config.sample_size == 96
    assert pipe.unet.config.upcast_attention is True
    assert pipe.text_encoder.config.num_hidden_layers == 23
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0
    assert_planted(pipe.unet, expected["unet"])
    assert_planted(pipe.vae, expected["vae"])
    assert_planted(pipe.text_encoder, expected["text_encoder"])
    embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    assert embeds.shape == (1, 77, 1024) and torch.isfinite(embeds).all()


@pytest.mark.slow
def test_load_sdxl(tmp_path: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    path, expected, _ = make_checkpoint(
        tmp_path,
        "sdxl",
        {
            "unet": [
                "add_embedding.linear_1.weight",
                "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight",
                "up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2.weight",
                "up_blocks.1.upsamplers.0.conv.weight",
            ],
            "vae": ["encoder.mid_block.attentions.0.to_v.weight"],
            "text_encoder": ["encoder.layers.11.mlp.fc1.weight"],
            "text_encoder_2": [
                "text_projection.weight",  # transposed in OpenCLIP
                "text_model.encoder.layers.31.self_attn.k_proj.weight",
            ],
        },
    )
    pipe = _timed(
        "sdxl", lambda: singlefile.load_single_file(path, torch_dtype=torch.float16), float16=True
    )
    assert type(pipe) is StableDiffusionXLPipeline
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.unet.config.cross_attention_dim == 2048
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.text_encoder_2.config.num_hidden_layers == 32
    assert pipe.vae.config.scaling_factor == 0.13025
    assert pipe.tokenizer.pad_token_id == 49407 and pipe.tokenizer_2.pad_token_id == 0
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_planted(getattr(pipe, name), expected[name])
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=False
    )
    assert embeds.shape == (1, 77, 2048) and pooled.shape == (1, 1280)
    assert torch.isfinite(embeds).all() and torch.isfinite(pooled).all()
