"""``attnctl parse "prompt"``: the noun phrases and token spans structured guidance would use."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import EXIT_OK, model_argument


def add_parser(commands: Any) -> None:
    """Register ``parse`` and its options."""
    p = commands.add_parser(
        "parse", help="show the noun phrases and token spans structured guidance would use",
        description="Parse a prompt as StructuredDiffusionPipeline does (spaCy noun phrases, or --phrases) and "
        "show each phrase with its token span [start, end) after BOS in the model's tokenizer.",
    )
    p.add_argument("prompt", help="the prompt to parse")
    p.add_argument("--model", help="diffusers folder or hub id whose tokenizer to use (default: the embedded model)")
    p.add_argument("--phrases", nargs="+", metavar="PHRASE", help="place these phrases instead of parsing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def describe(prompt: str, tokenizer: Any, phrases: list[str] | None = None) -> dict[str, Any]:
    """The normalised prompt, its tokens (after BOS) and the phrases with spans, as plain data.

    The phrases come from :func:`attnctl.structured.prompt_phrases`, the function the pipeline uses, so they
    are exactly what a generation would encode, without loading the model's weights.
    """
    from attnctl.structured import normalize_prompt, prompt_phrases

    text = normalize_prompt(prompt)
    if not text:
        raise ValueError(f"prompt {prompt!r} is empty; give the text to parse")
    try:
        found = prompt_phrases(text, tokenizer, phrases)
    except RuntimeError as err:  # no English spaCy pipeline installed
        raise ValueError(str(err)) from None
    ids = tokenizer(text, add_special_tokens=False).input_ids
    tokens = [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(ids)]
    return {
        "prompt": text,
        "tokens": tokens,
        "phrases": [
            {"text": p.text, "tokens": [p.token_start, p.token_end], "pieces": tokens[p.token_start : p.token_end]}
            for p in found
        ],
    }


def format_table(parsed: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`describe`."""
    lines = [f"prompt: {parsed['prompt']}", "tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(parsed["tokens"]))]
    if not parsed["phrases"]:
        lines.append("phrases: none besides the whole prompt (structured guidance equals stock here)")
    else:
        lines.append("phrases (token span [start, end) after BOS):")
        width = max(len(p["text"]) for p in parsed["phrases"])
        for p in parsed["phrases"]:
            start, end = p["tokens"]
            lines.append(f"  [{start:>2}, {end:>2})  {p['text']:<{width}}  {' | '.join(p['pieces'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the model's tokenizer, parse, print."""
    from transformers import AutoTokenizer

    model = model_argument(args.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    except OSError as err:
        raise ValueError(f"--model {model}: no tokenizer found ({err})") from None
    parsed = describe(args.prompt, tokenizer, args.phrases)
    print(json.dumps(parsed, ensure_ascii=False, indent=2) if args.json else format_table(parsed))
    return EXIT_OK
