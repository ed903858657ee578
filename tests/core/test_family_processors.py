"""Every family's controlled processors equal its stock ones bit for bit with no control; unknown ones refuse."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

from attnctl.core import AttentionController, AttentionStore
from attnctl.core.controls import AttentionControl
from attnctl.models.tiny import build_tiny_sd_components
from attnctl.models.tiny_families import (
    TINY_MAX_SEQUENCE_LENGTH,
    build_tiny_family_pipeline,
    tiny_call_arguments,
)

FAMILIES = ("sdxl", "sd3", "sd35", "flux", "pixart")


def denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def run_pipe(pipe, family: str) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red cat on the left", **tiny_call_arguments(family)).images


@pytest.fixture(scope="module")
def pipes():
    return {family: build_tiny_family_pipeline(family) for family in FAMILIES}


def compare_every_layer(model: torch.nn.Module, originals: dict) -> list[tuple[str, bool]]:
    """Pre-hooks on every attention module that run the stock and the installed processor on the same inputs."""
    results, handles = [], []
    for name, stock in originals.items():
        module = model.get_submodule(name.removesuffix(".processor"))

        def check(module, args, kwargs, name=name, stock=stock):
            names = list(inspect.signature(module.forward).parameters)
            bound = dict(zip(names, args)) | kwargs
            accepted = set(inspect.signature(module.processor.__call__).parameters)
            bound = {k: v for k, v in bound.items() if k in accepted}
            with torch.no_grad():
                ours, theirs = module.processor(module, **bound), stock(module, **bound)
            pairs = zip(ours, theirs) if isinstance(ours, tuple) else [(ours, theirs)]
            results.append((name, all(torch.equal(a, b) for a, b in pairs)))

        handles.append(module.register_forward_pre_hook(check, with_kwargs=True))
    return results, handles


def run_compared(model: torch.nn.Module, originals: dict, run):
    """``run()`` with the controller installed and every layer checked against its stock processor:
    (per-layer results, the output, the installed processors)."""
    with AttentionController().installed(model):
        installed = dict(model.attn_processors)
        results, handles = compare_every_layer(model, originals)
        try:
            output = run()
        finally:
            for handle in handles:
                handle.remove()
    return results, output, installed


@pytest.mark.parametrize("family", FAMILIES)
def test_no_control_is_the_stock_processor_on_every_layer_and_the_stock_pipeline(family, pipes):
    pipe = pipes[family]
    model = denoiser(pipe)
    stock = run_pipe(pipe, family)
    originals = dict(model.attn_processors)
    results, ours, _ = run_compared(model, originals, lambda: run_pipe(pipe, family))
    assert {name for name, _ in results} == set(originals)  # every layer ran
    assert all(equal for _, equal in results), [name for name, equal in results if not equal]
    assert torch.equal(stock, ours)
    assert all(model.attn_processors[k] is v for k, v in originals.items())


def test_flux_with_fused_projections_is_exact(pipes):
    pipe = pipes["flux"]
    pipe.transformer.fuse_qkv_projections()
    try:
        stock = run_pipe(pipe, "flux")
        with AttentionController().installed(pipe.transformer):
            assert torch.equal(run_pipe(pipe, "flux"), stock)
    finally:
        pipe.transformer.unfuse_qkv_projections()


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux", "pixart", "sdxl"])
def test_store_records_per_token_maps_on_every_family(family, pipes):
    pipe = pipes[family]
    store = AttentionStore()
    stock = run_pipe(pipe, family)
    with AttentionController([store]).installed(denoiser(pipe)) as controller:
        latents = run_pipe(pipe, family)
    torch.testing.assert_close(latents, stock, rtol=1e-3, atol=1e-3)  # explicit softmax instead of the fused kernel
    assert store.num_records == 2 * sum(layer.is_cross for layer in controller.layers) > 0
    maps = store.maps((32, 48))
    assert maps.shape[-2:] == (32, 48) and torch.isfinite(maps).all()
    text = {"sdxl": 77, "sd3": 77 + TINY_MAX_SEQUENCE_LENGTH, "sd35": 77 + TINY_MAX_SEQUENCE_LENGTH}
    assert maps.shape[1] == text.get(family, TINY_MAX_SEQUENCE_LENGTH)
    # each pixel's map is a distribution over the text tokens (joint rows renormalised over text keys)
    torch.testing.assert_close(store.maps().sum(1), torch.ones_like(store.maps().sum(1)), rtol=1e-4, atol=1e-4)


def test_joint_layers_know_where_image_queries_and_text_keys_sit(pipes):
    seen = {}

    class Probe(AttentionStore):
        def observe(self, call, probs):
            seen.setdefault(call.layer.name, (call.image_queries, call.text_keys, call.grid, call.query_tokens))

    for family in ("sd35", "flux"):
        with AttentionController([Probe()]).installed(denoiser(pipes[family])):
            run_pipe(pipes[family], family)
    text, image = TINY_MAX_SEQUENCE_LENGTH, 8 * 12  # 32 x 48 px: a 16 x 24 latent, 2 x 2 patches
    sd3_text = 77 + text
    assert seen["transformer_blocks.0.attn.processor"] == (slice(0, image), slice(image, image + sd3_text), (8, 12),
                                                           image + sd3_text)  # fmt: skip
    assert "transformer_blocks.0.attn2.processor" not in seen  # SD3.5's image-only attention has no text keys
    flux_single = seen["single_transformer_blocks.0.attn.processor"]
    assert flux_single == (slice(text, text + image), slice(0, text), (8, 12), text + image)


def test_unknown_module_class_is_refused_with_the_supported_families():
    class MyAttention(Attention):
        pass

    unet = build_tiny_sd_components()["unet"]
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    attn.__class__ = MyAttention
    with pytest.raises(ValueError, match=r"MyAttention, which attnctl does not control; supported: .*SD3/3\.5.*Flux"):
        with AttentionController().installed(unet):
            pass


def test_unknown_stock_processor_is_refused():
    unet = build_tiny_sd_components()["unet"]
    unet.set_attn_processor(AttnProcessor())
    with pytest.raises(ValueError, match="runs AttnProcessor on its Attention"):
        with AttentionController().installed(unet):
            pass


def test_sd3_with_fused_projections_is_refused(pipes):
    transformer = pipes["sd3"].transformer
    before = dict(transformer.attn_processors)
    transformer.fuse_qkv_projections()
    try:
        with pytest.raises(ValueError, match="FusedJointAttnProcessor2_0.*unfuse_qkv_projections"):
            with AttentionController().installed(transformer):
                pass
    finally:
        transformer.unfuse_qkv_projections()
        transformer.set_attn_processor(before)


def ip_adapter_unet(scale: float = 0.7):
    """The tiny SD UNet with a one-adapter IP-Adapter (4 image tokens) set up as diffusers' loader does."""
    unet = build_tiny_sd_components()["unet"].eval()
    torch.manual_seed(3)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [ImageProjection(image_embed_dim=8, cross_attention_dim=16, num_image_text_embeds=4)]
    )
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
    processors = {}
    for name, processor in unet.attn_processors.items():
        module = unet.get_submodule(name.removesuffix(".processor"))
        if module.is_cross_attention:
            processor = IPAdapterAttnProcessor2_0(module.to_k.out_features, 16, num_tokens=(4,), scale=scale)
            torch.nn.init.normal_(processor.to_k_ip[0].weight), torch.nn.init.normal_(processor.to_v_ip[0].weight)
        processors[name] = processor
    unet.set_attn_processor(processors)
    return unet


def ip_forward(unet, masks=None):
    torch.manual_seed(0)
    sample, text, image = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16), torch.randn(2, 1, 8)
    kwargs = {"ip_adapter_masks": masks} if masks is not None else None
    return unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [image]},
                cross_attention_kwargs=kwargs).sample  # fmt: skip


@pytest.mark.parametrize("masked", [False, True])
def test_ip_adapter_is_kept_bit_for_bit(masked):
    unet = ip_adapter_unet()
    masks = [torch.ones(1, 1, 64, 64).tril()] if masked else None
    with torch.no_grad():
        stock = ip_forward(unet, masks)
        with AttentionController().installed(unet):
            ours = ip_forward(unet, masks)
        without = ip_forward(ip_adapter_unet(scale=0.0), masks)
    assert torch.equal(stock, ours)
    assert not torch.equal(stock, without)  # the adapter does contribute


def test_unet_ip_adapter_weights_stay_the_unets_while_installed():
    unet = ip_adapter_unet()
    stock = [name for name, _ in unet.named_parameters() if "_ip" in name]
    with AttentionController().installed(unet):
        assert len([name for name, _ in unet.named_parameters() if "_ip" in name]) == len(stock) > 0
        unet.to(torch.float64)  # as enable_model_cpu_offload moves the UNet before each forward
    assert all(p.dtype == torch.float64 for name, p in unet.named_parameters() if "_ip" in name)


def test_controls_work_together_with_an_ip_adapter():
    unet = ip_adapter_unet()
    store = AttentionStore()
    with torch.no_grad(), AttentionController([store]).installed(unet):
        out = ip_forward(unet)
    assert torch.isfinite(out).all()
    assert store.maps().shape == (2, 5, 8, 8)  # text tokens only: the image tokens are the adapter's


# -- IP-Adapters on joint attention (SD3, Flux): loaded through the pipelines' own load_ip_adapter ----------------
IP_IMAGE = (torch.linspace(0, 1, 32 * 32 * 3).reshape(32, 32, 3) * 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def ip_pipes(tmp_path_factory):
    from attnctl.models import tiny_ip_adapters

    writers = {"sd3": tiny_ip_adapters.write_tiny_sd3_ip_adapter, "sd35": tiny_ip_adapters.write_tiny_sd3_ip_adapter,
               "flux": tiny_ip_adapters.write_tiny_flux_ip_adapter}  # fmt: skip
    pipes = {}
    for family, write in writers.items():
        pipe = build_tiny_family_pipeline(family)
        tiny_ip_adapters.load_tiny_ip_adapter(pipe, write(pipe.transformer, tmp_path_factory.mktemp(f"ip-{family}")))
        pipes[family] = pipe
    return pipes


def run_ip(pipe, family: str, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red cat on the left", **{"ip_adapter_image": IP_IMAGE} | tiny_call_arguments(family) | kwargs).images


class DampText(AttentionControl):
    """Lowers every image query's logits on the text keys by 2: a control on the cross block only."""

    def applies_to(self, call):
        return call.is_cross

    def logits_bias(self, call, query_len, key_len):
        bias = torch.zeros(query_len, key_len)
        call.cross(bias).fill_(-2.0)
        return bias


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux"])
def test_ip_adapter_processors_equal_the_stock_ones_with_no_control(family, ip_pipes):
    pipe = ip_pipes[family]
    model = pipe.transformer
    stock = run_ip(pipe, family)
    originals = dict(model.attn_processors)
    adapters = {name for name, p in originals.items() if "IPAdapter" in type(p).__name__}
    assert adapters  # the loader installed them
    results, ours, installed = run_compared(model, originals, lambda: run_ip(pipe, family))
    assert {type(installed[name]).__name__ for name in adapters} == {f"Controlled{'Flux' if family == 'flux' else 'SD3'}"
                                                                     "IPAdapterProcessor"}  # fmt: skip
    ran = {name for name, _ in results}
    assert adapters <= ran and all(name.startswith("image_proj.") for name in set(originals) - ran)  # resampler
    assert all(equal for _, equal in results), [name for name, equal in results if not equal]
    assert torch.equal(stock, ours)
    without = run_ip(pipe, family, ip_adapter_image=None) if family != "flux" else None
    assert without is None or not torch.equal(stock, without)  # the adapter contributes
    assert all(model.attn_processors[k] is v for k, v in originals.items())


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_ip_adapter_stays_the_stock_adapter_while_installed(family, ip_pipes):
    pipe = ip_pipes[family]
    model = pipe.transformer
    stock_names = {name for name, _ in model.named_parameters() if "_ip" in name}
    with AttentionController().installed(model):
        # the adapter's weights are still the transformer's (so .to() and cpu offload move them)
        installed = {name for name, _ in model.named_parameters() if "_ip" in name}
        assert len(installed) == len(stock_names) > 0
        pipe.set_ip_adapter_scale(0.3)  # diffusers' setter reaches the stock adapters
        if family == "sd3":
            assert pipe.is_ip_adapter_active  # SD3's pipeline encodes the image only when this holds
    scales = [p.scale for p in model.attn_processors.values() if "IPAdapter" in type(p).__name__]
    pipe.set_ip_adapter_scale(0.8)
    assert all(s in (0.3, [0.3]) for s in scales)


def captured_call(pipe, family: str, layer: str) -> dict:
    """The keyword arguments the first call of the attention module ``layer`` gets in a stock run."""
    module = pipe.transformer.get_submodule(layer)
    seen = {}

    def grab(module, args, kwargs):
        names = list(inspect.signature(module.forward).parameters)
        seen.setdefault("kwargs", dict(zip(names, args)) | kwargs)

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        run_ip(pipe, family)
    finally:
        handle.remove()
    return seen["kwargs"]


def test_flux_ip_adapter_term_is_the_stock_one_under_a_control(ip_pipes):
    pipe = ip_pipes["flux"]
    module = pipe.transformer.get_submodule("transformer_blocks.0.attn")
    kwargs = captured_call(pipe, "flux", "transformer_blocks.0.attn")
    with torch.no_grad():
        image, text, adapter_term = module(**kwargs)
        with AttentionController([DampText()]).installed(pipe.transformer):
            ours = module(**kwargs)
    assert len(ours) == 3 and torch.equal(ours[2], adapter_term)  # the adapter's term: untouched
    assert not torch.equal(ours[0], image)  # the control acts on the joint attention


def test_sd3_ip_adapter_term_is_the_stock_one_under_a_control(ip_pipes):
    pipe = ip_pipes["sd3"]
    module = pipe.transformer.get_submodule("transformer_blocks.0.attn")
    kwargs = captured_call(pipe, "sd3", "transformer_blocks.0.attn")
    adapter = module.processor

    def with_and_without_adapter():
        outputs = []
        for scale in (adapter.scale, 0):
            before, adapter.scale = adapter.scale, scale
            outputs.append(module(**kwargs)[0])
            adapter.scale = before
        return outputs

    with torch.no_grad():
        stock, stock_plain = with_and_without_adapter()
        with AttentionController([DampText()]).installed(pipe.transformer):
            ours, ours_plain = with_and_without_adapter()
    assert not torch.equal(ours, stock)  # the control acts on the joint attention
    # to_out is affine: the adapter's term (through to_out's weight) is the same with and without the control
    torch.testing.assert_close(ours - ours_plain, stock - stock_plain, rtol=1e-5, atol=1e-6)
    assert not torch.equal(stock, stock_plain)


def test_flux_ip_adapter_layer_without_image_tokens_is_a_clear_error(ip_pipes):
    pipe = ip_pipes["flux"]
    with pytest.raises(TypeError):  # the stock processor: zip over None
        run_ip(pipe, "flux", ip_adapter_image=None)
    with AttentionController().installed(pipe.transformer):
        with pytest.raises(ValueError, match="transformer_blocks.0.attn.processor is an IP-Adapter layer but got no"):
            run_ip(pipe, "flux", ip_adapter_image=None)
