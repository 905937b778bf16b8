"""`genart generate`: one image from the command line, through a sidecar.

Reads the optional init image (any Pillow format) and depth (`.npy`, or `.exr` with the
`openexr` package), sends one job to a running sidecar, or to one it starts for the call
(and stops afterwards), draws a progress bar on stderr, and writes the image atomically.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .protocol import Attachment, Client, ConnectionInfo, Event
from .protocol.atomicio import atomic_write
from .protocol.errors import InvalidParams


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="",
        help="repo id, diffusers folder or .safetensors (default: the embedded micro model)",
    )
    p.add_argument("--prompt", default="")
    p.add_argument("--negative", default="")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-image", type=Path, default=None, help="render to start from")
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--depth", type=Path, default=None, help="planar Z as .npy or .exr")
    p.add_argument("--depth-controlnet", default="", help="ControlNet for --depth")
    p.add_argument("--near", type=float, default=0.0, help="depth mapped to white")
    p.add_argument("--far", type=float, default=0.0, help="depth mapped to black")
    p.add_argument("--tileable", action="store_true", help="seamless on all edges")
    p.add_argument("--engine", default="sd")
    p.add_argument("--out", type=Path, required=True, help="output image (.png)")


def _image_input(path: Path) -> Attachment:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgba = np.ascontiguousarray(np.asarray(img.convert("RGBA")))
    except OSError as exc:
        raise InvalidParams(
            f"cannot read the init image {path}: {exc}", field="--init-image"
        ) from None
    return Attachment.array("image", rgba, "uint8", rgba.shape, "srgb")


def _depth_input(path: Path) -> Attachment:
    import numpy as np

    if path.suffix.lower() == ".npy":
        depth = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".exr":
        # Blender's multilayer EXR ("<ViewLayer>.Depth.Z", one part per pass in 5.0) or a
        # plain one ("Z"); a file of one unnamed grey channel is taken as depth too.
        from .imaging.passes import read_channels, read_passes

        try:
            depth = read_passes(path).depth
        except InvalidParams as exc:
            if exc.field != "inputs.passes":
                raise InvalidParams(str(exc), field="--depth", allowed=exc.allowed) from None
            depth = None
        if depth is None:
            channels = read_channels(path)
            if len(channels) != 1:
                raise InvalidParams(
                    f"no depth channel (Z) in {path}: it has {sorted(channels)}",
                    field="--depth",
                    allowed=["Z", "<layer>.Depth.Z"],
                )
            depth = next(iter(channels.values()))
    else:
        raise InvalidParams(
            f"depth must be .npy or .exr, not {path.suffix}",
            field="--depth",
            allowed=[".npy", ".exr"],
        )
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    if depth.ndim == 3:
        depth = np.ascontiguousarray(depth[..., 0])
    return Attachment.array("depth", depth, "float32", depth.shape, "linear")


def request(args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Attachment]]:
    params: dict[str, Any] = {
        "model": args.model,
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "tileable": args.tileable,
    }
    inputs: dict[str, Attachment] = {}
    task = "txt2img"
    if args.init_image is not None:
        inputs["image"] = _image_input(args.init_image)
        params["strength"] = args.strength
        task = "img2img"
    if args.depth is not None:
        inputs["depth"] = _depth_input(args.depth)
        params.update(depth_controlnet=args.depth_controlnet, near=args.near, far=args.far)
        task = "control"
    return task, params, inputs


class ProgressBar:
    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream

    def __call__(self, ev: Event) -> None:
        if ev.type == "progress":
            d = ev.data
            width = 30
            done = int(width * d["step"] / max(d["steps"], 1))
            eta = f" eta {d['eta']:.1f}s" if d.get("eta") is not None else ""
            self.stream.write(
                f"\r[{'#' * done}{'.' * (width - done)}] {d['step']}/{d['steps']}{eta}   "
            )
            self.stream.flush()
        elif ev.type == "result":
            self.stream.write("\n")
            for warning in ev.data.get("warnings", []):
                self.stream.write(f"warning: {warning}\n")


@contextmanager
def private_sidecar() -> Iterator[Path]:
    """A sidecar of our own for one call, in a temporary state dir."""
    with tempfile.TemporaryDirectory(prefix="genart-generate-") as tmp:
        conn = Path(tmp) / "connection.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--state-dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if ConnectionInfo.read(conn).pid == proc.pid:
                        break
                except (OSError, ValueError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise InvalidParams(
                        f"could not start a sidecar: {err.strip()[-300:]}", field="sidecar"
                    )
                time.sleep(0.05)
            yield conn
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def generate(args: argparse.Namespace, client: Client) -> int:
    task, params, inputs = request(args)
    job = client.submit(args.engine, params, task=task, inputs=inputs)
    client.wait(job, ProgressBar())
    img = client.result(job).attachments["image"]
    from PIL import Image

    assert img.shape is not None
    h, w, _ = img.shape
    buf = io.BytesIO()
    Image.frombuffer("RGBA", (w, h), bytes(img.data), "raw", "RGBA", 0, 1).save(
        buf, format=(args.out.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")
    )
    atomic_write(args.out, buf.getvalue())
    print(args.out)
    return 0
