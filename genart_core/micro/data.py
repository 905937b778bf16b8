"""Training data from a user's folder of images (`genart train diffusion --data DIR`).

Each image (PNG, JPEG, WebP, TIFF, BMP) gives size×size crops at random positions
(wrapping around its edges, as tileable textures do); its caption is the text of a
same-named .txt file next to it, else its file name with `_`/`-` as spaces and digits
dropped ("red_bricks_03.png" → "red bricks"). Indexing is deterministic in (seed, index),
like the procedural `dataset`, so training on a folder resumes exactly too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..textures.procedural import crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class FolderSample:
    image: np.ndarray  # (size, size, 3) uint8
    caption: str


def caption_for(path: Path) -> str:
    text = path.with_suffix(".txt")
    if text.is_file():
        return " ".join(text.read_text(encoding="utf-8").split())
    words = re.sub(r"[_\-]+", " ", re.sub(r"\d+", " ", path.stem))
    return " ".join(words.split())


class FolderDataset:
    def __init__(self, folder: Path, size: int, seed: int) -> None:
        if not folder.is_dir():
            raise ValueError(f"--data {folder} is not a folder")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"--data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.size, self.seed = size, seed
        self.captions = [caption_for(p) for p in self.paths]
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**31 - 1

    def words(self) -> set[str]:
        """Every caption word, lower case (for the tokenizer's vocabulary)."""
        return {w for c in self.captions for w in re.findall(r"\w+", c.lower())}

    def _image(self, k: int) -> np.ndarray:
        if k not in self._images:
            from PIL import Image

            with Image.open(self.paths[k]) as im:
                self._images[k] = np.asarray(im.convert("RGB"))
        return self._images[k]

    def __getitem__(self, index: int) -> FolderSample:
        n = len(self.paths)
        block, pos = divmod(index, n)
        k = int(np.random.default_rng([self.seed, block]).permutation(n)[pos])
        rng = np.random.default_rng([self.seed, index, 1])
        return FolderSample(crop(self._image(k), self.size, rng), self.captions[k])


def folder_dataset(folder: Path, size: int, seed: int) -> FolderDataset:
    return FolderDataset(folder, size, seed)
