"""Input checks: values pass through, mistakes become gr.Error messages naming the field and the fix."""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from attnctl.app.validation import (
    phrase_lines,
    required_text,
    seeded_generator,
    user_errors,
    whole_number,
)


def test_whole_number_accepts_integral_values_in_range():
    assert whole_number(3, "Steps", 1, 10) == 3
    assert whole_number(3.0, "Steps", 1, 10) == 3


@pytest.mark.parametrize("value", [None, 2.5, 0, 11, True, "3", float("inf"), float("nan")])
def test_whole_number_rejects_with_the_field_and_range(value):
    with pytest.raises(gr.Error, match=r"Steps is .*: enter a whole number from 1 to 10"):
        whole_number(value, "Steps", 1, 10)


def test_required_text():
    assert required_text("  a cat ", "Prompt") == "a cat"
    with pytest.raises(gr.Error, match="Prompt is empty"):
        required_text("   ", "Prompt")


def test_phrase_lines_drops_blank_lines_and_empty_means_parse():
    assert phrase_lines(" a red car \n\n a bench\n") == ["a red car", "a bench"]
    assert phrase_lines("  \n ") is None
    assert phrase_lines(None) is None


def test_seeded_generator_is_reproducible_and_checked():
    assert torch.equal(
        torch.randn(4, generator=seeded_generator(7)), torch.randn(4, generator=seeded_generator(7))
    )
    with pytest.raises(gr.Error, match="Seed=-1 is invalid: expected a whole number from 0 to 9223372036854775807"):
        seeded_generator(-1)
    seeded_generator(2**63 - 1)  # the CLI's largest seed, as a manifest records it


def test_user_errors_shows_value_errors_and_lets_bugs_through():
    with pytest.raises(gr.Error) as caught, user_errors():
        raise ValueError("phrase 'a dog' does not occur in the prompt <b>")
    assert caught.value.message == "phrase 'a dog' does not occur in the prompt &lt;b&gt;"
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug, not bad input")
