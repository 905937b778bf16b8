"""Tiny real VQGAN-family models built from configs on the CPU (random weights, no
downloads): a diffusers VQModel, a transformers CLIPModel with its tokenizer, and an
aMUSEd pipeline, each saved the way the engines load them."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
from sdtiny import tiny_tokenizer
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
)

TEXT = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 128,
    "max_position_embeddings": 16,
}


def tiny_vqmodel(seed: int = 0, codes: int = 64) -> VQModel:
    """3 levels (4× downsampling), attention on the coarsest like taming's f16 VQGANs."""
    torch.manual_seed(seed)
    vq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=8,
        vq_embed_dim=8,
        num_vq_embeddings=codes,
        norm_num_groups=32,
        sample_size=32,
    )
    # taming initialises the codebook uniformly in ±1/n: codes all but equal. Spread them
    # like a trained codebook so that different codes decode to different pixels.
    torch.nn.init.normal_(vq.quantize.embedding.weight, std=1.0)
    return vq.eval()


def build_tiny_vqgan(out: Path, seed: int = 0) -> Path:
    tiny_vqmodel(seed).save_pretrained(out)
    return out


def build_tiny_clip(out: Path, seed: int = 1) -> Path:
    """A CLIPModel (32-px images, 8-px patches) with a tokenizer in the same folder."""
    torch.manual_seed(seed)
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
    }
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=32))
    tokenizer = tiny_tokenizer(out)  # writes vocab.json + merges.txt into `out`
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_amused(out: Path, seed: int = 2) -> Path:
    """UVit2DModel + VQModel (4× downsampling, codebook lookup) + CLIP text encoder."""
    torch.manual_seed(seed)
    transformer = UVit2DModel(
        hidden_size=32,
        use_bias=False,
        hidden_dropout=0.0,
        cond_embed_dim=32,
        micro_cond_encode_dim=2,
        micro_cond_embed_dim=10,
        encoder_hidden_size=32,
        vocab_size=65,
        codebook_size=64,
        in_channels=32,
        block_out_channels=32,
        num_res_blocks=1,
        downsample=True,
        upsample=True,
        block_num_heads=1,
        num_hidden_layers=1,
        num_attention_heads=1,
        attention_dropout=0.0,
        intermediate_size=32,
        layer_norm_eps=1e-6,
        ln_elementwise_affine=True,
        sample_size=8,
    )
    vq = VQModel(
        block_out_channels=(32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        in_channels=3,
        out_channels=3,
        latent_channels=32,
        layers_per_block=1,
        norm_num_groups=8,
        num_vq_embeddings=64,
        sample_size=32,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
    )
    text = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT, projection_dim=32))
    pipe = AmusedPipeline(
        vqvae=vq,
        tokenizer=tiny_tokenizer(out / "_tok"),
        text_encoder=text,
        transformer=transformer,
        scheduler=AmusedScheduler(mask_token_id=64),
    )
    pipe.save_pretrained(out / "amused")
    return out / "amused"
