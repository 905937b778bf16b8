"""Procedural, tileable, captioned textures in numpy: the data the micro models train on
(see `procedural`; `painters` holds the periodic fields and the family painters)."""

from .procedural import (
    CAPTIONS,
    COLOURS,
    FAMILIES,
    FAMILY_WORDS,
    HELD_OUT,
    Colour,
    ColourStats,
    Sample,
    TextureDataset,
    caption,
    colour_stats,
    crop,
    dataset,
    pairs,
    render,
    vocabulary,
)

__all__ = [
    "CAPTIONS",
    "COLOURS",
    "FAMILIES",
    "FAMILY_WORDS",
    "HELD_OUT",
    "Colour",
    "ColourStats",
    "Sample",
    "TextureDataset",
    "caption",
    "colour_stats",
    "crop",
    "dataset",
    "pairs",
    "render",
    "vocabulary",
]
