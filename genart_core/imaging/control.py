"""Control maps from the renderer's exact passes (DESIGN §9).

Depth is Blender's planar Z in scene units; background pixels are +inf. It becomes a
disparity map with the near/far that travel with the request, never a per-image min/max,
so every frame of a sequence (and every farm chunk) maps depth the same way. Normals
arrive in world space (Blender's Normal pass) and are turned into camera space with the
camera's rotation, then into the convention the normal ControlNet was trained on
(NormalBAE: red = left, green = up, blue = towards the viewer).
"""

from __future__ import annotations

import numpy as np

from ..protocol.errors import InvalidParams


def has_near_far(near: float, far: float) -> bool:
    """Whether near/far can map depth: finite with 0 < near < far."""
    return bool(np.isfinite(near) and np.isfinite(far) and 0 < near < far)


def check_near_far(near: float, far: float) -> None:
    if not has_near_far(near, far):
        raise InvalidParams(
            f"near and far must be finite with 0 < near < far, got near={near}, far={far}",
            field="params.near",
            allowed={"min": 0, "exclusive": True, "below": "far"},
        )


def depth_to_disparity(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Planar Z (H, W) → disparity in [0, 1]: 1 at `near`, 0 at `far` and beyond.

    Linear in 1/z, so equal steps in the map are equal steps in parallax, as depth
    estimators (MiDaS) that the depth ControlNets learnt from produce. +inf → 0.
    """
    check_near_far(near, far)
    z = np.asarray(depth, dtype=np.float64)
    if z.ndim != 2:
        raise InvalidParams(
            f"depth must be (H, W), got shape {list(z.shape)}", field="inputs.depth"
        )
    if np.isnan(z).any() or np.isneginf(z).any():
        raise InvalidParams("depth contains NaN or -inf", field="inputs.depth")
    if (z <= 0).any():
        raise InvalidParams("depth must be > 0 (planar Z in scene units)", field="inputs.depth")
    with np.errstate(divide="ignore"):
        inv = 1.0 / z  # inf → 0
    disp = (inv - 1.0 / far) / (1.0 / near - 1.0 / far)
    return np.clip(disp, 0.0, 1.0).astype(np.float32)


def normals_to_bae(
    normals: np.ndarray, cam_to_world: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """World-space normals (H, W, 3) → NormalBAE RGB in [0, 1] (H, W, 3).

    `cam_to_world` is the camera's 3×3 rotation (Blender: matrix_world.to_3x3()); camera
    space has +x right, +y up, +z towards the viewer. Pixels outside `mask` (or with a
    zero normal) get the neutral "facing the camera" colour (0.5, 0.5, 1.0).
    """
    n = np.asarray(normals, dtype=np.float64)
    if n.ndim != 3 or n.shape[2] != 3:
        raise InvalidParams(
            f"normal must be (H, W, 3), got shape {list(n.shape)}", field="inputs.normal"
        )
    if not np.isfinite(n).all():
        raise InvalidParams("normal contains NaN or inf", field="inputs.normal")
    rot = np.asarray(cam_to_world, dtype=np.float64).reshape(3, 3)
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4):
        raise InvalidParams(
            "camera_rotation must be a 3×3 rotation matrix (row-major)",
            field="params.camera_rotation",
        )
    cam = n @ rot  # (R^T n) for every pixel, as row vectors
    length = np.linalg.norm(cam, axis=2, keepdims=True)
    valid = length[..., 0] > 1e-6
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    cam = np.where(valid[..., None], cam / np.maximum(length, 1e-12), [0.0, 0.0, 1.0])
    bae = np.stack([-cam[..., 0], cam[..., 1], cam[..., 2]], axis=2)
    return ((bae + 1.0) * 0.5).astype(np.float32)


def fit_size(width: int, height: int, native_area: int, multiple: int) -> tuple[int, int]:
    """The generation size for a requested output size: the requested aspect ratio at
    about the model's native pixel area, each side a multiple of `multiple`."""
    scale = (native_area / float(width * height)) ** 0.5
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h
