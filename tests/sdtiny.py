"""The tiny Stable Diffusion builders for the tests. They live in dev/tiny_models.py, which
the demo (dev/demo.py) shares; this module puts dev/ on the path and re-exports them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dev"))

from tiny_models import (  # noqa: E402
    WORDS,
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd,
    build_tiny_sdxl,
    build_tiny_taesd,
    tiny_tokenizer,
)

__all__ = [
    "WORDS",
    "build_tiny_controlnet",
    "build_tiny_lora",
    "build_tiny_sd",
    "build_tiny_sdxl",
    "build_tiny_taesd",
    "tiny_tokenizer",
]
