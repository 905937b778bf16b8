"""The project's own micro models (issue 8), trained here on the procedural textures.

Submodules (torch and diffusers needed): `vqgan` + `train_vqgan` (the micro VQGAN), `sd` +
`train_sd` (the micro Stable Diffusion pipeline), `quality` (what generation means,
measured), `train_cli` (`genart train`). This module itself is stdlib only: it names the
embedded model that the `sd` engine uses when a request names none, and checks its files
against the content hashes pinned here (weights are committed once and retrained only
with a measured reason: docs/micro-models.md).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

EMBEDDED_NAME = "genart-micro-sd"
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / EMBEDDED_NAME
PINS_FILE = EMBEDDED_DIR.parent / "pins.json"
CONTROLNET_DIR = "controlnet"  # the depth ControlNet, inside the pipeline folder


class EmbeddedModelError(RuntimeError):
    """The embedded model's files are missing or differ from their pinned hashes."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pins_file() -> dict[str, Any]:
    """weights/pins.json as it is on disk ({} when absent), parsed once per version: the
    `sd` engine asks on every request (`has_embedded_controlnet`)."""
    if not PINS_FILE.is_file():
        return {}
    return _parsed(str(PINS_FILE), PINS_FILE.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _parsed(path: str, mtime_ns: int) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def pins() -> dict[str, str]:
    """Relative path → sha256 of every file of the embedded model (weights/pins.json)."""
    meta = _pins_file()
    return dict(meta["files"]) if meta else {}


def folder_digest(files: dict[str, str]) -> str:
    """One hash for the whole model: sha256 over the sorted "path sha" lines."""
    lines = "".join(f"{p} {s}\n" for p, s in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@cache
def embedded_model() -> Path | None:
    """The embedded model's folder after checking every file against its pin; None when
    the checkout has no embedded model. Raises EmbeddedModelError on a mismatch."""
    expected = pins()
    if not expected:
        return None
    for rel, sha in expected.items():
        f = EMBEDDED_DIR / rel
        if not f.is_file():
            raise EmbeddedModelError(f"embedded model file missing: {f}")
        got = _sha256(f)
        if got != sha:
            raise EmbeddedModelError(
                f"embedded model file {f} has sha256 {got[:16]}…, pinned {sha[:16]}…: "
                "restore it from git (git checkout -- genart_core/micro/weights)"
            )
    return EMBEDDED_DIR


def has_embedded_controlnet() -> bool:
    """Whether the embedded model ships its depth ControlNet (from the pins: cheap)."""
    return f"{CONTROLNET_DIR}/config.json" in pins()


def embedded_controlnet() -> Path | None:
    """The embedded depth ControlNet's folder (checked with the whole model); None when
    this installation has none."""
    folder = embedded_model()
    if folder is None or not has_embedded_controlnet():
        return None
    return folder / CONTROLNET_DIR


def embedded_info() -> dict[str, Any] | None:
    """What the handshake says about the default model (no hashing: cheap)."""
    expected = pins()
    if not expected:
        return None
    meta = _pins_file()
    return {
        "name": EMBEDDED_NAME,
        "path": str(EMBEDDED_DIR),
        "sha256": folder_digest(expected),
        "size_bytes": int(meta.get("size_bytes", 0)),
        "native_size": int(meta.get("native_size", 64)),
        "controls": ["depth"] if has_embedded_controlnet() else [],
        "notes": list(meta.get("notes", [])),
    }
