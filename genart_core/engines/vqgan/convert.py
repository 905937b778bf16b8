"""taming-transformers VQGAN checkpoints → diffusers `VQModel`, one tensor to one tensor.

taming's `VQModel` (taming/models/vqgan.py: `Encoder`, `Decoder` from
taming/modules/diffusionmodules/model.py and `VectorQuantizer2` from
taming/modules/vqvae/quantize.py) is the network diffusers' `VQModel` implements: same
convolutions, GroupNorm(32, eps 1e-6), swish, single-head attention, asymmetric (0, 1, 0, 1)
padding before each stride-2 downsampling, nearest ×2 upsampling. Only the names differ, and
the attention projections are 1×1 convolutions in taming and linear layers in diffusers (the
same matrix: the weight's trailing 1×1 is dropped). Every tensor maps to exactly one tensor:

taming → diffusers (I: level, J: block; L: number of levels):

- `{enc,dec}oder.conv_in`, `.conv_out` → same; `.norm_out` → `.conv_norm_out`
- `encoder.down.I.block.J.{norm1,conv1,norm2,conv2,nin_shortcut}`
  → `encoder.down_blocks.I.resnets.J.{norm1,conv1,norm2,conv2,conv_shortcut}`
- `encoder.down.I.attn.J.{norm,q,k,v,proj_out}`
  → `encoder.down_blocks.I.attentions.J.{group_norm,to_q,to_k,to_v,to_out.0}`
- `encoder.down.I.downsample.conv` → `encoder.down_blocks.I.downsamplers.0.conv`
- `decoder.up.I.block.J`, `.attn.J`, `.upsample.conv` → `decoder.up_blocks.(L-1-I).resnets.J`,
  `.attentions.J`, `.upsamplers.0.conv` (taming numbers up-levels from the finest,
  diffusers in decoding order)
- `{enc,dec}oder.mid.block_1`, `.attn_1`, `.block_2`
  → `{enc,dec}oder.mid_block.resnets.0`, `.attentions.0`, `.resnets.1`
- `quant_conv`, `post_quant_conv`, `quantize.embedding.weight` → same
- `loss.*` (LPIPS and the discriminator, for training only) → dropped

The configuration comes from taming's YAML (`model.params`: `embed_dim`, `n_embed`,
`ddconfig`) when given, otherwise from the tensor shapes themselves: channel widths, levels,
blocks per level, where attention is, latent and codebook sizes are all visible in them.
Gumbel and other quantisers without `quantize.embedding.weight` are refused.

Pickle checkpoints (`.ckpt`) are read with `torch.load(weights_only=True)` only: no code in
the file runs. Errors are `InvalidParams` naming `field` (a CLI argument or a request field).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...protocol.errors import InvalidParams

FIELD = "source"
# Training state that may sit next to the weights in a checkpoint; never part of the model.
_IGNORED_PREFIXES = ("loss.",)
_IGNORED_SUFFIXES = (
    "quantize.embedding.cluster_size",  # EMA quantiser statistics
    "quantize.embedding.embed_avg",
    "quantize.used",  # remap buffer (index remapping is not supported; refused below)
)

_SAME = {
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
    "quantize.embedding.weight",
}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
_RESNET["nin_shortcut"] = "conv_shortcut"
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def is_taming_layout(keys: Sequence[str] | Mapping[str, Any]) -> bool:
    """True when tensor names are taming's (encoder.down.0.block.0..., not down_blocks)."""
    names = list(keys)
    return any(k.startswith("encoder.down.") for k in names) and "quantize.embedding.weight" in set(
        names
    )


def map_key(key: str, levels: int) -> str | None:
    """The diffusers name of taming tensor `key` (None: training state, dropped).
    `levels`: the number of resolutions (len(ch_mult)). Raises KeyError for unknown names."""
    if key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES):
        return None
    if key in _SAME:
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)", key)
    if m:
        part = "conv_norm_out" if m[2] == "norm_out" else m[2]
        return f"{m[1]}.{part}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)", key)
    if m:
        if m[2] == "attn_1":
            return f"{m[1]}.mid_block.attentions.0.{_ATTN[m[3]]}.{m[4]}"
        return f"{m[1]}.mid_block.resnets.{int(m[2][-1]) - 1}.{_RESNET[m[3]]}.{m[4]}"
    m = re.fullmatch(
        r"(encoder\.down|decoder\.up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key
    )
    if m:
        level = int(m[2])
        if m[1] == "encoder.down":
            prefix = f"encoder.down_blocks.{level}"
        else:
            prefix = f"decoder.up_blocks.{levels - 1 - level}"
        if m[3] == "block":
            return f"{prefix}.resnets.{m[4]}.{_RESNET[m[5]]}.{m[6]}"
        return f"{prefix}.attentions.{m[4]}.{_ATTN[m[5]]}.{m[6]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    raise KeyError(key)


def config_from_shapes(
    shapes: Mapping[str, Sequence[int]], *, sample_size: int = 256, field: str = FIELD
) -> dict[str, Any]:
    """A diffusers VQModel config read off a taming state dict's tensor shapes."""

    def need(key: str) -> Sequence[int]:
        if key not in shapes:
            raise InvalidParams(
                f"not a taming VQGAN state dict: no tensor {key!r}"
                + (
                    " (Gumbel or other quantisers are not supported)"
                    if key.startswith("quantize")
                    else ""
                ),
                field=field,
            )
        return shapes[key]

    if "quantize.used" in shapes:
        raise InvalidParams(
            "this VQGAN remaps codebook indices (quantize.used): not supported", field=field
        )
    levels = 1 + max(
        (int(m[1]) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k))), default=-1
    )
    if levels < 1:
        raise InvalidParams("not a taming VQGAN state dict: no encoder.down.*", field=field)
    blocks = 1 + max(
        int(m[1]) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))
    )
    widths = [int(need(f"encoder.down.{i}.block.0.conv1.weight")[0]) for i in range(levels)]
    attn = [any(k.startswith(f"encoder.down.{i}.attn.") for k in shapes) for i in range(levels)]
    conv_in = need("encoder.conv_in.weight")
    z_channels = int(need("encoder.conv_out.weight")[0])
    quant_conv = need("quant_conv.weight")
    if int(quant_conv[1]) != z_channels:
        raise InvalidParams(
            "encoder.conv_out does not feed quant_conv (double_z VQGANs are not supported)",
            field=field,
        )
    codebook = need("quantize.embedding.weight")
    return {
        "_class_name": "VQModel",
        "in_channels": int(conv_in[1]),
        "out_channels": int(need("decoder.conv_out.weight")[0]),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": [
            "AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)
        ],
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "act_fn": "silu",
        "latent_channels": z_channels,
        "sample_size": sample_size,
        "num_vq_embeddings": int(codebook[0]),
        "norm_num_groups": 32,
        "vq_embed_dim": int(codebook[1]),
        "norm_type": "group",
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in shapes),
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def config_from_yaml(path: str | os.PathLike[str], *, field: str = "--config") -> dict[str, Any]:
    """A diffusers VQModel config from a taming YAML (model.params: embed_dim, n_embed,
    ddconfig: ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, ...)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidParams(f"cannot read {path}: {exc}".split("\n")[0], field=field) from None
    try:
        params = doc["model"]["params"]
        dd = params["ddconfig"]
        ch, mult = int(dd["ch"]), [int(m) for m in dd["ch_mult"]]
        resolution = int(dd["resolution"])
        attn_res = {int(r) for r in dd.get("attn_resolutions", [])}
        if dd.get("double_z", False):
            raise InvalidParams("ddconfig.double_z is true: not a VQGAN", field=field)
        attn = [resolution // 2**i in attn_res for i in range(len(mult))]
        return {
            "_class_name": "VQModel",
            "in_channels": int(dd["in_channels"]),
            "out_channels": int(dd["out_ch"]),
            "down_block_types": [
                "AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn
            ],
            "up_block_types": [
                "AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)
            ],
            "block_out_channels": [ch * m for m in mult],
            "layers_per_block": int(dd["num_res_blocks"]),
            "act_fn": "silu",
            "latent_channels": int(dd["z_channels"]),
            "sample_size": resolution,
            "num_vq_embeddings": int(params["n_embed"]),
            "norm_num_groups": 32,
            "vq_embed_dim": int(params["embed_dim"]),
            "norm_type": "group",
            "mid_block_add_attention": True,
            "lookup_from_codebook": False,
            "force_upcast": False,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParams(
            f"{path} is not a taming VQGAN config (model.params.ddconfig): missing or bad {exc}",
            field=field,
        ) from None


def read_checkpoint(path: str | os.PathLike[str], *, field: str = FIELD) -> dict[str, Any]:
    """The state dict of a taming checkpoint: safetensors (by content), or a pickle `.ckpt`
    read with torch's restricted unpickler (`weights_only=True`), its "state_dict" key taken."""
    from ..sd.singlefile import is_safetensors, load_pickle_state_dict

    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_file():
        raise InvalidParams(f"no checkpoint file at {p}", field=field)
    if is_safetensors(p):
        from safetensors.torch import load_file

        return dict(load_file(str(p)))
    return load_pickle_state_dict(p, field)


def taming_to_diffusers(
    state: Mapping[str, Any], config: Mapping[str, Any] | None = None, *, field: str = FIELD
) -> Any:
    """A diffusers `VQModel` (float32, eval) holding the taming state dict `state`."""
    import torch
    from diffusers import VQModel

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = dict(config) if config is not None else config_from_shapes(shapes, field=field)
    levels = len(cfg["block_out_channels"])
    mapped: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        try:
            new = map_key(key, levels)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if ".attentions." in new and value.ndim == 4:  # 1×1 conv → linear: same matrix
            value = value[:, :, 0, 0]
        mapped[new] = value.detach().to(torch.float32).contiguous()
    if unknown:
        raise InvalidParams(
            f"{len(unknown)} tensors are not part of a taming VQGAN, e.g. {unknown[:3]}",
            field=field,
        )
    init = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model = VQModel(**init)
    load_checked(model, mapped, field=field, what="the checkpoint does not match its configuration")
    return model.eval()


def load_checked(model: Any, state: Mapping[str, Any], *, field: str, what: str) -> None:
    """`model.load_state_dict(state)` after checking names and shapes, so that a mismatch is
    an InvalidParams that says what differs (missing, unexpected, wrong shape)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        problems = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        raise InvalidParams(
            f"{what}: " + "; ".join(f"{kind} {names[:3]}" for kind, names in problems if names),
            field=field,
        )
    model.load_state_dict(state, strict=True)


def convert_taming(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config_yaml: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Converts the taming checkpoint `src` into the diffusers VQModel folder `dst`
    (config.json + diffusion_pytorch_model.safetensors). Returns the config written."""
    state = read_checkpoint(src, field="source")
    if not is_taming_layout(state):
        raise InvalidParams(
            f"{Path(src).name} is not in taming's VQGAN layout (no encoder.down.* and "
            "quantize.embedding.weight)",
            field="source",
        )
    config = config_from_yaml(config_yaml) if config_yaml is not None else None
    model = taming_to_diffusers(state, config, field="--config" if config else "source")
    out = Path(dst)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidParams(f"{out} exists and is not an empty folder", field="destination")
    model.save_pretrained(out, safe_serialization=True)
    return json.loads((out / "config.json").read_text())
