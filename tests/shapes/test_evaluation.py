"""Evaluation helpers: held-out prompt sets, outcome judges, Wilson intervals, paired tests, batching."""

from __future__ import annotations

import pytest

from attnctl.shapes.checker import Detection
from attnctl.shapes.evaluation import (
    all_objects_drawn,
    batched,
    held_out_binding_prompts,
    held_out_single_prompts,
    only_objects_drawn,
    paired_test,
    rate_summary,
    seeded_jobs,
    wilson_interval,
)
from attnctl.shapes.scene import HELD_OUT_COLOUR_PAIRS, is_training_colour_set


def test_binding_prompts_use_only_unseen_colour_pairs():
    prompts = held_out_binding_prompts()
    assert len(prompts) == 360 and len({p.prompt for p in prompts}) == 360
    for p in prompts:
        (c1, s1), (c2, s2) = p.objects
        assert frozenset({c1, c2}) in HELD_OUT_COLOUR_PAIRS and not is_training_colour_set({c1, c2})
        assert s1 != s2
        assert p.prompt.split()[1:3] == [c1, s1] and p.prompt.split()[-2:] == [c2, s2]
    assert any(p.prompt == "an orange circle to the left of a purple square" for p in prompts)


def test_single_prompts_name_their_object():
    prompts = held_out_single_prompts()
    assert len(prompts) == 12
    assert all(p.prompt.endswith(" ".join(p.objects[0])) for p in prompts)


def test_outcome_judges():
    found = [Detection("red", "circle", 10, 10, 100), Detection("blue", "square", 40, 40, 90)]
    assert all_objects_drawn(found, [("red", "circle"), ("blue", "square")])
    assert not all_objects_drawn(found, [("blue", "circle"), ("red", "square")])  # swapped binding
    assert all_objects_drawn(found, [("red", "circle")]) and not only_objects_drawn(
        found, [("red", "circle")]
    )
    assert only_objects_drawn(found, [("blue", "square"), ("red", "circle")])


def test_wilson_interval_matches_known_values():
    # 81/100 at 95%: the textbook Wilson interval is (0.7222, 0.8749)
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes=5, total=3"):
        wilson_interval(5, 3)


def test_rate_summary_and_paired_test_against_hand_counts():
    assert rate_summary([True, False, True, True]) == {
        "hits": 3, "n": 4, "rate": 0.75, "ci95": [round(v, 4) for v in wilson_interval(3, 4)]
    }
    # 8 images only this run gets right, 1 only the reference: two-sided sign test 2 * (9 + 1) / 2**9 = 0.039
    flags = [True] * 8 + [False] + [True, False] * 5
    reference = [False] * 8 + [True] + [True, False] * 5
    assert paired_test(flags, reference) == {"only_this_mode": 8, "only_stock": 1, "p_value": 0.039}
    assert paired_test([True, False], [True, False]) == {"only_this_mode": 0, "only_stock": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match="3 outcomes against 2"):
        paired_test([True] * 3, [True] * 2)


def test_batched_keeps_order_and_rejects_empty_batches():
    assert [list(b) for b in batched(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="size=0"):
        list(batched([1], 0))


def test_seeded_jobs_never_share_initial_noise():
    prompts = held_out_single_prompts()
    jobs = seeded_jobs(prompts, 3)
    assert len(jobs) == 36 and len({seed for _, seed in jobs}) == 36
    assert jobs[:4] == [
        (prompts[0].prompt, 0),
        (prompts[0].prompt, 1),
        (prompts[0].prompt, 2),
        (prompts[1].prompt, 3),
    ]
