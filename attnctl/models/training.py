"""Training pieces shared by the embedded models' scripts (``scripts/train_joint_model.py``,
``scripts/train_clip_model.py``): tokenizer, text and UNet configs, the denoiser's training loop with
min-SNR weights and EMA, checkpoints loaded as weights only, and the diffusers export.

Every batch is a pure function of (seed, phase, step), so a resumed run sees the same data.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnctl.models.tokenizer import write_clip_tokenizer
from attnctl.shapes.scene import CAPTION_WORDS

MAX_TOKENS = 24
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
PHASES = ("vae", "unet", "scale", "decoder", "clip", "bridge")


def build_tokenizer(directory: Path):
    """The CLIP tokenizer whose vocabulary makes every caption word a single token."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(directory, CAPTION_WORDS, MAX_TOKENS))


def text_config(tokenizer):
    """A small causal CLIP text transformer's config (width 64 = the UNet's cross-attention dim)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(tokenizer):
    """A ``CLIPTextModel`` with :func:`text_config`."""
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(tokenizer))


def build_unet():
    """A small SD-style UNet on 16x16x4 latents with cross-attention at 16x16, 8x8 and 4x4 (mid)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def batch_rng(seed: int, phase: str, step: int) -> np.random.Generator:
    """The scene sampler's generator for one batch: a pure function of (seed, phase, step)."""
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: use one of {PHASES}")
    return np.random.default_rng([seed, PHASES.index(phase), step])


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR for epsilon prediction (Hang et al. 2023, Eq. 9)."""
    alpha_bar = alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (batch, MAX_TOKENS), padded with the end token, as ``StableDiffusionPipeline`` pads them."""
    return tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


def encode_captions(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Token embeddings (batch, MAX_TOKENS, 64) exactly as ``StableDiffusionPipeline`` computes them."""
    return text_encoder(tokenize(tokenizer, captions))[0]


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA with the usual warm-up decay min(max_decay, (1 + step) / (10 + step))."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_model.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)


def learning_rate(step: int, base: float, warmup: int, decay: tuple[int, int] | None = None) -> float:
    """Linear warm-up to ``base``, then constant (the EMA does the averaging); with ``decay=(start, total)``
    a half-cosine from ``base`` at step ``start`` down to 0 at step ``total``."""
    rate = base * min(1.0, (step + 1) / warmup)
    if decay is not None and step >= decay[0]:
        start, end = decay
        progress = 1.0 if step >= end else (step - start) / (end - start)
        rate *= 0.5 * (1 + math.cos(math.pi * progress))
    return rate


class Checkpointer:
    """Atomic ``torch.save`` of the whole training state every ``minutes`` and on demand; loads weights only
    (``torch.load(weights_only=True)``: tensors, numbers, strings and containers, never arbitrary objects)."""

    def __init__(self, path: Path, minutes: float):
        self.path, self.interval, self.last = path, minutes * 60, time.monotonic()

    def due(self) -> bool:
        """Whether ``minutes`` have passed since the last save."""
        return time.monotonic() - self.last >= self.interval

    def save(self, state: dict) -> None:
        """Write ``state`` to a temporary file and rename it over the checkpoint."""
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self.last = time.monotonic()

    def load(self, default: dict) -> dict:
        """The saved state, or ``default`` when there is no checkpoint yet."""
        return torch.load(self.path, weights_only=True) if self.path.exists() else default


def start_training(args: argparse.Namespace, first_phase: str) -> tuple[float, object, Checkpointer, dict]:
    """What a training script does first: ``args.threads`` threads, the ``--max-minutes`` deadline (a
    ``time.monotonic`` time), ``args.out`` with its tokenizer, and the checkpointed state (a fresh one at step 0
    of ``first_phase``) recording the arguments. Returns (deadline, tokenizer, checkpointer, state)."""
    torch.set_num_threads(args.threads)
    deadline = time.monotonic() + (args.max_minutes * 60 if args.max_minutes else math.inf)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(args.out / "tokenizer")
    checkpointer = Checkpointer(args.out / "checkpoint.pt", args.checkpoint_minutes)
    state = checkpointer.load(default={"phase": first_phase, "step": 0})
    state["args"] = {k: str(v) for k, v in vars(args).items()}
    return deadline, tokenizer, checkpointer, state


class PhaseSteps:
    """The steps ``start``..``total - 1`` of one training phase under a tqdm bar that shows the smoothed loss
    (an exponential moving average, weight 0.02 per step); the phase is finished at its last step or once
    ``deadline`` (a ``time.monotonic`` time) has passed."""

    def __init__(self, phase: str, start: int, total: int, deadline: float, digits: int = 4):
        self.total, self.deadline, self.digits = total, deadline, digits
        self.bar = tqdm(range(start, total), desc=phase, initial=start, total=total)
        self.smoothed: float | None = None

    def __iter__(self):
        return iter(self.bar)

    def show(self, loss: float, **extra: str) -> None:
        """Fold ``loss`` into the smoothed loss and show it (with ``extra`` fields) on the bar."""
        self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
        self.bar.set_postfix(loss=f"{self.smoothed:.{self.digits}f}", **extra)

    def finished(self, step: int) -> bool:
        """Whether ``step`` is the phase's last or the deadline has passed."""
        return step + 1 == self.total or time.monotonic() > self.deadline


def resume_optimizer(optimizer: torch.optim.Optimizer, state: dict, key: str) -> torch.optim.Optimizer:
    """``optimizer`` with the state saved under ``key`` in a checkpoint's ``state``, if there is one."""
    if key in state:
        optimizer.load_state_dict(state[key])
    return optimizer


def diffusion_loss(unet, vae, text_states: torch.Tensor, images: torch.Tensor, generator, noise_scheduler):
    """Min-SNR-weighted epsilon-prediction loss of one batch (Ho et al. 2020, Eq. 14; weights Hang et al.
    2023, Eq. 9). ``text_states`` (batch, tokens, dim) condition the UNet; latents come from the frozen VAE."""
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator)  # (B, 4, 16, 16), standardised
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, SCHEDULE["num_train_timesteps"], (len(images),), generator=generator)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, text_states).sample
    per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))  # (B,)
    return (per_sample * min_snr_weights(noise_scheduler.alphas_cumprod, timesteps, MIN_SNR_GAMMA)).mean()


def drop_captions(captions: list[str], generator: torch.Generator) -> list[str]:
    """Replace each caption by ``""`` with probability ``CAPTION_DROPOUT`` (for classifier-free guidance)."""
    drop = torch.rand(len(captions), generator=generator) < CAPTION_DROPOUT
    return ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]


def train_denoiser(
    args,
    vae,
    tokenizer,
    text_encoder,
    unet,
    state: dict,
    checkpointer: Checkpointer,
    deadline: float,
    batch: Callable[[int], tuple[torch.Tensor, list[str]]],
    train_text: bool,
) -> None:
    """The UNet phase: ``args.unet_steps`` steps of :func:`diffusion_loss` on ``batch(step)`` with caption
    dropout and an EMA copy, resuming at ``state['step']``. With ``train_text`` the text encoder learns
    jointly (and has its own EMA); otherwise it stays frozen, as Stable Diffusion's CLIP encoder does."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**SCHEDULE)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(train_text)
    models = {"unet": unet, **({"text": text_encoder} if train_text else {})}
    emas = {name: copy.deepcopy(model).requires_grad_(False) for name, model in models.items()}
    for name, ema in emas.items():
        if f"ema_{name}" in state:
            ema.load_state_dict(state[f"ema_{name}"])
    params = [p for model in models.values() for p in model.parameters()]
    optimizer = resume_optimizer(torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01), state, "optimizer")
    total = args.unet_steps
    decay = None if args.decay_start is None else (args.decay_start, total)
    steps = PhaseSteps("unet", state["step"], total, deadline)
    for step in steps:
        images, captions = batch(step)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        captions = drop_captions(captions, generator)
        with torch.set_grad_enabled(train_text):
            text_states = encode_captions(tokenizer, text_encoder, captions)
        loss = diffusion_loss(unet, vae, text_states, images, generator, noise_scheduler)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup, decay)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, model in models.items():
            update_ema(emas[name], model, step, args.ema_decay)
        steps.show(loss.item())
        finished = steps.finished(step)
        if checkpointer.due() or finished:
            state.update(step=step + 1, optimizer=optimizer.state_dict(), unet=unet.state_dict())
            state.update({f"ema_{name}": ema.state_dict() for name, ema in emas.items()})
            if train_text:
                state["text_encoder"] = text_encoder.state_dict()
            checkpointer.save(state)
        if finished and step + 1 < total:
            print(f"deadline reached at unet step {step + 1}/{total}; exporting the EMA weights so far")
            break


def save_pipeline(vae, text_encoder, tokenizer, unet, directory: Path) -> None:
    """Save the components as a ``StableDiffusionPipeline`` (safetensors, DDIM with SD's settings)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count given on the command line: a whole number >= ``minimum`` (argparse then
    names the option and exits with status 2 on anything else)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def training_parser(description: str, out: Path, **unet_defaults) -> argparse.ArgumentParser:
    """The options every training script has (output, seed, threads, UNet phase, checkpoints, time budget);
    ``unet_defaults`` sets the defaults of ``unet_steps``, ``batch_size``, ``lr``, ``warmup``, ``ema_decay`` and
    optionally ``decay_start``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=out, help="checkpoint directory")
    parser.add_argument("--export", type=Path, default=None, help="write the final pipeline here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=whole_number(1), default=1, help="1 avoids OpenMP stalls on a shared machine"
    )
    parser.add_argument("--unet-steps", type=whole_number(0), default=unet_defaults["unet_steps"])
    parser.add_argument("--batch-size", type=whole_number(1), default=unet_defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=unet_defaults["lr"])
    parser.add_argument("--warmup", type=whole_number(1), default=unet_defaults["warmup"])
    parser.add_argument("--ema-decay", type=float, default=unet_defaults["ema_decay"])
    parser.add_argument(
        "--decay-start",
        type=whole_number(0),
        default=unet_defaults.get("decay_start"),
        help="UNet step where the learning rate starts a half-cosine to 0 (default: none, constant)",
    )
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and export) after this long")
    return parser
