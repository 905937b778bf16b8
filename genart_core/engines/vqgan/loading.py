"""Loading VQGANs, CLIP and aMUSEd from what is on disk (or already in the HF cache).

A VQGAN reference (`params.model`) is one of:
- a diffusers `VQModel` folder (config.json + weights) of a VQGAN working in [-1, 1]
  (taming's convention; aMUSEd's `vqvae/` works in [0, 1] and is not one);
- a single `.safetensors` file, in diffusers' layout (its configuration is the `.json` file
  of the same name next to it if there is one, otherwise it is read off the tensor shapes)
  or in taming's layout (converted on load, see `convert`);
- a Hugging Face repo id already in the local cache.
Pickle files are refused unless the sidecar allows them (`--allow-pickle`), and then read
with `torch.load(weights_only=True)` only; `genart convert taming` turns one into a folder.

A CLIP reference (`params.clip_model`) is a transformers `CLIPModel` folder (config.json,
weights, and the tokenizer's files) or a repo id in the cache. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...protocol.errors import InvalidParams
from ..sd.loading import _allow_pickle, _from_cache, _local
from ..sd.singlefile import is_safetensors, read_header
from . import convert

# OpenAI CLIP's preprocessing, used when a folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def local_path(ref: str, field: str) -> Path | None:
    """sd.loading's reference rules (a path that exists, or looks like one, is local; else a
    repo id), with errors naming `field`."""
    try:
        return _local(ref)
    except InvalidParams as exc:
        raise InvalidParams(exc.message, field=field, allowed=exc.allowed) from None


def load_vqmodel(ref: str, *, field: str = "params.model") -> Any:
    """A diffusers `VQModel` in float32, eval mode, for `ref` (see the module docstring)."""
    import torch
    from diffusers import VQModel

    path = local_path(ref, field)
    if path is None:
        return _from_cache(VQModel, ref, torch.float32, field).eval()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidParams(
                f"{path} is not a diffusers VQModel folder (no config.json)", field=field
            )
        _check_class(path / "config.json", field)
        return VQModel.from_pretrained(path, local_files_only=True).eval()
    return _load_vq_file(path, field)


def _check_class(config: Path, field: str) -> dict[str, Any]:
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParams(f"cannot read {config}: {exc}", field=field) from None
    name = cfg.get("_class_name", "VQModel") if isinstance(cfg, dict) else None
    if name != "VQModel":
        raise InvalidParams(f"{config} describes a {name}, not a VQModel", field=field)
    return cfg


def _load_vq_file(path: Path, field: str) -> Any:
    import torch
    from diffusers import VQModel

    if is_safetensors(path):
        shapes = {k: tuple(v["shape"]) for k, v in read_header(path, field=field).items()}
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif _allow_pickle():
        state = convert.read_checkpoint(path, field=field)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    else:
        raise InvalidParams(
            f"{path.name} is not a safetensors file; pickle checkpoints (.ckpt, .pt, .bin) can "
            "run code when loaded, so they are refused. Convert a taming VQGAN checkpoint with "
            "`genart convert taming SRC.ckpt DST_FOLDER` (it reads the file safely), or allow "
            "pickle files explicitly if you trust this one",
            field=field,
        )
    if convert.is_taming_layout(shapes):
        return convert.taming_to_diffusers(state, field=field)
    side = path.with_suffix(".json")
    cfg = (
        _check_class(side, field) if side.is_file() else diffusers_config_from_shapes(shapes, field)
    )
    init = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model = VQModel(**init)
    convert.load_checked(
        model,
        {k: v.to(torch.float32) for k, v in state.items()},
        field=field,
        what=f"{path.name} is not a VQModel in diffusers' layout with this configuration",
    )
    return model.eval()


def diffusers_config_from_shapes(
    shapes: Mapping[str, Sequence[int]], field: str = "params.model"
) -> dict[str, Any]:
    """A VQModel config read off a diffusers-layout state dict (norm groups assumed 32)."""

    def need(key: str) -> Sequence[int]:
        if key not in shapes:
            raise InvalidParams(
                f"not a VQModel state dict in diffusers' layout: no tensor {key!r}", field=field
            )
        return shapes[key]

    levels = 1 + max(
        (int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))),
        default=-1,
    )
    if levels < 1:
        raise InvalidParams("not a VQModel state dict: no encoder.down_blocks.*", field=field)
    blocks = 1 + max(
        int(m[1])
        for k in shapes
        if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))
    )
    widths = [
        int(need(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0]) for i in range(levels)
    ]
    attn = [
        any(k.startswith(f"encoder.down_blocks.{i}.attentions.") for k in shapes)
        for i in range(levels)
    ]
    codebook = need("quantize.embedding.weight")
    return {
        "in_channels": int(need("encoder.conv_in.weight")[1]),
        "out_channels": int(need("decoder.conv_out.weight")[0]),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": [
            "AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)
        ],
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "latent_channels": int(need("encoder.conv_out.weight")[0]),
        "num_vq_embeddings": int(codebook[0]),
        "vq_embed_dim": int(codebook[1]),
        "norm_type": "spatial"
        if any(".conv_y." in k for k in shapes if k.startswith("decoder."))
        else "group",
        "mid_block_add_attention": any(
            k.startswith("encoder.mid_block.attentions.") for k in shapes
        ),
    }


def downsampling(vq: Any) -> int:
    """How many pixels one code covers along each side (16 for taming's f16 VQGANs)."""
    return 2 ** (len(vq.config.block_out_channels) - 1)


@dataclass
class Clip:
    """A CLIP model with what it needs around it: tokenizer and image preprocessing."""

    model: Any
    tokenizer: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def max_tokens(self) -> int:
        return min(
            int(self.tokenizer.model_max_length),
            int(self.model.config.text_config.max_position_embeddings),
        )


def load_clip(ref: str, *, field: str = "params.clip_model") -> Clip:
    """transformers' `CLIPModel` + `CLIPTokenizer` in float32, eval mode."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    path = local_path(ref, field)
    if path is not None:
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise InvalidParams(
                f"{path} is not a transformers CLIP folder (config.json, weights, tokenizer)",
                field=field,
            )
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidParams(f"cannot read {path / 'config.json'}: {exc}", field=field) from None
        if cfg.get("model_type") != "clip":
            raise InvalidParams(
                f"{path} holds a {cfg.get('model_type')!r} model, not CLIP (model_type 'clip')",
                field=field,
            )
        model = CLIPModel.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidParams(
                f"{path} has no CLIP tokenizer (vocab.json + merges.txt): {exc}".split("\n")[0],
                field=field,
            ) from None
        mean, std = _preprocessing(path / "preprocessor_config.json")
    else:
        model = _from_cache(CLIPModel, ref, torch.float32, field)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(ref, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidParams(
                f"{ref}: no CLIP tokenizer in the local cache ({exc})".split("\n")[0], field=field
            ) from None
        mean, std = CLIP_MEAN, CLIP_STD
    return Clip(model.eval(), tokenizer, mean, std)


def _preprocessing(path: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    try:
        cfg = json.loads(path.read_text())
        mean = tuple(float(v) for v in cfg["image_mean"])
        std = tuple(float(v) for v in cfg["image_std"])
        if len(mean) == 3 and len(std) == 3:
            return mean, std
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return CLIP_MEAN, CLIP_STD


def load_amused(ref: str, *, torch_dtype: Any, field: str = "params.model") -> Any:
    """An `AmusedPipeline` from a diffusers folder (model_index.json) or the HF cache."""
    from diffusers import AmusedPipeline

    path = local_path(ref, field)
    if path is None:
        return _from_cache(AmusedPipeline, ref, torch_dtype, field)
    if not (path.is_dir() and (path / "model_index.json").is_file()):
        raise InvalidParams(
            f"{path} is not a diffusers aMUSEd folder (no model_index.json)", field=field
        )
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParams(
            f"cannot read {path / 'model_index.json'}: {exc}", field=field
        ) from None
    if index.get("_class_name") not in ("AmusedPipeline", "AmusedImg2ImgPipeline"):
        raise InvalidParams(
            f"{path} holds a {index.get('_class_name')}, not an aMUSEd pipeline", field=field
        )
    return AmusedPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
