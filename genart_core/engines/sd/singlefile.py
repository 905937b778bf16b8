"""Offline loading of single-file checkpoints (A1111 / Civitai style `.safetensors`).

A single file holds only weights. diffusers' `from_single_file` also needs each component's
config, the scheduler's and the tokenizers' files; by default it fetches those from the Hub.
Here they come from `configs/<family>/`, shipped with the project and copied from the
published diffusers repos of the reference models:

- `sd15`: stable-diffusion-v1-5 (CLIP ViT-L text encoder, 768-wide cross attention)
- `sd2_v`: stabilityai/stable-diffusion-2-1 (OpenCLIP ViT-H, 768 px, v-prediction)
- `sdxl`: stabilityai/stable-diffusion-xl-base-1.0 (CLIP ViT-L + OpenCLIP bigG)
- `controlnet_sd15`: lllyasviel/control_v11f1p_sd15_depth (every SD 1.5 ControlNet v1.1,
  depth and normalbae included, shares this architecture)

The family is read from the tensor names and shapes in the safetensors header, so nothing is
loaded to decide. Safetensors is recognised by its content (8-byte little-endian header
length, then a JSON object), never by the file name. Anything else is treated as pickle
(`.ckpt`, `.pt`, `.bin`), which can run code when loaded: it is refused unless the caller
explicitly allows it, and even then it is read only with torch's restricted unpickler
(`weights_only=True`).

Known limits: the SD 2.x family is assumed to be the 768 px v-prediction model (2.0-v/2.1),
as diffusers assumes too; a 2.x-base (512 px, epsilon) checkpoint loads with the wrong
prediction type and needs its scheduler's `prediction_type` changed by the caller. Inpainting,
instruct-pix2pix, SDXL refiner and SD 2.x / SDXL ControlNets are recognised and refused.

Without `accelerate` installed, diffusers builds every model with random weights before
loading the file's (peak memory about twice the model in float32, and for SDXL tens of
seconds of CPU); installing `accelerate` makes it build them empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...protocol.errors import InvalidParams

FIELD = "params.model"
CONFIGS = Path(__file__).resolve().parent / "configs"
PIPELINE_FAMILIES = ("sd15", "sd2_v", "sdxl")
FAMILIES = (*PIPELINE_FAMILIES, "controlnet_sd15")
KINDS = ("pipeline", "controlnet")
# safetensors itself refuses headers above 100 MB; real SD headers are < 1 MB.
MAX_HEADER_BYTES = 100_000_000

_UNET = "model.diffusion_model."
_CONTROL = "control_model."
_NAMES = {
    "sd15": "Stable Diffusion 1.x",
    "sd2_v": "Stable Diffusion 2.x (768-v)",
    "sdxl": "SDXL base",
    "controlnet_sd15": "SD 1.5 ControlNet",
}


def config_dir(family: str) -> Path:
    """The shipped diffusers config folder of `family` (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return CONFIGS / family


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """True when the file's content is safetensors: an 8-byte little-endian header length
    that fits in the file, then a JSON object. The file name plays no part."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER_BYTES and 8 + n <= size and head[8:9] == b"{"


def read_header(path: str | os.PathLike[str], *, field: str = FIELD) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape,
    data_offsets), `__metadata__` left out. Reads the header only, never a tensor."""
    p = _existing(path, field)
    if not is_safetensors(p):
        raise InvalidParams(f"{p.name} is not a safetensors file", field=field)
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidParams(f"{p.name} has a damaged safetensors header", field=field) from None
    if not isinstance(header, dict):
        raise InvalidParams(f"{p.name} has a damaged safetensors header", field=field)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in entries.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)):
            raise InvalidParams(f"{p.name}: bad header entry for tensor {name!r}", field=field)
    return entries


def detect_family(path: str | os.PathLike[str], *, field: str = FIELD) -> str:
    """The family of a safetensors checkpoint: "sd15", "sd2_v", "sdxl" or "controlnet_sd15",
    from the tensor names and shapes in its header alone. Anything else raises InvalidParams."""
    p = _existing(path, field)
    shapes = {k: v["shape"] for k, v in read_header(p, field=field).items()}
    return family_from_shapes(shapes, name=p.name, field=field)


def family_from_shapes(
    shapes: Mapping[str, Sequence[int]], *, name: str = "checkpoint", field: str = FIELD
) -> str:
    """The family of a state dict given as {tensor name: shape} (see `detect_family`)."""

    def refuse(what: str) -> InvalidParams:
        return InvalidParams(f"{name}: {what}", field=field, allowed=list(FAMILIES))

    keys = list(shapes)
    if any(k.startswith("lora_") or ".lora_" in k for k in keys):
        raise refuse("this is a LoRA, not a model checkpoint")

    control = [k.removeprefix(_CONTROL) for k in keys]
    if any(k.startswith(("input_hint_block.", "controlnet_cond_embedding.")) for k in control):
        ctx = _context_dim(shapes, unet=False)
        hint = shapes.get("input_hint_block.0.weight") or shapes.get(
            _CONTROL + "input_hint_block.0.weight"
        )
        if ctx == 768 and (hint is None or (len(hint) == 4 and hint[1] == 3)):
            return "controlnet_sd15"
        kinds: dict[int | None, str] = {1024: "an SD 2.x ControlNet", 2048: "an SDXL ControlNet"}
        kind = kinds.get(ctx, "a ControlNet of an unsupported kind")
        raise refuse(f"{kind} (only SD 1.5 ControlNets are supported)")

    if not any(k.startswith(_UNET) for k in keys):
        if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys):
            raise refuse("this is a VAE alone, not a full Stable Diffusion checkpoint")
        if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
            raise refuse(
                "this is a diffusers-format component, not an A1111-style single-file "
                "checkpoint (point to its diffusers folder instead)"
            )
        raise refuse(
            "no Stable Diffusion UNet weights (model.diffusion_model.*) in this file; "
            "LoRAs, embeddings and VAEs are not models"
        )

    conv_in = shapes.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        what = {9: "an inpainting model", 8: "an instruct-pix2pix model"}.get(
            int(conv_in[1]), f"a UNet with {conv_in[1]} input channels"
        )
        raise refuse(f"{what}, which is not supported yet")
    ctx = _context_dim(shapes, unet=True)
    adm = _UNET + "label_emb.0.0.weight" in shapes  # SDXL's size/crop conditioning

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    has_vae = has("first_stage_model.")
    if ctx == 768 and not adm:
        family = "sd15"
        text_ok = has("cond_stage_model.transformer.")
    elif ctx == 1024 and not adm:
        family = "sd2_v"
        text_ok = has("cond_stage_model.model.")
    elif ctx == 2048 and adm:
        family = "sdxl"
        text_ok = has("conditioner.embedders.0.transformer.") and has(
            "conditioner.embedders.1.model."
        )
    elif ctx == 1280 and adm:
        raise refuse("an SDXL refiner, which is not supported")
    elif ctx == 1024 and adm:
        raise refuse("a Stable unCLIP model, which is not supported")
    else:
        raise refuse(f"an unknown UNet (cross-attention width {ctx})")
    if not text_ok:
        raise refuse(f"a {_NAMES[family]} UNet without its text encoder(s); not supported")
    if not has_vae:
        raise refuse(f"a {_NAMES[family]} checkpoint without a VAE (first_stage_model.*)")
    return family


def load_tokenizers(family: str) -> dict[str, Any]:
    """The family's CLIP tokenizers from the shipped folders ({"tokenizer": ...} and, for
    SDXL, {"tokenizer_2": ...}), each checked to hold the full 49,408-token vocabulary."""
    from transformers import CLIPTokenizer

    base = config_dir(family)
    subs = ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",)
    out: dict[str, Any] = {}
    for sub in subs:
        tok = CLIPTokenizer.from_pretrained(str(base), subfolder=sub, local_files_only=True)
        if len(tok) != 49408:  # a folder without vocab.json/merges.txt loads silently empty
            raise RuntimeError(f"shipped tokenizer {family}/{sub} is incomplete ({len(tok)})")
        out[sub] = tok
    return out


def load_single_file(
    path: str | os.PathLike[str],
    *,
    torch_dtype: Any,
    allow_pickle: bool = False,
    kind: str = "pipeline",
    field: str = FIELD,
) -> Any:
    """Load a single-file checkpoint offline.

    kind="pipeline": a `StableDiffusionPipeline` (sd15, sd2_v) or
    `StableDiffusionXLPipeline` (sdxl); kind="controlnet": a `ControlNetModel`
    (controlnet_sd15). Non-safetensors content raises InvalidParams unless `allow_pickle`.
    Errors name `field` (the request parameter that held the path).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    p = _existing(path, field)
    safe = is_safetensors(p)
    if safe:
        family = detect_family(p, field=field)
    elif not allow_pickle:
        raise InvalidParams(
            f"{p.name} is not a safetensors file; pickle checkpoints (.ckpt, .pt, .bin) can run "
            "code when loaded, so they are refused. Use a .safetensors version of the model, "
            "or allow pickle files explicitly if you trust this one",
            field=field,
        )
    else:
        family = family_from_shapes(_pickle_shapes(p, field), name=p.name, field=field)

    want = "controlnet" if family == "controlnet_sd15" else "pipeline"
    if want != kind:
        what = "a ControlNet" if want == "controlnet" else "a full model checkpoint"
        raise InvalidParams(
            f"{p.name} is {what} ({_NAMES[family]}), but a "
            f"{'ControlNet' if kind == 'controlnet' else 'model'} was asked for here",
            field=field,
        )

    tokenizers = load_tokenizers(family) if kind == "pipeline" else {}
    with _offline(), _named_for_diffusers(p, safe, field) as target:
        try:
            return _load(target, family, torch_dtype, tokenizers)
        except Exception as exc:
            if not _is_checkpoint_error(exc):
                raise
            text = str(getattr(exc, "message", None) or exc).strip()
            detail = text.splitlines()[0][:300] if text else type(exc).__name__
            raise InvalidParams(
                f"{p.name} could not be loaded as {_NAMES[family]}: {detail}", field=field
            ) from exc


def _load(target: str, family: str, torch_dtype: Any, tokenizers: dict[str, Any]) -> Any:
    config = str(config_dir(family))
    common = {"config": config, "local_files_only": True, "torch_dtype": torch_dtype}
    if family == "controlnet_sd15":
        from diffusers import ControlNetModel

        return ControlNetModel.from_single_file(target, **common)
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as cls
    else:
        from diffusers import StableDiffusionPipeline as cls
    return cls.from_single_file(target, **common, **tokenizers)


def _is_checkpoint_error(exc: BaseException) -> bool:
    """Errors that mean "this file is not a loadable model of its family" (missing or
    mis-shaped tensors, an unreadable file), as opposed to running out of memory."""
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return not ("memory" in text or "alloc" in text)
    cls = _single_file_error_class()
    return isinstance(exc, (ValueError, KeyError, OSError)) or (
        cls is not None and isinstance(exc, cls)
    )


def _single_file_error_class() -> type[Exception] | None:
    try:
        from diffusers.loaders.single_file_utils import SingleFileComponentError
    except ImportError:  # pragma: no cover - moved in another diffusers version
        return None
    return SingleFileComponentError


def _existing(path: str | os.PathLike[str], field: str) -> Path:
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_file():
        what = "is a folder, not a checkpoint file" if p.is_dir() else "does not exist"
        raise InvalidParams(f"model file {p} {what}", field=field)
    return p


def _context_dim(shapes: Mapping[str, Sequence[int]], *, unet: bool) -> int | None:
    """The cross-attention (text embedding) width: in_features of the first attn2.to_k of
    the UNet (`unet=True`) or of the ControlNet (`unet=False`)."""
    for key in sorted(shapes):
        if key.startswith(_UNET) != unet or not key.endswith(".attn2.to_k.weight"):
            continue
        shape = shapes[key]
        if len(shape) == 2:
            return int(shape[1])
    return None


def load_pickle_state_dict(p: Path, field: str, map_location: str = "cpu") -> dict[str, Any]:
    """The tensors of a pickle checkpoint, read with torch's restricted unpickler
    (`weights_only=True`: no code in the file runs); nested "state_dict" keys are unwrapped.
    On the meta device no tensor data is read."""
    import pickle

    import torch

    try:
        # A file object, not the path: torch.load routes "*.safetensors" paths to safetensors.
        with open(p, "rb") as f:
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidParams(
            f"{p.name} is neither safetensors nor a checkpoint torch can read safely "
            f"(weights_only): {detail}",
            field=field,
        ) from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise InvalidParams(f"{p.name} does not hold a state dict", field=field)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _pickle_shapes(p: Path, field: str) -> dict[str, Sequence[int]]:
    """Tensor shapes of a pickle checkpoint, without reading its tensor data."""
    return {k: tuple(v.shape) for k, v in load_pickle_state_dict(p, field, "meta").items()}


@contextlib.contextmanager
def _named_for_diffusers(p: Path, safe: bool, field: str) -> Iterator[str]:
    """diffusers picks its reader by file extension; hand it a name that matches the content
    (a link in a temporary folder when the real name does not)."""
    if (p.name.rsplit(".", 1)[-1] == "safetensors") == safe:
        yield str(p)
        return
    with tempfile.TemporaryDirectory(prefix="genart-ckpt-", ignore_cleanup_errors=True) as tmp:
        link = Path(tmp) / ("checkpoint.safetensors" if safe else "checkpoint.ckpt")
        try:
            os.symlink(p.resolve(), link)
        except OSError:
            try:
                os.link(p, link)
            except OSError:
                ext = ".safetensors" if safe else ".ckpt"
                raise InvalidParams(
                    f"{p.name} holds {'safetensors' if safe else 'pickle'} data under another "
                    f"extension; rename it to end in {ext}",
                    field=field,
                ) from None
        yield str(link)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the duration (the environment variable and huggingface_hub's
    already-imported constant), restored afterwards."""
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = None
    saved_const: Any = None
    try:
        import huggingface_hub.constants as constants

        saved_const = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        constants = None
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
