"""genart-texsynth: an example third-party engine package for the genart sidecar.

It registers `TexSynthEngine` under the `genart.engines` entry-point group (see
pyproject.toml); the sidecar's worker imports it from there. numpy only, no torch.
"""

from __future__ import annotations

from .engine import TexSynthEngine

__all__ = ["TexSynthEngine", "__version__"]
__version__ = "1.0.0"
