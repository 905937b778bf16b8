"""Tiny real Stable Diffusion models built from configs on the CPU, saved as diffusers
folders: the real architectures' classes and loading code, random weights, 64² native.

Used by the tests (through tests/sdtiny.py) and by the demo (dev/demo.py), which stand
them in for the embedded micro models (issue 8): they run the real pipelines end to end,
but being untrained they paint coloured noise, not pictures. Needs torch, diffusers and
transformers (the project's `engines` extra); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = ["a", "red", "blue", "green", "brick", "wall", "stone", "wood", "marble", "sky"]


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose every word is one token (no downloads)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab_tokens = specials + letters + [c + "</w>" for c in letters] + [w + "</w>" for w in WORDS]
    merges = ["#version: 0.2"]
    seen = set(letters) | {c + "</w>" for c in letters}
    for word in WORDS:  # merge left to right: r e d</w> → re d</w> → red</w>
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append(f"{a} {b}")
            merged = a + b
            if merged not in seen:
                seen.add(merged)
                if merged not in vocab_tokens:
                    vocab_tokens.append(merged)
            parts = [merged] + parts[2:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_tokens)}))
    (folder / "merges.txt").write_text("\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )


def _tiny_vae(sample_size: int) -> AutoencoderKL:
    """A 2-level AutoencoderKL: 2× downsampling, 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        sample_size=sample_size,
    )


def _text_config(**extra: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=16,
        **extra,
    )


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(folder: Path, seed: int = 0, sample_size: int = 32, levels: int = 2) -> Path:
    """`levels` UNet levels, cross-attention only on the coarsest (cheap at 256²)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64)[:levels],
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(sample_size * 2),
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=tiny_tokenizer(folder / "_tok"),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "sd")
    return folder / "sd"


def build_tiny_controlnet(sd_folder: Path, out: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    # Random, not zero, output convolutions: the control must change the image in tests.
    for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.5)
    net.save_pretrained(out)
    return out


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """The SDXL pipeline class with two text encoders and micro-conditioning, tiny."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )
    tokenizer = tiny_tokenizer(folder / "_tokxl")
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(64),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
    )
    pipe.save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def build_tiny_taesd(out: Path, seed: int = 2) -> Path:
    """An AutoencoderTiny whose decoder upsamples 2×, like the tiny VAEs above."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(out)
    return out


def build_tiny_lora(sd_folder: Path, out: Path, seed: int = 3) -> Path:
    """A LoRA for the tiny SD UNet's attention, saved the way diffusers saves LoRAs."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    for name, param in unet.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (no effect): make it matter
            torch.nn.init.normal_(param, std=0.5)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    return out / "pytorch_lora_weights.safetensors"
