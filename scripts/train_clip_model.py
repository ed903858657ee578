"""Train attnctl's CLIP-conditioned model the way Stable Diffusion was built, on CPU.

Two phases, each resumable (checkpoints every few minutes and at the end of a phase):
  1. a tiny CLIP (``attnctl.models.contrastive``): text tower + ViT image tower, CLIP's plain contrastive
     objective on rendered shape scenes and their captions (no hard negatives);
  2. a ``UNet2DConditionModel`` on the FROZEN text tower's token states (epsilon prediction, min-SNR-5 loss
     weights, 10% caption dropout, EMA), with the embedded ``joint`` model's VAE reused as the frozen codec.
     With ``--init-unet`` (the default) the UNet starts from the ``joint`` model's UNet, its cross-attention
     key and value projections composed with a least-squares map from CLIP token states to the ``joint``
     text encoder's (CPU time here allows only a short fine-tune, not training from scratch).
The CLIP sees every scene (``sample_any_scene``: nothing held out, as SD's CLIP saw far more than SD's
images). The denoiser's captions cover every colour pair, with the compositions of
``attnctl.shapes.compositions`` (their attribute-swapped twins are seen) and the quality bar's single-object
captions held out. Every batch is a pure function of (seed, phase, step).
Finally the UNet's EMA weights, the text tower, tokenizer and VAE are exported as a diffusers
``StableDiffusionPipeline`` (safetensors); the whole CLIP goes in its ``clip/`` subfolder for the probes.

    python scripts/train_clip_model.py --out outputs/train-clip --export attnctl/assets/clip-model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from attnctl.models.contrastive import build_clip, clip_step_loss
from attnctl.models.default import embedded_model_dir
from attnctl.models.training import (
    MAX_TOKENS,
    Checkpointer,
    PhaseSteps,
    batch_rng,
    build_text_encoder,
    build_unet,
    encode_captions,
    learning_rate,
    resume_optimizer,
    save_pipeline,
    start_training,
    train_denoiser,
    training_parser,
    whole_number,
)
from attnctl.shapes.compositions import sample_composition_training_scene
from attnctl.shapes.render import render_batch
from attnctl.shapes.scene import sample_any_scene


def training_batch(seed: int, phase: str, step: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """Rendered training scenes (batch, 3, 64, 64) in [-1, 1] and their captions: any scene for the CLIP
    phase, the denoiser's training scenes (held-out compositions and captions left out) otherwise."""
    rng = batch_rng(seed, phase, step)
    sampler = sample_any_scene if phase == "clip" else sample_composition_training_scene
    scenes = [sampler(rng) for _ in range(batch_size)]
    return torch.from_numpy(render_batch(scenes)), [scene.caption for scene in scenes]


def train_clip(args, clip, tokenizer, state: dict, checkpointer: Checkpointer, deadline: float) -> None:
    """Phase 1: ``args.clip_steps`` contrastive steps (cosine decay after warm-up), resuming at ``state``."""
    optimizer = torch.optim.AdamW(clip.parameters(), lr=args.clip_lr, weight_decay=0.1)
    resume_optimizer(optimizer, state, "clip_optimizer")
    total = args.clip_steps
    steps = PhaseSteps("clip", state["step"], total, deadline, digits=3)
    for step in steps:
        images, captions = training_batch(args.seed, "clip", step, args.clip_batch_size)
        loss = clip_step_loss(clip, tokenizer, images, captions)
        progress = max(0.0, (step - args.clip_warmup) / max(1, total - args.clip_warmup))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.clip_lr, args.clip_warmup) * cosine
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(max=math.log(100))  # CLIP's cap on the temperature
        steps.show(loss.item(), scale=f"{clip.logit_scale.exp().item():.1f}")
        finished = steps.finished(step)
        if checkpointer.due() or finished:
            state.update(step=step + 1, clip=clip.state_dict(), clip_optimizer=optimizer.state_dict())
            checkpointer.save(state)
        if time.monotonic() > deadline:
            raise SystemExit(f"deadline reached at clip step {step + 1}/{total}; rerun to resume")


def frozen_text_encoder(clip, tokenizer):
    """A ``CLIPTextModel`` holding the CLIP text tower's weights (the same ``text_model.*`` modules)."""
    text_encoder = build_text_encoder(tokenizer)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.requires_grad_(False).eval()


def aligned_positions(tokenizer, caption: str) -> tuple[list[int], list[int]]:
    """Token positions of BOS and of each word's last piece, and the positions from the first end token on.

    Causal encoders have read the whole word at its last piece, so these positions line up two tokenizers
    that split words differently (the ``joint`` model's splits ``orange``; the CLIP model's does not)."""
    heads, position = [0], 0
    for word in caption.split():
        position += len(tokenizer(word, add_special_tokens=False).input_ids)
        heads.append(position)
    return heads, list(range(position + 1, MAX_TOKENS))


@torch.no_grad()
def text_bridge(clip_text, tokenizer, init_text, init_tokenizer, captions: list[str]) -> torch.Tensor:
    """Least-squares map A (64, 64) with clip_states @ A ~= init_states over aligned token positions."""
    rows_clip, rows_init = [], []
    for caption in captions:
        (heads, tail), (init_heads, init_tail) = (
            aligned_positions(tokenizer, caption),
            aligned_positions(init_tokenizer, caption),
        )
        if not init_tail:  # truncated by the other tokenizer
            continue
        clip_states = encode_captions(tokenizer, clip_text, [caption])[0]  # (MAX_TOKENS, 64)
        init_states = encode_captions(init_tokenizer, init_text, [caption])[0]  # (MAX_TOKENS, 64)
        tail_length = min(len(tail), len(init_tail))
        rows_clip.append(clip_states[heads + tail[:tail_length]])
        rows_init.append(init_states[init_heads + init_tail[:tail_length]])
    return torch.linalg.lstsq(torch.cat(rows_clip), torch.cat(rows_init)).solution


def initial_unet(args, clip_text, tokenizer):
    """A fresh UNet, or the ``--init-unet`` pipeline's UNet with its cross-attention key and value
    projections composed with :func:`text_bridge` (W' = W A^T), so it starts out reading the CLIP states."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(args.seed)
    if args.init_unet is None:
        return build_unet()
    init = StableDiffusionPipeline.from_pretrained(args.init_unet)
    scenes_rng = batch_rng(args.seed, "bridge", 0)
    captions = [
        "",
        *(sample_composition_training_scene(scenes_rng).caption for _ in range(args.bridge_captions)),
    ]
    bridge = text_bridge(clip_text, tokenizer, init.text_encoder, init.tokenizer, captions)  # (64, 64)
    unet = init.unet
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                module.weight.copy_(module.weight @ bridge.T)
    return unet


def export(clip, tokenizer, vae, state: dict, directory: Path) -> None:
    """Save the pipeline (EMA UNet, frozen text tower, tokenizer, reused VAE) and the CLIP in ``clip/``."""
    unet = build_unet()
    unet.load_state_dict(state["ema_unet"])
    save_pipeline(vae, frozen_text_encoder(clip, tokenizer), tokenizer, unet, directory)
    clip.save_pretrained(directory / "clip", safe_serialization=True)
    info = {"clip_steps": state["clip_steps_done"], "unet_steps": state["step"], "args": state["args"]}
    (directory / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the configuration that produced the shipped model."""
    parser = training_parser(
        __doc__, Path("outputs/train-clip"), unet_steps=3000, batch_size=32, lr=3e-4, warmup=20, ema_decay=0.995,
        decay_start=1000,
    )  # fmt: skip
    joint = embedded_model_dir("joint")
    parser.add_argument("--vae", type=Path, default=joint / "vae", help="frozen VAE folder")
    parser.add_argument("--init-unet", type=Path, default=joint, help="pipeline to start from")
    parser.add_argument("--no-init-unet", dest="init_unet", action="store_const", const=None)
    parser.add_argument("--bridge-captions", type=whole_number(1), default=512)
    parser.add_argument("--clip-steps", type=whole_number(0), default=3000)
    parser.add_argument("--clip-batch-size", type=whole_number(2), default=128)
    parser.add_argument("--clip-lr", type=float, default=2e-3)
    parser.add_argument("--clip-warmup", type=whole_number(1), default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from diffusers import AutoencoderKL

    args = parse_args(argv)
    deadline, tokenizer, checkpointer, state = start_training(args, "clip")
    torch.manual_seed(args.seed)
    clip = build_clip(tokenizer)
    if "clip" in state:
        clip.load_state_dict(state["clip"])
    if state["phase"] == "clip":
        train_clip(args, clip, tokenizer, state, checkpointer, deadline)
        state = {"phase": "unet", "step": 0, "clip": clip.state_dict(), "clip_steps_done": args.clip_steps,
                 "args": state["args"]}  # fmt: skip
        checkpointer.save(state)
    vae = AutoencoderKL.from_pretrained(args.vae)
    text_encoder = frozen_text_encoder(clip, tokenizer)
    if "unet" in state:
        unet = build_unet()
        unet.load_state_dict(state["unet"])
    else:
        unet = initial_unet(args, text_encoder, tokenizer)
    train_denoiser(
        args, vae, tokenizer, text_encoder, unet, state, checkpointer, deadline,
        batch=lambda step: training_batch(args.seed, "unet", step, args.batch_size), train_text=False,
    )  # fmt: skip
    if args.export is not None:
        export(clip, tokenizer, vae, state, args.export)
        print(f"exported the pipeline to {args.export}")


if __name__ == "__main__":
    main()
