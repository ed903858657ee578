"""Gated attention on a "pretrained" model: the gates start as the identity and then train (CPU, < 1 minute).

1. Train a tiny Llama (hidden 64, 2 layers) on a small character corpus: this is the pretrained model.
2. Add head-wise output gates (Qiu et al. 2025): the logits stay bit-identical.
3. Freeze the model and fine-tune only the gates on a second corpus: the loss goes down.

Run: python examples/llm_gate_finetune.py [--pretrain-steps 80 --gate-steps 80]
"""

from __future__ import annotations

import argparse
import time

import torch

from attnctl.llm.gating import add_output_gates
from attnctl.llm.tiny import build_char_tokenizer, build_tiny_causal_lm
from attnctl.llm.training import next_token_targets, train

PRETRAIN_TEXT = (
    "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. "
    "all that glitters is not gold. the early bird catches the worm. "
)
FINETUNE_TEXT = (
    "attention is all you need, said the gate to the head. the gate decides what the head may say. "
)


def random_windows(ids: torch.Tensor, length: int, batch: int, steps: int, generator: torch.Generator):
    """``steps`` batches of random windows of the token stream, with next-token targets."""
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - length, (batch,), generator=generator)
        inputs = torch.stack([ids[s : s + length] for s in starts.tolist()])
        yield inputs, next_token_targets(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--gate-steps", type=int, default=80)
    parser.add_argument("--variant", choices=("headwise", "elementwise"), default="headwise")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a tiny model gains nothing from more threads, and loses a lot on a busy CPU
    started = time.perf_counter()
    tokenizer = build_char_tokenizer()
    model = build_tiny_causal_lm("llama", hidden_size=64, num_layers=2, num_heads=4, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    pretrain_ids = tokenizer(PRETRAIN_TEXT * 4, return_tensors="pt")["input_ids"][0]
    losses = train(
        model,
        random_windows(pretrain_ids, 32, 8, args.pretrain_steps, generator),
        model.parameters(),
        lr=3e-3,
    )
    print(f"pretraining: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")

    finetune_ids = tokenizer(FINETUNE_TEXT * 4, return_tensors="pt")["input_ids"][0]
    probe = finetune_ids[None, :64]
    with torch.no_grad():
        before = model(input_ids=probe).logits
    model.requires_grad_(False)
    with add_output_gates(model, variant=args.variant) as gates:
        with torch.no_grad():
            identical = torch.equal(model(input_ids=probe).logits, before)
        print(
            f"gates added ({sum(p.numel() for p in gates.parameters())} parameters): "
            f"logits unchanged = {identical}"
        )
        losses = train(
            model,
            random_windows(finetune_ids, 32, 8, args.gate_steps, generator),
            gates.parameters(),
            lr=1e-2,
        )
        print(
            f"gate-only fine-tuning: loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f} (mean of last 10)"
        )
        with torch.no_grad():
            offsets = torch.stack([torch.sigmoid(g.proj.bias) / g.reference for g in gates.gates])
        print(
            "gate score at zero input (sigmoid(b_g) / sigmoid(0)) per layer and head, 1 at the start:\n"
            f"{offsets}"
        )
    print(f"restored: logits as before = {torch.equal(model(input_ids=probe).logits, before)}")
    print(f"total time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
