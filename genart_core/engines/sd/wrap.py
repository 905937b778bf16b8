"""Seamless generation: convolutions that wrap around the image edges.

Tileable textures wrap both ways (a torus); 360° panoramas wrap left-right only (a
cylinder), with ordinary zero padding at the poles. Each convolution of the UNet, the VAE
(and any ControlNet) pads its input circularly along the wrapped axes instead of with
zeros, so the output is exactly periodic there. The modules are shared between requests,
so the change lasts for one call and is undone in a `finally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _wrapping_forward(conv: Any, wrap_x: bool, wrap_y: bool) -> Any:
    import torch.nn.functional as F

    ph, pw = conv.padding

    def forward(x: Any, weight: Any, bias: Any) -> Any:  # x: (B, C, H, W)
        x = F.pad(x, (pw, pw, 0, 0), mode="circular" if wrap_x else "constant")
        x = F.pad(x, (0, 0, ph, ph), mode="circular" if wrap_y else "constant")
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


@contextlib.contextmanager
def wrapped(modules: list[Any], wrap_x: bool, wrap_y: bool) -> Iterator[None]:
    """Within the block, every padded Conv2d in `modules` wraps along the given axes."""
    if not (wrap_x or wrap_y):
        yield
        return
    import torch

    patched = []
    for module in modules:
        for conv in module.modules():
            if (
                isinstance(conv, torch.nn.Conv2d)
                and isinstance(conv.padding, tuple)
                and any(conv.padding)
                and conv.padding_mode == "zeros"
            ):
                # An instance attribute shadowing the method on purpose (undone below).
                conv._conv_forward = _wrapping_forward(conv, wrap_x, wrap_y)  # type: ignore[method-assign]
                patched.append(conv)
    try:
        yield
    finally:
        for conv in patched:
            del conv._conv_forward  # back to the class's own method
