"""Device and dtype choice for torch engines: CUDA fp16 > Apple MPS fp16 > CPU fp32.

`GENART_DEVICE` (set by `genart-sidecar --device`) forces one. Imports torch only when
called, so describing engines stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

from ..protocol.errors import InvalidParams

DEVICES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str | None = None) -> tuple[str, Any]:
    """(device, dtype) for `preference` (default: GENART_DEVICE or auto)."""
    import torch

    pref = (preference or os.environ.get("GENART_DEVICE") or "auto").lower()
    if pref not in DEVICES:
        raise InvalidParams(f"unknown device {pref!r}", field="device", allowed=list(DEVICES))
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "cuda" and not cuda:
        raise InvalidParams(
            "CUDA was asked for but is not available",
            field="device",
            allowed=[d for d in DEVICES if d != "cuda"],
        )
    if pref == "mps" and not mps:
        raise InvalidParams(
            "MPS was asked for but is not available",
            field="device",
            allowed=[d for d in DEVICES if d != "mps"],
        )
    if pref == "cuda" or (pref == "auto" and cuda):
        return "cuda", torch.float16
    if pref == "mps" or (pref == "auto" and mps):
        return "mps", torch.float16
    return "cpu", torch.float32
