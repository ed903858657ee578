"""AttendAndExcitePipeline and SynGenPipeline keep the pipeline contract on SD and SDXL (method tests: tests/binding)."""

from __future__ import annotations

import pytest
from contract import OnSD, OnSDXL, StockContract, on_families

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


TestSynGenSD, TestSynGenSDXL = on_families(SynGenContract, OnSD, OnSDXL)
