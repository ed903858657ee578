"""AttendAndExcitePipeline and SynGenPipeline keep the pipeline contract on SD, SDXL and PixArt-Sigma (method tests:
tests/binding)."""

from __future__ import annotations

import pytest
from contract import OnPixArt, OnSD, OnSDXL, StockContract, on_families

from attnctl import AttendAndExcitePipeline, SynGenPipeline
from attnctl.structured import load_english_pipeline

needs_spacy = pytest.mark.skipif(load_english_pipeline() is None, reason="no English spaCy pipeline installed")


class AttendExciteContract(StockContract):
    pipeline_class = AttendAndExcitePipeline
    # "car" and "bench" (and tokens 3 and 7 of the second contract prompt); a large step so two tiny steps move
    control_on = {"token_indices": [3, 7], "max_iter_to_alter": 2, "thresholds": {}, "scale_factor": 1e4}
    control_off = {"token_indices": [3, 7], "scale_factor": 0}
    bad_arguments = [
        (dict(token_indices=[0]), "token_indices"),
        (dict(max_iter_to_alter=-1), "max_iter_to_alter"),
        (dict(thresholds={0: 1.5}), "thresholds"),
        (dict(scale_factor=-1.0), "scale_factor"),
        (dict(attn_res=(3, 3)), r"attn_res=\(3, 3\)"),
    ]


TestAttendExciteSD, TestAttendExciteSDXL = on_families(AttendExciteContract, OnSD, OnSDXL)


class TestAttendExcitePixArt(OnPixArt, AttendExciteContract):
    # T5 has no start token: "car" and "bench" are keys 2 and 6; 0 is a word, and the maps are pooled from the
    # one token grid (8x12 here), so only a finer attn_res is refused
    control_on = {**AttendExciteContract.control_on, "token_indices": [2, 6]}
    control_off = {"token_indices": [2, 6], "scale_factor": 0}
    bad_arguments = [
        (dict(token_indices=[-1]), "token_indices"),
        (dict(token_indices=[2, 99]), "token_indices"),
        *AttendExciteContract.bad_arguments[1:4],
        (dict(attn_res=(64, 64)), r"attn_res=\(64, 64\)"),
    ]


@needs_spacy
class SynGenContract(StockContract):
    pipeline_class = SynGenPipeline
    control_on = {"num_intervention_steps": 2, "syngen_step_size": 1e5}
    control_off = {"syngen_step_size": 0}
    bad_arguments = [
        (dict(syngen_step_size=-1.0), "syngen_step_size"),
        (dict(num_intervention_steps=1.5), "num_intervention_steps"),
        (dict(modifier_sets="red car"), "modifier_sets"),
    ]


TestSynGenSD, TestSynGenSDXL, TestSynGenPixArt = on_families(SynGenContract, OnSD, OnSDXL, OnPixArt)
