"""Settings validation and the step schedules of both modes."""

from __future__ import annotations

import pytest

from attnctl.composer import ComposerConfig, paper_phases, release_phases, release_threshold


@pytest.mark.parametrize(("name", "value"), [("tau_a", 1.2), ("tau_b", -0.1), ("tau_c", 2.0)])
def test_tau_outside_unit_interval_is_rejected(name, value):
    kwargs = {"tau_a": 0.3, "tau_b": 0.8, "tau_c": 0.2, name: value}
    with pytest.raises(ValueError, match=rf"{name}={value} is outside \[0, 1\]"):
        ComposerConfig(**kwargs)


@pytest.mark.parametrize(("tau_a", "tau_b", "tau_c"), [(0.3, 0.2, 0.1), (0.3, 0.8, 0.4), (0.9, 0.8, 0.1)])
def test_tau_out_of_order_is_rejected(tau_a, tau_b, tau_c):
    with pytest.raises(ValueError, match="out of order.*tau_c <= tau_a <= tau_b"):
        ComposerConfig(tau_a=tau_a, tau_b=tau_b, tau_c=tau_c)


def test_domain_and_order_are_checked():
    with pytest.raises(ValueError, match="domain='paint'"):
        ComposerConfig(domain="paint")
    with pytest.raises(ValueError, match="solver_order=3"):
        ComposerConfig(solver_order=3)


@pytest.mark.parametrize("token", ["7788", -1, True, 1.5])
def test_inversion_token_must_be_an_id_none_or_auto(token):
    with pytest.raises(ValueError, match="inversion_token_id=.* must be a token id"):
        ComposerConfig(inversion_token_id=token)
    assert ComposerConfig().inversion_token_id == "auto"


def test_rca_default_follows_the_mode():
    assert ComposerConfig().use_rca and not ComposerConfig(faithful=True).use_rca
    assert ComposerConfig(faithful=True, rca=True).use_rca


def test_release_thresholds_match_the_reference_table():
    # reference notes Sec. 5: thr(tau) for 20 steps, order 2 (float quirks included: 0.6 * 20 + 1 - 2 = 11.000...02)
    assert [release_threshold(t, 20, 2) for t in (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)] == [1, 3, 5, 7, 11, 15]


def test_release_schedule_of_the_photorealism_script():
    phases = release_phases(ComposerConfig(tau_a=0.3, tau_b=0.8, tau_c=0.1, faithful=True), 20)
    assert phases.inject == frozenset(range(5))  # k = 0..4, the two warm-up evaluations included
    assert phases.repaste == frozenset()  # thr(0.1) = 1: no re-paste step
    assert phases.keep_background == frozenset(range(2, 15))


def test_release_warm_up_injects_even_with_tau_a_zero():
    phases = release_phases(ComposerConfig(tau_a=0.0, tau_b=0.0, tau_c=0.0, faithful=True), 20)
    assert phases.inject == {0, 1} and not phases.repaste and not phases.keep_background


def test_paper_schedule_is_the_first_fraction_of_steps():
    phases = paper_phases(ComposerConfig(tau_a=0.3, tau_b=0.8, tau_c=0.2), 20)
    assert phases.inject == frozenset(range(6))
    assert phases.repaste == frozenset(range(1, 5))  # latents after steps 0..3
    assert phases.keep_background == frozenset(range(5, 17))  # latents after steps 4..15
    empty = paper_phases(ComposerConfig(tau_a=0.0, tau_b=0.0, tau_c=0.0), 20)
    assert not (empty.inject or empty.repaste or empty.keep_background)
