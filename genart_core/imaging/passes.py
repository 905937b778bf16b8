"""Blender's render passes from a multilayer EXR, as numpy arrays in our conventions.

The add-on captures one multilayer EXR per view (DESIGN §4): Blender 5.0 writes it as a
multi-part file, one part per pass (`ViewLayer.Combined`, `ViewLayer.Depth`, ...); older
versions and other tools write one part holding every channel. Both read the same here.
Channels are named `<view layer>.<pass>.<channel>`; when a file holds several view layers,
the caller names one.

Conventions of the arrays returned (DESIGN §9): rows top to bottom (an EXR's own order;
only Blender's `Image.pixels` buffers are bottom-up), depth is planar Z in scene units
with the background as +inf, normals are world space, vectors are Blender's pixel-unit
(x, y, z, w), object indices are integers (the capture's temporary unique ids).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protocol.errors import InvalidParams

# Cycles and EEVEE write the background's Z as 1e10 ("very far"); anything this far is no
# geometry a camera could frame, so it becomes +inf, which disparity maps to 0.
BACKGROUND_Z = 1e9

PASSES = {  # our name -> (Blender's pass name, its channels in order)
    "combined": ("Combined", ("R", "G", "B", "A")),
    "depth": ("Depth", ("Z",)),
    "normal": ("Normal", ("X", "Y", "Z")),
    "vector": ("Vector", ("X", "Y", "Z", "W")),
    "object_index": ("Object Index", ("X",)),  # 4.5 spells it "IndexOB" (ALIASES)
    "position": ("Position", ("X", "Y", "Z")),
}

ALIASES = {"object_index": ("IndexOB",)}  # older Blender's pass names
# A compositor File Output node (multilayer) names channels `<input>.<channel>` with no view
# layer, and by its input's socket type: values `V`, vectors `X Y Z`, colours `R G B A`
# (measured in the bpy 5.0.1 wheel). Stylize renders writes the passes that way.
FILE_OUTPUT = {
    "depth": ("V",),
    "normal": ("X", "Y", "Z"),
    "vector": ("R", "G", "B", "A"),
    "object_index": ("V",),
    "position": ("X", "Y", "Z"),
}


@dataclass(frozen=True)
class Passes:
    """One view's passes; a pass the render did not write is None."""

    layer: str
    combined: np.ndarray | None = None  # (H, W, 4) float32, scene-linear
    depth: np.ndarray | None = None  # (H, W) float32, planar Z, +inf background
    normal: np.ndarray | None = None  # (H, W, 3) float32, world space
    vector: np.ndarray | None = None  # (H, W, 4) float32, pixels (see DESIGN §4)
    object_index: np.ndarray | None = None  # (H, W) int32, 0 = background / no id
    position: np.ndarray | None = None  # (H, W, 3) float32, world space
    header: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the passes."""
        for name in PASSES:
            arr = getattr(self, name)
            if arr is not None:
                return int(arr.shape[1]), int(arr.shape[0])
        return 0, 0

    def present(self) -> list[str]:
        return [name for name in PASSES if getattr(self, name) is not None]


def read_channels(source: bytes | Path | str) -> dict[str, np.ndarray]:
    """Every channel of every part of an EXR, by full name, as float32 arrays."""
    return _channels(source)[0]


def _channels(source: bytes | Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every channel of every part, by full name; the first part's text header fields."""
    try:
        import OpenEXR
    except ImportError:
        raise InvalidParams(
            "reading EXR passes needs the openexr package (pip install openexr)",
            field="inputs.passes",
        ) from None
    try:
        if isinstance(source, bytes):
            exr = OpenEXR.File(io.BytesIO(source), separate_channels=True)
        else:
            exr = OpenEXR.File(str(source), separate_channels=True)
    except Exception as exc:  # the binding raises RuntimeError/ValueError/OSError alike
        raise InvalidParams(
            f"cannot read the EXR passes ({exc})", field="inputs.passes", allowed=["exr"]
        ) from None
    channels: dict[str, np.ndarray] = {}
    header: dict[str, str] = {}
    with exr:
        for i, part in enumerate(exr.parts):
            if i == 0:
                header = {k: v for k, v in part.header.items() if isinstance(v, str)}
            for name, ch in part.channels.items():
                channels[name] = np.asarray(ch.pixels)
    return channels, header


def view_layers(names: Iterable[str]) -> list[str]:
    """The view layers present, from channel names `<layer>.<pass>.<channel>`."""
    layers: list[str] = []
    for name in names:
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] not in layers:
            layers.append(parts[0])
    return layers


def read_passes(source: bytes | Path | str, layer: str | None = None) -> Passes:
    """Decode a multilayer EXR (its bytes or its path) into `Passes`.

    `layer` picks a view layer; None takes the only one (an error if there are several).
    A file of plain channels (`R`, `G`, `B`, `Z`...) or of a File Output node's channels
    (`Depth.V`, `Vector.R`...) reads as a layer named "".
    """
    channels, header = _channels(source)
    layers = view_layers(channels)
    if layer is None:
        if len(layers) > 1:
            raise InvalidParams(
                f"the EXR holds {len(layers)} view layers; name one",
                field="params.view_layer",
                allowed=layers,
            )
        layer = layers[0] if layers else ""
    elif layer not in layers:
        raise InvalidParams(
            f"no view layer {layer!r} in the EXR", field="params.view_layer", allowed=layers
        )
    prefix = f"{layer}." if layer else ""
    found: dict[str, np.ndarray] = {}
    for ours, (blender, chans) in PASSES.items():
        names = [f"{prefix}{blender}.{c}" for c in chans]
        for alias in ALIASES.get(ours, ()):
            if names[0] not in channels and f"{prefix}{alias}.{chans[0]}" in channels:
                names = [f"{prefix}{alias}.{c}" for c in chans]
        if not layer and ours == "combined":
            names = list(chans)
        elif not layer and ours == "depth":
            names = ["Z"]
        if not layer and ours in FILE_OUTPUT and not all(n in channels for n in names):
            names = [f"{blender}.{c}" for c in FILE_OUTPUT[ours]]
        if not all(n in channels for n in names):
            continue
        arrs = [channels[n].astype(np.float32, copy=False) for n in names]
        found[ours] = arrs[0] if len(arrs) == 1 else np.stack(arrs, axis=2)
    if not found:
        raise InvalidParams(
            f"no render passes for view layer {layer!r} in the EXR "
            f"(channels: {sorted(channels)[:12]})",
            field="inputs.passes",
        )
    if "depth" in found:
        depth = found["depth"].copy()
        depth[~(depth < BACKGROUND_Z)] = np.inf  # NaN too: no geometry there
        found["depth"] = depth
    if "object_index" in found:
        found["object_index"] = np.rint(found["object_index"]).astype(np.int32)
    shapes = {k: v.shape[:2] for k, v in found.items()}
    if len(set(shapes.values())) != 1:
        raise InvalidParams(f"passes differ in size: {shapes}", field="inputs.passes")
    return Passes(layer=layer, header=header, **found)


def camera_space_normals(normals: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """World-space normals (H, W, 3) → camera space (+x right, +y up, +z to the viewer).

    `cam_to_world` is the camera's 3×3 rotation (or its 4×4 matrix_world; only the
    rotation is used, scale removed). Zero normals (background) stay zero.
    """
    m = np.asarray(cam_to_world, dtype=np.float64)
    rot = m.reshape(4, 4)[:3, :3] if m.size == 16 else m.reshape(3, 3)
    rot = rot / np.linalg.norm(rot, axis=0, keepdims=True)  # drop a scaled camera's scale
    return (np.asarray(normals, dtype=np.float64) @ rot).astype(np.float32)  # (R^T n)


def object_ids(passes: Passes) -> list[int]:
    """The object ids present in the object-index pass (0, the background, excluded)."""
    if passes.object_index is None:
        return []
    return sorted(int(i) for i in np.unique(passes.object_index) if i != 0)


def write_passes(path: Path, passes: dict[str, np.ndarray], layer: str = "ViewLayer") -> None:
    """Write arrays as a Blender-style multi-part EXR (for tests and tools), uncompressed."""
    import OpenEXR

    parts = []
    for ours, arr in passes.items():
        blender, chans = PASSES[ours]
        a = np.asarray(arr, dtype=np.float32)
        a = a[..., None] if a.ndim == 2 else a
        chs = {
            f"{layer}.{blender}.{c}": np.ascontiguousarray(a[..., i]) for i, c in enumerate(chans)
        }
        header = {"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage}
        parts.append(OpenEXR.Part(header, chs, f"{layer}.{blender}"))
    with OpenEXR.File(parts) as exr:
        exr.write(str(path))


__all__ = [
    "ALIASES",
    "BACKGROUND_Z",
    "PASSES",
    "Passes",
    "camera_space_normals",
    "object_ids",
    "read_channels",
    "read_passes",
    "view_layers",
    "write_passes",
]
