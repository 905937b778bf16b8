"""What models are on this machine: the Hugging Face cache, configured folders, single files.

Scanning reads file headers and configs only (no torch): a diffusers folder's
`model_index.json` / `config.json`, a `.safetensors` file's tensor names. Each model gets
a family (sd1, sd2, sdxl, ...), a kind (base, controlnet, lora, vae, taesd, vqgan, ...),
its size and a content hash. Hashing gigabytes is slow, so hashes are cached by path,
size and modification time in a JSON file of the sidecar's state dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .protocol.atomicio import atomic_write

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
CLASS_KINDS = {
    "ControlNetModel": ("controlnet", None),
    "VQModel": ("vqgan", "vqgan"),
    "AutoencoderTiny": ("taesd", None),
    "AutoencoderKL": ("vae", None),
    "UNet2DConditionModel": ("unet", None),
}


@dataclass(frozen=True)
class ModelEntry:
    id: str  # a repo id for cache entries, else the path
    path: str
    source: str  # hf_cache | folder | file
    family: str  # sd1 | sd2 | sdxl | vqgan | amused | unknown
    kind: str  # base | controlnet | lora | vae | taesd | vqgan | unet | unknown
    size: int
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_roots() -> list[Path]:
    """Folders from GENART_MODELS (os.pathsep-separated)."""
    env = os.environ.get("GENART_MODELS", "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def hf_cache_dir() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    home = os.environ.get("HF_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "huggingface") / "hub"


class HashCache:
    """sha256 of files, remembered by (path, size, mtime) across sidecar runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list[Any]] = {}
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                self._data = {}

    def file_hash(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        with self._lock:
            known = self._data.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return str(known[2])
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._data[key] = [st.st_size, st.st_mtime_ns, value]
        return value

    def save(self) -> None:
        if self.path is not None:
            with self._lock:
                data = json.dumps(self._data).encode()
            atomic_write(self.path, data, sync=False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def folder_hash(folder: Path, hashes: HashCache) -> str:
    """One hash for a diffusers folder: its files' paths and contents."""
    digest = hashlib.sha256()
    for file in _files(folder):
        digest.update(str(file.relative_to(folder).as_posix()).encode() + b"\0")
        digest.update(hashes.file_hash(file).encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def classify_folder(folder: Path) -> tuple[str, str] | None:
    """(family, kind) of a diffusers folder, or None when it is not one."""
    index = folder / "model_index.json"
    if index.is_file():
        cls = str(_read_json(index).get("_class_name", ""))
        if "XL" in cls:
            return "sdxl", "base"
        if cls.startswith("Amused"):
            return "amused", "base"
        if cls.startswith("StableDiffusion") or cls.startswith("AutoPipeline"):
            dim = _read_json(folder / "unet" / "config.json").get("cross_attention_dim")
            return ("sd2" if dim == 1024 else "sd1"), "base"
        return "unknown", "base"
    config = folder / "config.json"
    if config.is_file():
        data = _read_json(config)
        kind, family = CLASS_KINDS.get(str(data.get("_class_name", "")), ("unknown", None))
        if family is None:
            dim = data.get("cross_attention_dim")
            family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(dim, "unknown")  # type: ignore[arg-type]
        return family, kind
    return None


def classify_file(file: Path) -> tuple[str, str]:
    """(family, kind) of a single-file checkpoint, from its tensor names alone."""
    from .engines.sd import singlefile

    if not singlefile.is_safetensors(file):
        return "unknown", "unknown"  # pickle: not opened here, never executed
    try:
        header = singlefile.read_header(file)
    except Exception:  # a damaged or foreign file is listed, not fatal
        return "unknown", "unknown"
    names = [k for k in header if k != "__metadata__"]
    if any("lora" in k.lower() for k in names):
        return "unknown", "lora"
    try:
        family = singlefile.detect_family(file)
    except Exception:
        if any(k.startswith(("encoder.down", "decoder.up")) for k in names):
            return "unknown", "vae"
        return "unknown", "unknown"
    if family.startswith("controlnet"):
        return "sd1", "controlnet"
    return {"sd15": "sd1", "sd2_v": "sd2"}.get(family, family), "base"


def _cache_entries(cache: Path) -> Iterator[tuple[str, Path]]:
    if not cache.is_dir():
        return
    for repo_dir in sorted(cache.glob("models--*")):
        repo_id = repo_dir.name[len("models--") :].replace("--", "/")
        snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            yield repo_id, snapshots[-1]


def scan(
    roots: Iterable[Path], *, hf_cache: Path | None, hashes: HashCache, with_hash: bool = True
) -> list[ModelEntry]:
    entries: list[ModelEntry] = []

    def add(ident: str, path: Path, source: str) -> None:
        if path.is_dir():
            found = classify_folder(path)
            if found is None:
                return
            files = _files(path)
            size = sum(f.stat().st_size for f in files)
            digest = folder_hash(path, hashes) if with_hash else None
        else:
            found = classify_file(path)
            size = path.stat().st_size
            digest = hashes.file_hash(path) if with_hash else None
        entries.append(ModelEntry(ident, str(path), source, found[0], found[1], size, digest))

    if hf_cache is not None:
        for repo_id, snapshot in _cache_entries(hf_cache):
            add(repo_id, snapshot, "hf_cache")
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and classify_folder(child) is not None:
                add(str(child), child, "folder")
            elif child.is_file() and child.suffix.lower() in WEIGHT_SUFFIXES:
                add(str(child), child, "file")
    hashes.save()
    return entries
