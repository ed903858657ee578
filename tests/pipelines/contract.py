"""The contract every attnctl pipeline keeps, on every family it supports (in the spirit of diffusers'
``PipelineTesterMixin``).

A test class inherits :class:`StockContract` (pipelines that wrap their family's pipeline: control off is
that pipeline, bit for bit), :class:`BatchContract` (pipelines with stages of their own that take prompt
batches, such as FreeSwim, whose first stage is the parent: ``tests/pipelines/test_freeswim_contract.py``) or
:class:`PipelineContract` (pipelines with their own sampling loop, such as PrimeComposer) and sets the pipeline,
the family folder's fixture and the method arguments that switch its control on and off; it then gets every
test below. The pipeline test files hold only what is specific to each method.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, ClassVar

import pytest
import torch
from attnctl.pipelines.base import FamilyPipelineMixin, parent_pipeline

from attnctl.guidance.pipeline import takes_step_end_callback
from attnctl.models.families import detect_family
from attnctl.models.tiny_families import TINY_MAX_SEQUENCE_LENGTH


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PipelineContract:
    """Contract tests for every attnctl pipeline. Set on the subclass:

    * ``pipeline_class``: the method's front class (``StructuredDiffusionPipeline``);
    * ``path_fixture``: the fixture name of the family's saved tiny folder (``"tiny_sdxl_path"``);
    * ``control_on`` / ``control_off``: method arguments that switch the control on (the image must change)
      and off (the image must be the parent pipeline's, bit for bit);
    * ``call_kwargs``: family arguments every call needs (T5 families: ``max_sequence_length``);
    * ``bad_arguments``: ``[(kwargs, message)]`` the method must refuse with a ``ValueError``;
    * ``slow_checks``: contract tests that are opt-in (``ATTNCTL_SLOW=1``) for this family because its tiny
      model is slow; exactness (control off and on, processors restored) always runs;
    * ``output_field``: the output's generated media (``"images"``, video pipelines ``"frames"``).
    """

    pipeline_class: ClassVar[type]
    path_fixture: ClassVar[str]
    prompt: ClassVar[str] = "a red car and a blue bench"
    prompts: ClassVar[list[str]] = ["a red car and a blue bench", "a small green cube on a yellow table"]
    control_on: ClassVar[dict[str, Any]]
    control_off: ClassVar[dict[str, Any]] = {}
    call_kwargs: ClassVar[dict[str, Any]] = {}
    bad_arguments: ClassVar[list[tuple[dict[str, Any], str]]] = []
    slow_checks: ClassVar[frozenset[str]] = frozenset()
    output_field: ClassVar[str] = "images"

    # -- fixtures ------------------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def path(cls, request):
        return request.getfixturevalue(cls.path_fixture)

    @pytest.fixture(scope="class")
    @classmethod
    def pipe(cls, path):
        pipe = cls.pipeline_class.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @pytest.fixture(scope="class")
    @classmethod
    def stock(cls, pipe, path):
        """The parent diffusers pipeline loaded from the same folder."""
        stock = parent_pipeline(type(pipe)).from_pretrained(path)
        stock.set_progress_bar_config(disable=True)
        return stock

    def base_arguments(self) -> dict[str, Any]:
        """What every call of the contract passes (a pipeline with other required inputs overrides it)."""
        return dict(prompt=self.prompt, num_inference_steps=2, output_type="pt", generator=_generator())

    def run(self, pipe, control: dict[str, Any] | None = None, **kwargs):
        arguments = self.base_arguments()
        arguments.update(self.call_kwargs)
        arguments.update(control if control is not None else {})
        arguments.update(kwargs)
        return pipe(**arguments)

    def media(self, pipe, control: dict[str, Any] | None = None, **kwargs) -> torch.Tensor:
        """What :meth:`run` generated (the output's ``output_field``)."""
        return getattr(self.run(pipe, control, **kwargs), self.output_field)

    def expected_variant(self, path) -> type:
        """The class ``pipeline_class.from_pretrained(path)`` must return: the method's variant for the family."""
        return self.pipeline_class.variant_for(detect_family(path))

    def failing_callback(self, pipe) -> dict[str, Any]:
        def explode(*args):
            raise RuntimeError("stop at step 0")

        return {"callback_on_step_end" if takes_step_end_callback(pipe) else "callback": explode}

    def processors_are_stock(self, pipe) -> bool:
        """Whether every attention processor of every denoiser (Wan 2.2: both transformers) is diffusers' own."""
        denoisers = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module) and
                     hasattr(c, "attn_processors") and c is not getattr(pipe, "vae", None)]  # fmt: skip
        names = {type(p).__module__.split(".")[0] for d in denoisers for p in d.attn_processors.values()}
        return bool(denoisers) and names == {"diffusers"}

    # -- the contract --------------------------------------------------------------------------------------
    def test_contract_loads_the_family_variant(self, pipe, path):
        assert type(pipe) is self.expected_variant(path)
        assert isinstance(pipe, parent_pipeline(type(pipe)))
        if isinstance(pipe, FamilyPipelineMixin):  # FreeSwim picks its Wan variant from model_index.json instead
            assert pipe.model_family is detect_family(path)

    def test_contract_processors_restored_after_a_callback_raises(self, pipe):
        with pytest.raises(RuntimeError, match="stop at step 0"):
            self.run(pipe, self.control_on, **self.failing_callback(pipe))
        assert self.processors_are_stock(pipe)

    def test_contract_save_load_round_trip(self, pipe, tmp_path):
        pipe.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == type(pipe).__name__
        loaded = self.pipeline_class.from_pretrained(tmp_path)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is type(pipe)
        assert torch.equal(self.media(loaded, self.control_on), self.media(pipe, self.control_on))

    def test_contract_callback_on_step_end_sees_every_step_and_its_tensors(self, pipe):
        if not takes_step_end_callback(pipe):  # refused, never silently dropped into the parent's **kwargs
            with pytest.raises(ValueError, match="has no callback_on_step_end"):
                self.run(pipe, self.control_on, callback_on_step_end=lambda *args: {})
            return
        seen = []

        def record(pipeline, step, timestep, kwargs):
            seen.append((step, sorted(kwargs)))
            return {"latents": kwargs["latents"] * 0.5}  # what the callback returns is used

        inputs = ["latents", "prompt_embeds"]
        out = self.media(pipe, self.control_on, callback_on_step_end=record, callback_on_step_end_tensor_inputs=inputs)
        assert seen == [(0, inputs), (1, inputs)]
        assert not torch.equal(out, self.media(pipe, self.control_on))

    def test_contract_model_cpu_offload_leaves_the_result_unchanged(self, pipe, path):
        offloaded = self.pipeline_class.from_pretrained(path)
        offloaded.set_progress_bar_config(disable=True)
        offloaded.enable_model_cpu_offload(device="cpu")  # accelerate's hooks around every model, as on a GPU
        expected = self.media(pipe, self.control_on)
        assert torch.equal(self.media(offloaded, self.control_on), expected)
        assert torch.equal(self.media(offloaded, self.control_on), expected)  # hooks reset properly

    def test_contract_bad_arguments_are_clear_value_errors(self, pipe):
        cases = list(self.bad_arguments)
        if takes_step_end_callback(pipe):
            cases.append((dict(callback_on_step_end_tensor_inputs=["no_such_tensor"]), "no_such_tensor"))
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                self.run(pipe, self.control_on, **kwargs)
        assert self.processors_are_stock(pipe)


class BatchContract(PipelineContract):
    """The contract of pipelines that take a list of prompts and several outputs per prompt."""

    per_prompt_argument: ClassVar[str] = "num_images_per_prompt"  # video pipelines: "num_videos_per_prompt"

    def test_contract_batches_and_images_per_prompt_match_single_runs(self, pipe):
        seeds = [1, 2, 3, 4]
        batch = self.media(pipe, self.control_on, prompt=self.prompts, **{self.per_prompt_argument: 2},
                           generator=[_generator(s) for s in seeds])
        assert batch.shape[0] == 4
        for row, prompt in ((0, self.prompts[0]), (3, self.prompts[1])):
            single = self.media(pipe, self.control_on, prompt=prompt, generator=_generator(seeds[row]))
            torch.testing.assert_close(batch[row : row + 1], single, atol=1e-4, rtol=0)


class StockContract(BatchContract):
    """The contract of pipelines that run their family's diffusers pipeline with controls installed around it."""

    def test_contract_signature_is_the_parents_plus_the_methods(self, pipe):
        parameters = inspect.signature(type(pipe).__call__).parameters
        parent = inspect.signature(parent_pipeline(type(pipe)).__call__).parameters
        assert set(parent) <= set(parameters)
        assert set(self.control_on) | set(self.control_off) <= set(parameters)

    def test_contract_control_off_is_the_parent_pipeline_bit_for_bit(self, pipe, stock):
        expected = self.media(stock)
        assert torch.equal(self.media(pipe, self.control_off), expected)

    def test_contract_control_on_gives_a_different_finite_image(self, pipe, stock):
        images = self.media(pipe, self.control_on)
        assert torch.isfinite(images).all()
        assert not torch.equal(images, self.media(stock))
        assert self.processors_are_stock(pipe)

    def test_contract_whole_floats_run_as_ints(self, pipe):
        """Web forms send 2.0: whole floats of integer arguments are the integers' result, not a deep error."""
        expected = self.media(pipe, self.control_on)
        assert torch.equal(self.media(pipe, self.control_on, num_inference_steps=2.0), expected)

    def test_contract_return_dict_false_is_the_parents_tuple(self, pipe, stock):
        got = self.run(pipe, self.control_off, return_dict=False)
        expected = self.run(stock, return_dict=False)
        assert isinstance(got, tuple) and len(got) == len(expected) and torch.equal(got[0], expected[0])


# One mixin per family: a method's test class for a family is ``(OnFamily, MethodContract)``, made by on_families.
T5_CALL = {"max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}


class OnSD:
    path_fixture = "tiny_sd_path"


class OnSDXL:
    path_fixture = "tiny_sdxl_path"


class OnSD3:
    path_fixture = "tiny_sd3_path"
    call_kwargs = T5_CALL


class OnSD35(OnSD3):
    path_fixture = "tiny_sd35_path"


class OnFlux:
    path_fixture = "tiny_flux_path"
    # at its default size the tiny Flux makes 256 x 256 images (50x the time of the other families' 32 x 32)
    call_kwargs = T5_CALL | {"height": 32, "width": 32}


class OnPixArt:
    path_fixture = "tiny_pixart_path"
    call_kwargs = T5_CALL | {"clean_caption": False, "use_resolution_binning": False}


def on_families(contract: type, *families: type) -> tuple[type, ...]:
    """``contract`` on each family: one test class ``(On<Family>, contract)`` per family, named
    ``Test<Method><Family>`` after the contract (``on_families(RegionalContract, OnSDXL)`` is ``TestRegionalSDXL``).
    A test module binds them to those names, so pytest collects each as its own class."""
    method = contract.__name__.removesuffix("Contract")
    return tuple(
        type(f"Test{method}{family.__name__.removeprefix('On')}", (family, contract), {"__module__": contract.__module__})
        for family in families
    )
