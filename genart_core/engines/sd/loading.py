"""Loading Stable Diffusion models and ControlNets from what artists have on disk.

A reference is one of: a local diffusers folder (with model_index.json / config.json), a
single-file checkpoint (A1111/Civitai `.safetensors`, loaded offline with the configs the
project ships, see `singlefile`), or a Hugging Face repo id already in the local cache.
Nothing is downloaded here: fetching models is the model manager's job (engines part 2),
so a missing model is a clear error that says what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...protocol.errors import InvalidParams

FIELD = "params.model"


def _local(ref: str) -> Path | None:
    path = Path(os.path.expanduser(ref))
    if path.exists():
        return path
    if (
        ref.startswith((".", "/", "~"))
        or "\\" in ref
        or ref.endswith((".safetensors", ".ckpt", ".pt", ".bin"))
    ):
        raise InvalidParams(f"no model file or folder at {ref}", field=FIELD)
    return None


def _allow_pickle() -> bool:
    return os.environ.get("GENART_ALLOW_PICKLE") == "1"


def load_pipeline(ref: str, *, torch_dtype: Any, field: str = FIELD) -> Any:
    """A text-to-image pipeline (SD or SDXL family) for `ref`."""
    from diffusers import AutoPipelineForText2Image

    path = _local(ref)
    if path is not None and path.is_file():
        from .singlefile import load_single_file

        return load_single_file(path, torch_dtype=torch_dtype, allow_pickle=_allow_pickle())
    if path is not None:
        if not (path / "model_index.json").is_file():
            raise InvalidParams(
                f"{path} is not a diffusers model folder (no model_index.json)", field=field
            )
        return AutoPipelineForText2Image.from_pretrained(
            path,
            dtype=torch_dtype,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    return _from_cache(
        AutoPipelineForText2Image,
        ref,
        torch_dtype,
        field,
        safety_checker=None,
        requires_safety_checker=False,
    )


def load_controlnet(ref: str, *, torch_dtype: Any, field: str = "params.depth_controlnet") -> Any:
    from diffusers import ControlNetModel

    path = _local(ref)
    if path is not None and path.is_file():
        from .singlefile import load_single_file

        return load_single_file(
            path, torch_dtype=torch_dtype, allow_pickle=_allow_pickle(), kind="controlnet"
        )
    if path is not None:
        if not (path / "config.json").is_file():
            raise InvalidParams(
                f"{path} is not a diffusers ControlNet folder (no config.json)", field=field
            )
        return ControlNetModel.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    return _from_cache(ControlNetModel, ref, torch_dtype, field)


def _from_cache(cls: Any, ref: str, torch_dtype: Any, field: str, **kwargs: Any) -> Any:
    if ref.count("/") != 1:
        raise InvalidParams(
            f"{ref!r} is neither a local path nor a Hugging Face repo id (owner/name)", field=field
        )
    try:
        return cls.from_pretrained(ref, dtype=torch_dtype, local_files_only=True, **kwargs)
    except OSError as exc:
        raise InvalidParams(
            f"{ref} is not in the local Hugging Face cache and downloads are off; download it "
            f"first or point to a local folder or .safetensors file ({str(exc)[:200]})",
            field=field,
        ) from None


def load_preview_vae(ref: str, *, torch_dtype: Any, field: str = "params.preview_vae") -> Any:
    """A TAESD (`AutoencoderTiny`) for previews, from a folder or the local cache."""
    from diffusers import AutoencoderTiny

    path = _local(ref)
    if path is not None:
        if not (path / "config.json").is_file():
            raise InvalidParams(f"{path} is not a diffusers AutoencoderTiny folder", field=field)
        return AutoencoderTiny.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    return _from_cache(AutoencoderTiny, ref, torch_dtype, field)
