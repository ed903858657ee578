"""FreeSwim's pipelines keep the pipeline contract on every tiny Wan variant (method tests: tests/freeswim).

FreeSwim has two stages, so "control off is the parent pipeline" reads as: stage 1 *is* the parent pipeline at
the native size, bit for bit, and the controlled processors with no control leave the parent's output
unchanged; FreeSwim's attention in stage 2 changes the video.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from typing import ClassVar

import PIL.Image
import pytest
import torch
from attnctl.pipelines.base import parent_pipeline
from attnctl.pipelines.freeswim import FreeSwimStages
from contract import BatchContract

from attnctl import FreeSwimImageToVideoPipeline, FreeSwimPipeline, FreeSwimVACEPipeline
from attnctl.core import AttentionController
from attnctl.freeswim.wan_processor import wan_processor_factory
from attnctl.models.tiny_wan import tiny_wan_inputs

NATIVE, TARGET, FRAMES = 32, 64, 5
GRID = TARGET // 16  # target token grid side (VAE x8, patch 2)
# the variant-independent mechanics run on text-to-video, Wan 2.1 image-to-video and VACE; opt-in on the others
MECHANICS = frozenset({
    "test_contract_batches_and_images_per_prompt_match_single_runs",
    "test_contract_model_cpu_offload_leaves_the_result_unchanged",
    "test_contract_callback_on_step_end_sees_every_step_and_its_tensors",
})


class FreeSwimContract(BatchContract):
    pipeline_class = FreeSwimPipeline  # from_pretrained picks the variant
    output_field = "frames"
    per_prompt_argument = "num_videos_per_prompt"
    prompt = "a cat walking on the beach"
    prompts = ["a cat walking on the beach", "a dog running in the street"]
    control_on = {}  # FreeSwim's defaults: entropy scale, the dual path, its cache every 2 steps
    control_off = {"window_size": (GRID, GRID), "dual_path": False, "attention_scale": None}  # stock attention
    variant: ClassVar[str]
    variant_class: ClassVar[type]

    @pytest.fixture(scope="class")
    @classmethod
    def path(cls, tiny_wan_folder):
        return tiny_wan_folder(cls.variant)

    def expected_variant(self, path) -> type:
        return self.variant_class

    def base_arguments(self):
        """Two stage-2 steps (strength 1), a 2 x 2 native grid refined on a 4 x 4 one."""
        return dict(
            prompt=self.prompt, negative_prompt="blurry", height=TARGET, width=TARGET, native_height=NATIVE,
            native_width=NATIVE, num_frames=FRAMES, num_inference_steps=2, strength=1.0, max_sequence_length=16,
            output_type="pt", generator=torch.Generator().manual_seed(0),
        ) | tiny_wan_inputs(self.variant, NATIVE, FRAMES)

    def parent_arguments(self, stock) -> dict:
        """The contract's arguments as the parent pipeline takes them: FreeSwim's own dropped, the native size."""
        own = set(inspect.signature(FreeSwimStages.__call__).parameters)
        parent = set(inspect.signature(type(stock).__call__).parameters)
        arguments = {k: v for k, v in (self.base_arguments() | self.call_kwargs).items() if k in parent or k not in own}
        return arguments | dict(height=NATIVE, width=NATIVE)

    def test_contract_signature_is_the_parents_plus_the_methods(self, pipe):
        parameters = set(inspect.signature(type(pipe).__call__).parameters)
        parameters |= set(inspect.signature(FreeSwimStages.__call__).parameters)  # variants pass **kwargs on
        assert set(inspect.signature(parent_pipeline(type(pipe)).__call__).parameters) <= parameters
        assert set(self.control_on) | set(self.control_off) <= parameters

    def test_contract_stage_one_is_the_parent_pipeline_bit_for_bit(self, pipe, stock):
        native = self.run(pipe, self.control_off).native_frames
        assert torch.equal(native, stock(**self.parent_arguments(stock)).frames)

    def test_contract_controlled_processors_without_controls_are_the_parent_bit_for_bit(self, stock):
        arguments = self.parent_arguments(stock) | dict(output_type="latent")
        expected = stock(**arguments).frames
        with ExitStack() as stack:
            for model in (stock.transformer, stock.transformer_2):
                if model is not None:
                    stack.enter_context(AttentionController([]).installed(
                        model, processor_factory=wan_processor_factory(model)))
            controlled = stock(**(arguments | {"generator": torch.Generator().manual_seed(0)})).frames
        assert torch.equal(controlled, expected)

    def test_contract_control_on_changes_stage_two_and_stays_finite(self, pipe):
        controlled = self.media(pipe, self.control_on, output_type="latent")
        assert pipe.freeswim_states["transformer"].full_branch_runs  # the dual path ran on stage 2
        plain = self.media(pipe, self.control_off, output_type="latent")
        assert not pipe.freeswim_states["transformer"].full_branch_runs
        assert torch.isfinite(controlled).all() and torch.isfinite(plain).all()
        assert (controlled - plain).abs().max() > 1e-4
        assert self.processors_are_stock(pipe)


class TestFreeSwimTextToVideo(FreeSwimContract):
    variant, variant_class = "t2v", FreeSwimPipeline
    bad_arguments = [
        (dict(height=100), r"height=100 is invalid: expected a multiple of 16"),
        (dict(native_width=40), r"native_width=40 is invalid: expected a multiple of 16"),
        (dict(height=16), r"height=16 is smaller than native_height=32"),
        (dict(height=None), r"height=None: FreeSwim needs a target size"),
        (dict(width=16), r"width=16 is smaller than native_width=32"),
        (dict(num_frames=6), r"num_frames=6 must be 4k\+1 for Wan's VAE \(e.g. 5 or 81\)"),
        (dict(num_frames="9"), r"num_frames='9' is invalid: expected a whole number"),
        (dict(strength=0.0), r"strength=0.0 is invalid: expected a finite number in \(0, 1\]"),
        (dict(strength=1.5), r"strength=1.5 is invalid: expected a finite number in \(0, 1\]"),
        (dict(cache_interval=0), r"cache_interval=0 is invalid: expected a whole number from 1"),
        (dict(cache_interval=1.5), r"cache_interval=1.5 is invalid: expected a whole number"),
        (dict(attention_scale="sharp"), r"attention_scale='sharp'"),
        (dict(window_size=(3,)), r"window_size=\(3,\) is invalid: expected two values \(rows, cols\)"),
        (dict(window_size=5), r"window_size=5 is invalid: expected two values \(rows, cols\)"),
        (dict(window_size=(3, 0)), r"window_size\[1\]=0 is invalid: expected a whole number from 1"),
        (dict(native_height=16, native_width=16, height=16, width=16),
         r"native_height=16 and native_width=16 make a native grid of one 16-pixel token"),
        (dict(window_size=(5, 3)), r"window_size=\(5, 3\) is larger than the target token grid \(4, 4\)"),
        (dict(refine_flow_shift=-1.0), r"refine_flow_shift=-1.0 is invalid: expected a finite number in \(0"),
        (dict(strength=0.2), r"strength=0.2 is invalid: expected a strength that leaves at least one of "
                             r"num_inference_steps=2"),
        (dict(video=[PIL.Image.new("RGB", (NATIVE, NATIVE))] * 4), r"video has 4 frames; Wan's VAE needs 4k\+1"),
    ]


class TestFreeSwimImageToVideo21(FreeSwimContract):
    """Wan 2.1 image-to-video: CLIP image context, 512 text tokens."""

    variant, variant_class = "i2v-2.1", FreeSwimImageToVideoPipeline
    call_kwargs = {"max_sequence_length": 512}  # its cross-attention finds the image tokens by this length
    bad_arguments = [(dict(max_sequence_length=16), "max_sequence_length=16 .*needs 512 text tokens")]


class TestFreeSwimImageToVideo22(FreeSwimContract):
    """Wan 2.2 A14B layout: two transformers split at the boundary."""

    variant, variant_class = "i2v-2.2", FreeSwimImageToVideoPipeline
    slow_checks = MECHANICS


class TestFreeSwimTI2V5B(FreeSwimContract):
    """TI2V-5B: the clean image latent is the first frame (``expand_timesteps``)."""

    variant, variant_class = "ti2v-5b", FreeSwimImageToVideoPipeline
    slow_checks = MECHANICS


class TestFreeSwimVACE(FreeSwimContract):
    variant, variant_class = "vace", FreeSwimVACEPipeline
    bad_arguments = [(dict(conditioning_scale=[1.0, 1.0, 1.0]),
                      r"conditioning_scale=\[1.0, 1.0, 1.0\] must be a number or one number per")]

    def test_contract_batches_and_images_per_prompt_match_single_runs(self, pipe):
        """``WanVACEPipeline`` makes one video per call; FreeSwim's VACE refuses batches before any model runs."""
        for batch in (dict(prompt=self.prompts), dict(num_videos_per_prompt=2)):
            with pytest.raises(ValueError, match="WanVACEPipeline makes one video per call"):
                self.run(pipe, **batch)
