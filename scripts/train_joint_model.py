"""Train attnctl's ``joint`` embedded model (the default until the CLIP model replaced it; its VAE and UNet are
the CLIP model's starting point) on procedural coloured-shape scenes, on CPU.

Three phases, each resumable (checkpoints every few minutes and at the end of a phase):
  1. an ``AutoencoderKL`` (64x64 RGB <-> 16x16x4 latents) on rendered scenes, then its latents are
     standardised per channel (folded into its 1x1 convs, :mod:`attnctl.models.latent_norm`);
  2. a ``UNet2DConditionModel`` jointly with a from-scratch causal ``CLIPTextModel`` (epsilon prediction,
     min-SNR-5 loss weights, 10% caption dropout for classifier-free guidance, EMA of both);
  3. the VAE decoder alone, with the encoder (hence the latent space the UNet learnt) frozen, on scenes in
     any colours (``sample_codec_scene``: the held-out colour pairs are held out from the denoiser only).
Phases 2 and 3 depend only on phase 1, so ``--phase decoder`` can run phase 3 in a second process while
phase 2 trains. Every batch is a pure function of (seed, phase, step), so a resumed run sees the same data.
Finally the EMA weights are exported as a diffusers ``StableDiffusionPipeline`` (safetensors).

    python scripts/train_joint_model.py --out outputs/train --export attnctl/assets/joint-model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnctl.models.latent_norm import standardize_vae_latents
from attnctl.models.training import (
    Checkpointer,
    PhaseSteps,
    batch_rng,
    build_text_encoder,
    build_unet,
    resume_optimizer,
    save_pipeline,
    start_training,
    train_denoiser,
    training_parser,
    whole_number,
)
from attnctl.shapes.render import render_batch
from attnctl.shapes.scene import sample_codec_scene, sample_training_scene


def build_vae():
    """A small 4x-downsampling KL autoencoder: 64x64x3 images <-> 16x16x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def training_batch(seed: int, phase: str, step: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """Rendered images (batch, 3, 64, 64) in [-1, 1] and their captions."""
    rng = batch_rng(seed, phase, step)
    sampler = sample_codec_scene if phase == "decoder" else sample_training_scene
    scenes = [sampler(rng) for _ in range(batch_size)]
    return torch.from_numpy(render_batch(scenes)), [scene.caption for scene in scenes]


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> torch.Tensor:
    """L1 + MSE reconstruction of a posterior sample plus a small KL term (as in SD's autoencoder)."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    return (
        F.l1_loss(reconstruction, images)
        + F.mse_loss(reconstruction, images)
        + kl_weight * posterior.kl().mean()
    )


def train_vae(args, vae, state: dict, checkpointer: Checkpointer, deadline: float) -> None:
    """Phase 1: train the autoencoder for ``args.vae_steps`` steps (resuming at ``state['step']``)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    resume_optimizer(optimizer, state, "vae_optimizer")
    steps = PhaseSteps("vae", state["step"], args.vae_steps, deadline)
    for step in steps:
        images, _ = training_batch(args.seed, "vae", step, args.vae_batch_size)
        loss = vae_loss(vae, images, torch.Generator().manual_seed(args.seed * 1_000_003 + step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        steps.show(loss.item())
        state.update(step=step + 1, vae=vae.state_dict(), vae_optimizer=optimizer.state_dict())
        if checkpointer.due() or steps.finished(step):
            checkpointer.save(state)
        if time.monotonic() > deadline:
            raise SystemExit("deadline reached during the VAE phase; rerun to resume")


def finetune_decoder(args, vae, checkpointer: Checkpointer, deadline: float) -> None:
    """Phase 3: train ``post_quant_conv`` + decoder on posterior samples of the frozen encoder's latents."""
    vae.requires_grad_(False)
    vae.post_quant_conv.requires_grad_(True)
    vae.decoder.requires_grad_(True)
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    state = checkpointer.load(default={"step": 0})
    if "decoder" in state:
        vae.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
    steps = PhaseSteps("decoder", state["step"], args.decoder_steps, deadline)
    for step in steps:
        images, _ = training_batch(args.seed, "decoder", step, args.vae_batch_size)
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            latents = posterior.sample(torch.Generator().manual_seed(args.seed * 1_000_003 + step))
        reconstruction = vae.decode(latents).sample
        loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        steps.show(loss.item())
        finished = steps.finished(step)
        if checkpointer.due() or finished:
            checkpointer.save(
                {"step": step + 1, "decoder": vae.state_dict(), "optimizer": optimizer.state_dict()}
            )
        if finished:
            break


@torch.no_grad()
def latent_statistics(args, vae, num_batches: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of posterior means over fresh rendered scenes."""
    latents = torch.cat(
        [
            vae.encode(training_batch(args.seed, "scale", i, 64)[0]).latent_dist.mean
            for i in range(num_batches)
        ]
    )  # (num_batches * 64, 4, 16, 16)
    return latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))


def train_unet(args, vae, tokenizer, text_encoder, unet, state, checkpointer: Checkpointer, deadline: float):
    """Phase 2: denoiser + text encoder jointly (caption dropout, min-SNR weights, EMA copies of both)."""
    train_denoiser(
        args, vae, tokenizer, text_encoder, unet, state, checkpointer, deadline,
        batch=lambda step: training_batch(args.seed, "unet", step, args.batch_size), train_text=True,
    )  # fmt: skip


def export_pipeline(state: dict, decoder_state: dict, tokenizer, directory: Path) -> None:
    """Save the EMA weights and fine-tuned decoder as a ``StableDiffusionPipeline`` (safetensors, DDIM)."""
    vae, text_encoder, unet = build_vae(), build_text_encoder(tokenizer), build_unet()
    vae.load_state_dict(decoder_state["decoder"])
    vae.register_to_config(scaling_factor=1.0)
    text_encoder.load_state_dict(state["ema_text"])
    unet.load_state_dict(state["ema_unet"])
    save_pipeline(vae, text_encoder, tokenizer, unet, directory)
    info = {
        "vae_steps": state["vae_steps_done"],
        "unet_steps": state["step"],
        "decoder_steps": decoder_state["step"],
        "args": state["args"],
    }
    (directory / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the configuration that produced the shipped model."""
    parser = training_parser(
        __doc__, Path("outputs/train"), unet_steps=4000, batch_size=64, lr=5e-4, warmup=200, ema_decay=0.999
    )
    parser.add_argument("--vae-steps", type=whole_number(0), default=500)
    parser.add_argument("--vae-batch-size", type=whole_number(1), default=16)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--decoder-steps", type=whole_number(0), default=1500)
    parser.add_argument("--decoder-lr", type=float, default=5e-4)
    parser.add_argument(
        "--phase",
        choices=("all", "decoder"),
        default="all",
        help="decoder: only phase 3 (needs phase 1 done)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    deadline, tokenizer, checkpointer, state = start_training(args, "vae")
    path = checkpointer.path

    torch.manual_seed(args.seed)
    vae, text_encoder, unet = build_vae(), build_text_encoder(tokenizer), build_unet()
    if "vae" in state:
        vae.load_state_dict(state["vae"])
    decoder_checkpointer = Checkpointer(args.out / "decoder.pt", args.checkpoint_minutes)
    if args.phase == "decoder":
        if state["phase"] == "vae":
            raise SystemExit(
                f"--phase decoder needs the VAE phase finished in {path}; run without --phase first"
            )
        finetune_decoder(args, vae, decoder_checkpointer, deadline)
        return
    if state["phase"] == "vae":
        train_vae(args, vae, state, checkpointer, deadline)
        mean, std = latent_statistics(args, vae)
        print(f"latent mean {mean.tolist()} std {std.tolist()}: folding into the VAE")
        standardize_vae_latents(vae, mean, std)
        state = {"phase": "unet", "step": 0, "vae": vae.state_dict(), "vae_steps_done": args.vae_steps,
                 "args": state["args"]}  # fmt: skip
        checkpointer.save(state)
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
    train_unet(args, vae, tokenizer, text_encoder, unet, state, checkpointer, deadline)
    finetune_decoder(args, vae, decoder_checkpointer, deadline)
    if args.export is not None:
        decoder_state = decoder_checkpointer.load(default={})
        export_pipeline(state, decoder_state, tokenizer, args.export)
        print(f"exported the EMA pipeline to {args.export}")


if __name__ == "__main__":
    main()
