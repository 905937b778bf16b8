"""The micro Stable Diffusion model's parts (issue 8): a word-level tokenizer built offline
from the procedural captions' vocabulary (with synonyms), and the configurations of its
text encoder, autoencoder, UNet and scheduler. Together they form a standard diffusers
`StableDiffusionPipeline` folder that the generic loader (`engines/sd/loading.py`) reads.

Why these choices (DESIGN §3 "Micro models", docs/micro-models.md):
- The autoencoder is an `AutoencoderKL` with downsampling ×4 (64² images → 16×16×4
  latents): `StableDiffusionPipeline` and everything built on it (img2img, ControlNet,
  tileable circular padding) take it as is, where a `VQModel` cannot be its `vae`.
- The scheduler is zero-terminal-SNR with v-prediction and trailing timesteps: with the
  default schedule 16×16 latents leak the mean colour through the initial noise and the
  model ignores colour words. It lives in scheduler_config.json, so loading needs no code.
- Tokenizer: word-level (a `tokenizers` WordLevel model in tokenizer.json, loaded as
  transformers' `PreTrainedTokenizerFast`). Its normaliser replaces synonyms ("crimson",
  "navy", "timber") by the trained word they mean; any other word becomes `<|unk|>`, which
  training inserts at random so the model learns to ignore it (the `sd` engine reports
  them in the result's warnings). A BPE `CLIPTokenizer` cannot do this: its merges need
  every sub-word piece in the vocabulary with an id of its own, so an unknown word would
  read as meaningful pieces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..textures import vocabulary

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_TOKENS = 32  # BOS + 30 words + EOS; captions have ≤ 5 words, prompts in the wild more

# Words artists use for what the model was trained on. Each maps onto a trained word (its
# token id), so the model understands them without ever having seen them in a caption.
SYNONYMS: dict[str, str] = {
    # colours
    "crimson": "red",
    "scarlet": "red",
    "ruby": "red",
    "maroon": "red",
    "amber": "orange",
    "tangerine": "orange",
    "rust": "orange",
    "golden": "yellow",
    "gold": "yellow",
    "lemon": "yellow",
    "mustard": "yellow",
    "emerald": "green",
    "olive": "green",
    "lime": "green",
    "jade": "green",
    "navy": "blue",
    "azure": "blue",
    "cobalt": "blue",
    "cyan": "blue",
    "teal": "blue",
    "violet": "purple",
    "lilac": "purple",
    "lavender": "purple",
    "magenta": "purple",
    "rose": "pink",
    "salmon": "pink",
    "fuchsia": "pink",
    "tan": "brown",
    "chocolate": "brown",
    "beige": "brown",
    "walnut": "brown",
    "ivory": "white",
    "snow": "white",
    "cream": "white",
    "ebony": "black",
    "charcoal": "black",
    "onyx": "black",
    # materials and patterns
    "brickwork": "bricks",
    "masonry": "bricks",
    "tiled": "tiles",
    "tiling": "tiles",
    "mosaic": "tiles",
    "plank": "planks",
    "floorboards": "planks",
    "timber": "wood",
    "parquet": "planks",
    "marbled": "marble",
    "cobblestone": "stones",
    "cobblestones": "stones",
    "pebbles": "stones",
    "rock": "stone",
    "rocks": "stones",
    "rocky": "stone",
    "granite": "stone",
    "striped": "stripes",
    "stripy": "stripes",
    "lines": "stripes",
    "checkered": "checker",
    "chequered": "checker",
    "checkerboard": "checker",
    "checkers": "checker",
    "chessboard": "checker",
    "dotted": "dots",
    "spots": "dots",
    "spotted": "dots",
    "dot": "dots",
    "cloudy": "clouds",
    "sky": "clouds",
    "walls": "wall",
    "floors": "floor",
    "patterns": "pattern",
    "textures": "texture",
    "an": "a",
}
# (grey/gray are not synonyms of anything trained: the ten colour words have no grey.)


@dataclass(frozen=True)
class MicroSDConfig:
    """The shape of every part; `build_pipeline` turns it into a pipeline."""

    # text encoder (CLIPTextModel)
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # autoencoder (AutoencoderKL, 3 levels = ×4)
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_groups: int = 8  # small groups: 32 groups of ≤ 2 channels normalise colour away
    latent_channels: int = 4
    # UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_groups: int = 16
    unet_head_dim: int = 16
    size: int = 64  # pixels; latents are size / 4

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vae_channels"], d["unet_channels"] = list(self.vae_channels), list(self.unet_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MicroSDConfig:
        return cls(
            **{
                **d,
                "vae_channels": tuple(d["vae_channels"]),
                "unet_channels": tuple(d["unet_channels"]),
            }
        )


def token_words() -> tuple[str, ...]:
    """The trained words, in id order after the three special tokens."""
    return vocabulary()


def write_tokenizer(folder: Path, extra_words: Iterable[str] = ()) -> None:
    """tokenizer.json + tokenizer_config.json of a word-level tokenizer (transformers'
    `PreTrainedTokenizerFast`): lower-cased, punctuation dropped, synonyms replaced by the
    word they mean (its normaliser), one token per trained word, any other `<|unk|>`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = token_ids(extra_words)
    backend = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    by_target: dict[str, list[str]] = {}
    for w, target in SYNONYMS.items():
        by_target.setdefault(target, []).append(w)
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^\w\s]"), " "),
            *(
                normalizers.Replace(Regex(rf"\b({'|'.join(ws)})\b"), target)
                for target, ws in sorted(by_target.items())
            ),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )
    tok.save_pretrained(folder)
    check_tokenizer(load_tokenizer(folder), extra_words)


def token_ids(extra_words: Iterable[str] = ()) -> dict[str, int]:
    """Every token string → id: the special tokens, the procedural captions' words, then
    `extra_words` (a user's captions) not already there, sorted."""
    words = (*token_words(), *sorted(set(extra_words) - set(token_words()) - set(SYNONYMS)))
    unknown = sorted(set(SYNONYMS.values()) - set(words))
    if unknown:
        raise ValueError(f"synonyms map onto words no caption holds: {unknown}")
    ids = {BOS: 0, EOS: 1, UNK: 2}
    for w in words:
        ids[w] = len(ids)
    return ids


def load_tokenizer(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def vocab_size(tokenizer: Any) -> int:
    return max(tokenizer.get_vocab().values()) + 1


def check_tokenizer(tok: Any, extra_words: Iterable[str] = ()) -> None:
    """Every trained word and synonym is exactly one token with the right id."""
    vocab = token_ids(extra_words)
    bad = []
    for w in (*vocab.keys() - {BOS, EOS, UNK}, *SYNONYMS):
        ids = tok(w, add_special_tokens=False).input_ids
        want = vocab[SYNONYMS.get(w, w)]
        if ids != [want]:
            bad.append(f"{w}→{ids}")
    if bad:
        raise ValueError(f"tokenizer splits or misreads words: {', '.join(bad[:10])}")


def build_pipeline(cfg: MicroSDConfig, tokenizer_folder: Path, seed: int = 0) -> Any:
    """A fresh, untrained micro `StableDiffusionPipeline` (float32), deterministic in seed."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer(tokenizer_folder)
    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=2 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_groups,
        sample_size=cfg.size,
        scaling_factor=1.0,  # set from the trained encoder's latents (train_sd)
    )
    m = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.size // 2 ** (n - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        norm_num_groups=cfg.unet_groups,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_head_dim,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
"""DDIM, zero terminal SNR, v-prediction, trailing timesteps (DESIGN §3)."""
