"""The negatives of the CLIP probe: swapped twin (same words), one colour replaced, one shape replaced."""

from __future__ import annotations

from attnctl.shapes.compositions import recoloured, reshaped, swapped_twin_prompt, two_object_prompt


def test_each_negative_changes_what_it_names_and_nothing_else():
    prompt = two_object_prompt(("red", "circle"), "and", ("blue", "square"))
    assert prompt.prompt == "a red circle and a blue square"
    assert swapped_twin_prompt(prompt).prompt == "a blue circle and a red square"
    assert recoloured(prompt).prompt == "a red circle and an orange square"
    assert reshaped(prompt).prompt == "a red circle and a blue triangle"
    assert sorted(prompt.prompt.split()) == sorted(swapped_twin_prompt(prompt).prompt.split())
