"""FakeEngine: a deterministic stand-in engine for protocol and fault-injection tests.

It is not a model. It paints a deterministic RGBA pattern step by step (or inverts an input
image), reports progress and previews like a real engine, and can be told to fail, raise
an unexpected exception (a bug), hang (sleeping, deaf to cancel), hold the GIL, exhaust
memory or crash the worker process. The sidecar offers it only when started with
`--enable-test-engines`. Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from ..protocol.errors import EngineFailed
from .base import Engine, Input, Output, RunContext
from .schema import Param

MODES = ("ok", "fail", "bug", "hang", "gil", "crash", "oom")


def fake_image(width: int, height: int, seed: int, frame: int) -> bytearray:
    """RGBA uint8 pattern: value[r, c, k] = (7 seed + 13 frame + 3 r + 5 c + 64 k) mod 256,
    alpha 255. Cheap to build and to check from outside."""
    base = bytes(
        (7 * seed + 13 * frame + 5 * c + 64 * k) & 255 for c in range(width) for k in range(4)
    )
    rows = [base.translate(bytes((i + 3 * r) & 255 for i in range(256))) for r in range(height)]
    img = bytearray(b"".join(rows))
    img[3::4] = b"\xff" * (width * height)
    return img


def _hold_gil_forever() -> None:
    # One C call that never releases the GIL: no other thread of this process runs.
    sum(range(10**13))


class FakeEngine(Engine):
    name = "fake"
    version = "1"
    tasks = ("txt2img", "img2img", "sequence")
    help = "Test engine: deterministic patterns, with fault injection. Not a model."
    capabilities = {"depth_control": False, "tileable": False}
    inputs = {"image": "RGBA uint8, inverted by img2img"}
    params = (
        Param("width", "int", 64, "image width in pixels", min=1, max=8192),
        Param("height", "int", 64, "image height in pixels", min=1, max=8192),
        Param("steps", "int", 8, "denoising steps to simulate", min=1, max=10000),
        Param("seed", "int", 0, "pattern seed", min=0, max=2**31 - 1),
        Param("step_seconds", "float", 0.0, "time each step takes", min=0.0, max=600.0),
        Param("mode", "enum", "ok", "fault to inject", choices=MODES),
        Param("fault_frames", "int_list", [], "frames the fault hits (empty: all)", min=0),
        Param(
            "fault_attempts",
            "int",
            1000,
            "the fault hits attempts 1..N of a frame",
            min=1,
            max=1000,
        ),
        Param("fault_step", "int", 0, "step at which the fault hits", min=0),
        Param(
            "report_previous",
            "bool",
            False,
            "warn with the sha256 of the sequence's previous frame's image (tests)",
        ),
    )

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        width, height, steps = params["width"], params["height"], params["steps"]
        faulty = (
            params["mode"] != "ok"
            and (not params["fault_frames"] or ctx.frame in params["fault_frames"])
            and ctx.attempt <= params["fault_attempts"]
        )
        if params["report_previous"] and ctx.previous is not None:
            prev = ctx.previous.outputs.get("image")
            digest = hashlib.sha256(prev.read_bytes()).hexdigest() if prev else "none"
            ctx.warn(f"previous image sha256 {digest}")
        source = inputs.get("image")
        if task == "img2img" and source is None:
            raise EngineFailed("img2img needs an input named 'image'", field="inputs.image")
        for step in range(steps):
            ctx.progress(step, steps)
            if faulty and step == min(params["fault_step"], steps - 1):
                self._fault(params["mode"])
            if params["step_seconds"]:
                time.sleep(params["step_seconds"])
            if step % 4 == 3:
                ctx.preview(
                    Output(
                        "preview",
                        fake_image(8, 8, params["seed"], ctx.frame + step),
                        "uint8",
                        (8, 8, 4),
                    )
                )
        ctx.progress(steps, steps)
        if source is not None:
            if source.dtype != "uint8" or not source.shape or source.shape[-1] != 4:
                raise EngineFailed(
                    "input 'image' must be RGBA uint8",
                    field="inputs.image",
                    allowed={"dtype": "uint8", "channels": 4},
                )
            data = bytearray(255 - b for b in source.read_bytes())
            data[3::4] = b"\xff" * (len(data) // 4)
            return [Output("image", data, "uint8", tuple(source.shape))]
        img = fake_image(width, height, params["seed"], ctx.frame)
        return [Output("image", img, "uint8", (height, width, 4))]

    @staticmethod
    def _fault(mode: str) -> None:
        if mode == "fail":
            raise EngineFailed(
                "the fake engine failed as asked", field="params.mode", allowed=list(MODES)
            )
        if mode == "bug":
            raise ZeroDivisionError("a bug inside the engine")
        if mode == "crash":
            os._exit(70)
        if mode == "oom":
            raise MemoryError("fake out-of-memory")
        if mode == "hang":
            while True:
                time.sleep(3600)
        if mode == "gil":
            _hold_gil_forever()
