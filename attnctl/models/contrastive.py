"""A tiny CLIP (text tower + image tower) for the shapes world, its contrastive loss and its binding probe.

The text tower is exactly the embedded model's ``CLIPTextModel`` config, so once trained it is frozen and
reused as a ``StableDiffusionPipeline`` text encoder (``scripts/train_clip_model.py``). The objective is
CLIP's plain symmetric InfoNCE over a batch (Radford et al. 2021, Fig. 3), with no hard negatives, so it
has no reason to learn which colour goes with which shape: the bag-of-words weakness this model is for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .training import text_config, tokenize

EMBED_DIM = 64
IMAGE_SIZE = 64
PATCH_SIZE = 16


def build_clip(tokenizer):
    """``CLIPModel``: the shared text tower config and a ViT image tower (64x64, 16x16 patches, width 64)."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
    )
    config = CLIPConfig(
        text_config=text_config(tokenizer).to_dict(), vision_config=vision.to_dict(), projection_dim=EMBED_DIM
    )
    return CLIPModel(config)


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric cross-entropy over cosine similarities times exp(logit_scale) (Radford et al. 2021, Fig. 3).

    ``image_embeds`` and ``text_embeds`` are (batch, dim) with row i of each a matching pair.
    """
    images = F.normalize(image_embeds, dim=-1)  # (B, D)
    texts = F.normalize(text_embeds, dim=-1)  # (B, D)
    logits = logit_scale.exp() * images @ texts.T  # (B images, B texts)
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def clip_step_loss(clip, tokenizer, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """:func:`contrastive_loss` of a batch of images (batch, 3, 64, 64) in [-1, 1] and their captions."""
    image_embeds = clip.get_image_features(pixel_values=images)  # (B, D)
    text_embeds = clip.get_text_features(input_ids=tokenize(tokenizer, captions))  # (B, D)
    return contrastive_loss(_tensor(image_embeds), _tensor(text_embeds), clip.logit_scale)


def _tensor(features) -> torch.Tensor:
    """transformers returns a bare tensor or an output object holding ``pooler_output``, by version."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@torch.no_grad()
def text_embeddings(clip, tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Unit-norm projected text embeddings (batch, D)."""
    return F.normalize(_tensor(clip.get_text_features(input_ids=tokenize(tokenizer, list(captions)))), dim=-1)


@torch.no_grad()
def image_embeddings(clip, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm projected image embeddings (batch, D) of images (batch, 3, 64, 64) in [-1, 1]."""
    return F.normalize(_tensor(clip.get_image_features(pixel_values=images)), dim=-1)


def twin_retrieval(queries: torch.Tensor, correct: torch.Tensor, twins: torch.Tensor) -> torch.Tensor:
    """Per query, whether it is more similar to its correct caption than to the attribute-swapped twin.

    All three are unit-norm (batch, D), row i belonging together; returns a bool tensor (batch,). A
    bag-of-words encoder gives twin == correct and scores 0 (ties count as failures); chance is 1/2.
    """
    return (queries * correct).sum(-1) > (queries * twins).sum(-1)
