"""The CUDA backend's CPU-side logic: shape buckets and padding (exact by padding invariance), the FP8 modules'
arithmetic, which layers go FP8, the fused meta-attention, options and errors. The GPU runs are
benchmarks/cuda_backend_check.py."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import mahia.runtime as runtime
from mahia.artifact import ArtifactIntegrityError, DimRange, PrecisionRecord, read_manifest
from mahia.calibration.table import CalibrationTable, TensorRange
from mahia.kernels import reference
from mahia.model import build_model, get_config, random_inputs
from mahia.model.config import CLS_ID
from mahia.model.filters import ImplicitFilter
from mahia.model.meta_attention import MetaAttention
from mahia.model.moe import MixtureOfExperts
from mahia.runtime.backends.cuda import (
    CudaOptions,
    DeployedModel,
    Float32Router,
    FusedMetaAttention,
    PaddedLinear,
    PrecomputedFilter,
    deployable_module,
    fuse_meta_attentions,
    load_artifact,
    rebuild_model,
)
from mahia.runtime.backends.cuda_buckets import SEQ_ALIGNMENT, Buckets, pad_inputs
from mahia.runtime.backends.cuda_fp8 import Fp8Linear, Fp8MixtureOfExperts, activation_scales, fp8_linear_layers
from tests.conftest import relative_error


def test_buckets_follow_the_manifest_ranges() -> None:
    default = Buckets.from_ranges(DimRange("batch", 1, 8, 16), DimRange("seq", 1, 128, 512))
    assert default.batch == (1, 2, 4, 8, 16)
    assert default.seq == (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # 24 aligned to 32
    odd = Buckets.from_ranges(DimRange("batch", 3, 8, 24), DimRange("seq", 20, 64, 160))
    assert odd.batch == (4, 8, 16, 24) and odd.seq == (32, 48, 64, 96, 128, 160)
    assert default.bucket(3, 37) == (4, 48) and default.bucket(1, 1) == (1, 16) and default.bucket(16, 512) == (16, 512)
    assert odd.bucket(17, 129) == (24, 160)
    with pytest.raises(ValueError, match="above the largest bucket 16 x 512"):
        default.bucket(17, 10)
    with pytest.raises(ValueError, match="seq buckets must be distinct positive sizes"):
        Buckets((1,), (32, 16))


def test_seq_buckets_align_the_long_convolutions_length_within_max_seq_len() -> None:
    from mahia.kernels.triton.long_conv import LENGTH_ALIGNMENT

    assert SEQ_ALIGNMENT == LENGTH_ALIGNMENT
    # 5 tabular tokens (the base model's): 128 words + 5 = 133 is padded to 144, 2048 + 5 to 2064
    aligned = Buckets.from_ranges(DimRange("batch", 1, 8, 32), DimRange("seq", 1, 512, 2048), 5, 4096)
    assert aligned.seq == (27, 43, 59, 75, 107, 139, 203, 267, 395, 523, 779, 1035, 1547, 2059)
    assert all((size + 5) % SEQ_ALIGNMENT == 0 for size in aligned.seq)
    assert aligned.bucket(1, 128) == (1, 139) and aligned.bucket(32, 2048) == (32, 2059)
    # at max_seq_len the bucket stays where it was, unaligned
    capped = Buckets.from_ranges(DimRange("batch", 1, 1, 1), DimRange("seq", 1, 64, 96), 5, 96)
    assert capped.seq == (27, 43, 59, 75, 96)


def test_padding_fills_buckets_with_masked_positions_and_cls_rows(generator: torch.Generator) -> None:
    config = get_config("tiny")
    inputs = random_inputs(config, 3, 37, generator)
    padded = pad_inputs(inputs, 4, 48)
    assert padded["input_ids"].shape == (4, 48) and padded["numeric"].shape == (4, config.num_numeric)
    assert torch.equal(padded["input_ids"][:3, :37], inputs["input_ids"])
    assert torch.equal(padded["attention_mask"][:3, :37], inputs["attention_mask"])
    assert not padded["attention_mask"][:, 37:].any() and not padded["input_ids"][:, 37:].any()
    assert padded["input_ids"][3].tolist() == [CLS_ID] + [0] * 47 and padded["attention_mask"][3].sum() == 1
    assert torch.equal(padded["numeric"][:3], inputs["numeric"]) and not padded["numeric"][3].any()


@pytest.mark.parametrize("batch, seq", [(3, 37), (1, 5), (4, 48)])
def test_a_padded_bucket_gives_the_unpadded_logits(batch: int, seq: int, generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=1).eval()
    inputs = random_inputs(model.config, batch, seq, generator)
    with torch.inference_mode():
        want = model(**inputs)
    module, fp8_layers = deployable_module(model, "fp32", "cpu")
    deployed = DeployedModel(module, Buckets((4, 8), (48, 64)), torch.device("cpu"))
    got = deployed.forward(inputs)
    assert got.shape == want.shape and fp8_layers == []
    assert relative_error(got, want) < 1e-5


def test_fp8_linear_is_the_dequantised_product() -> None:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 40)  # 40 outputs: padded to 48 inside
    x = torch.randn(3, 5, 64, generator=generator)
    scale = float(x.abs().max()) / 448
    fp8 = Fp8Linear(linear, scale, torch.float32)
    weight, weight_scale = reference.quantize_experts_fp8(linear.weight.detach())
    x_q = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).double() * scale
    want = x_q @ reference.dequantize_experts_fp8(weight, weight_scale, torch.float64).t() + linear.bias.double()
    got = fp8(x)
    assert got.shape == (3, 5, 40)
    assert relative_error(got, want) < 1e-6
    assert relative_error(got, linear(x)) < 0.1  # and it is the layer, to E4M3 precision
    with pytest.raises(ValueError, match="input width 40 is not a multiple of 16"):
        Fp8Linear(nn.Linear(40, 16), 1.0, torch.float32)


def test_fp8_experts_match_the_reference_with_dequantised_weights(generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=2).eval()
    moe = model.blocks[0].moe
    x = torch.randn(2, 9, model.config.d_model, generator=generator)
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0
    fp8 = Fp8MixtureOfExperts(moe, torch.float32)
    got, logits = fp8(x, mask)
    w1 = reference.dequantize_experts_fp8(fp8.w1, fp8.w1_scale, torch.float32)
    w2 = reference.dequantize_experts_fp8(fp8.w2, fp8.w2_scale, torch.float32)
    want = reference.moe_ffn(x.reshape(-1, x.shape[-1]), logits, mask.reshape(-1).bool(), w1, w2, moe.top_k, 0.0)
    assert relative_error(got.reshape(-1, x.shape[-1]), want) < 1e-6
    with torch.inference_mode():
        assert relative_error(got, moe(x, mask)[0]) < 0.1


def test_fp8_experts_take_fp8_activations_where_calibration_has_their_ranges(generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=2).eval()
    moe = model.blocks[0].moe
    x = torch.randn(2, 9, model.config.d_model, generator=generator)
    mask = torch.ones(2, 9)
    x_scale, hidden_scales = float(x.abs().max()) / 448, [0.02, 0.03, 0.01, 0.02]
    fp8 = Fp8MixtureOfExperts(moe, torch.float32, x_scale, hidden_scales)
    got, logits = fp8(x, mask)
    want = reference.moe_ffn_fp8(x.reshape(-1, x.shape[-1]).double(), logits.double(), mask.reshape(-1).bool(),
                                 fp8.w1, fp8.w1_scale, fp8.w2, fp8.w2_scale, moe.top_k, 0.0,
                                 torch.tensor([x_scale]), torch.tensor(hidden_scales))
    assert relative_error(got.reshape(-1, x.shape[-1]), want) < 1e-6
    with pytest.raises(ValueError, match="give both x_scale and hidden_scales"):
        Fp8MixtureOfExperts(moe, torch.float32, x_scale, None)
    with pytest.raises(ValueError, match="3 hidden scales for 4 experts"):
        Fp8MixtureOfExperts(moe, torch.float32, x_scale, hidden_scales[:3])
    # to_fp8 gives the experts FP8 activations where the scales hold the MoE's input and every expert's hidden rows
    scales = {"blocks.0.moe/moe_ffn:x": x_scale, **{f"blocks.0.moe/moe_ffn:expert{e}.hidden": s
                                                   for e, s in enumerate(hidden_scales)},
              "blocks.1.moe/moe_ffn:x": x_scale}  # block 1's hidden ranges missing: FP8 weights only
    module, _ = deployable_module(model, "fp8", "cpu", scales)
    assert module.blocks[0].moe.x_scale.item() == pytest.approx(x_scale)
    assert module.blocks[0].moe.hidden_scale.tolist() == pytest.approx(hidden_scales)
    assert module.blocks[1].moe.x_scale is None and module.blocks[1].moe.hidden_scale is None


def test_fp8_layers_follow_the_export_rule_and_the_whole_model_stays_close(generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=3).eval()
    inputs = random_inputs(model.config, 3, 37, generator)
    amax: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, path=path: amax.__setitem__(path, float(a[0].abs().max())))
             for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.inference_mode():
        want = model(**inputs)
    for hook in hooks:
        hook.remove()
    scales = {path: value / 448 for path, value in amax.items()}
    layers = fp8_linear_layers(model, scales)
    assert "blocks.0.attention.in_proj" in layers and "memory.query" in layers
    assert not [p for p in layers if any(k in p for k in ("router", "gate", "fabric", "head", "filter"))]
    module, deployed_layers = deployable_module(model, "fp8", "cpu", scales)
    assert deployed_layers == layers
    assert isinstance(module.blocks[1].moe, Fp8MixtureOfExperts)
    assert isinstance(module.blocks[1].attention, FusedMetaAttention)
    assert not module.blocks[1].attention.ssd_gated_norm  # fp8: Inductor fuses the norm with the FP8 quantisation
    assert module.head.weight.dtype == torch.bfloat16
    got = DeployedModel(module, Buckets((4,), (48,)), torch.device("cpu")).forward(inputs)
    assert relative_error(got.float(), want) < 0.1  # E4M3 activations and weights, bf16 elsewhere


def test_the_fused_meta_attention_takes_only_padded_depthwise_short_convs() -> None:
    attention = build_model(get_config("tiny"), seed=0).blocks[0].attention
    channels = attention.hyena.short_conv.in_channels
    attention.hyena.short_conv = nn.Conv1d(channels, channels, 3, groups=channels, padding=1)
    with pytest.raises(ValueError, match="takes a depthwise Conv1d of stride 1 padded by width - 1"):
        FusedMetaAttention(attention)
    attention.hyena.short_conv = nn.Conv1d(channels, channels, 3, groups=channels // 2, padding=2)
    with pytest.raises(ValueError, match="takes a depthwise Conv1d"):
        FusedMetaAttention(attention)


def test_only_the_meta_attentions_routers_filters_and_unaligned_linears_are_swapped(
        generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=4).eval()
    module, _ = deployable_module(model, "fp32", "cpu")
    attentions = [path for path, m in model.named_modules() if isinstance(m, MetaAttention)]
    routers = [f"{path}.router" for path, m in model.named_modules() if isinstance(m, MixtureOfExperts)]
    filters = [path for path, m in model.named_modules() if isinstance(m, ImplicitFilter)]
    unaligned = [path for path, m in model.named_modules()
                 if isinstance(m, nn.Linear) and m.out_features % 8 and path not in routers]
    assert len(attentions) == len(routers) == model.config.n_layers == 2
    # tiny's fabric (32 -> 4), SSD projections (32 -> 82), gates (32 -> 3) and head (32 -> 2)
    assert len(unaligned) == 2 + 2 * model.config.n_layers
    assert {path.rsplit(".", 1)[-1] for path in unaligned} == {"gate", "proj", "head"}
    assert len(filters) == 2 * model.config.n_layers  # Hyena's and the Fourier branch's

    def outside_filters(modules: nn.Module) -> dict[str, nn.Module]:  # a filter's submodules are its own
        return {path: m for path, m in modules.named_modules() if not path.startswith(tuple(f"{f}." for f in filters))}

    original, deployed = outside_filters(model), outside_filters(module)
    assert deployed.keys() == original.keys()
    assert sorted(path for path in original if type(deployed[path]) is not type(original[path])) == \
        sorted(attentions + routers + unaligned + filters)
    assert all(isinstance(deployed[path], FusedMetaAttention) and deployed[path].ssd_gated_norm for path in attentions)
    assert all(isinstance(deployed[path], Float32Router) for path in routers)
    assert all(isinstance(deployed[path], PaddedLinear) for path in unaligned)
    assert all(isinstance(deployed[path], PrecomputedFilter) for path in filters)
    kept = {name: value for name, value in model.state_dict().items()
            if not name.startswith(tuple(unaligned + filters))}
    assert all(torch.equal(module.state_dict()[name], value) for name, value in kept.items())
    for batch, seq in [(1, 37), (3, 37), (1, 1), (3, 1)]:
        inputs = random_inputs(model.config, batch, seq, generator)
        with torch.inference_mode():
            want, got = model(**inputs), module(**inputs)
        assert relative_error(got, want) < 1e-6  # float32 rounding (measured on this CPU: bitwise equal)


@pytest.mark.parametrize("causal", [True, False])
def test_a_precomputed_filter_keeps_the_float32_taps_of_each_bucket_length(causal: bool) -> None:
    source = ImplicitFilter(get_config("tiny"), causal=causal)
    with torch.no_grad():
        source.log_rate.add_(0.3)  # away from the initial decay, so a stale copy would show
    filt = PrecomputedFilter(source, torch.bfloat16)
    like = torch.zeros(1, dtype=torch.bfloat16)
    with torch.no_grad():
        want = {length: source(length, torch.zeros(1)).bfloat16() for length in (1, 37, 48)}
        filt.add_length(37)
        filt.add_length(37)
        assert filt.lengths == {37} and filt.taps_37.dtype == torch.bfloat16
        assert not filt.state_dict().keys() & {"taps_37"}  # derived, never saved
        for length, taps in want.items():  # 37 kept; 1 and 48 computed on the call, the same way
            got = filt(length, like)
            assert got.dtype == torch.bfloat16 and torch.equal(got, taps)
        assert filt.lengths == {37}


def test_a_deployed_model_precomputes_the_filters_of_its_bucket_lengths(generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=6).eval()
    module, _ = deployable_module(model, "fp32", "cpu")
    deployed = DeployedModel(module, Buckets((1, 4), (16, 43)), torch.device("cpu"))
    tabular = model.config.num_tabular_tokens
    filters = [m for m in deployed.module.modules() if isinstance(m, PrecomputedFilter)]
    assert filters and all(f.lengths == {16 + tabular, 43 + tabular} for f in filters)
    inputs = random_inputs(model.config, 3, 37, generator)
    with torch.inference_mode():
        got, want = deployed.forward(inputs), model(**inputs)
    assert all(f.lengths == {16 + tabular, 43 + tabular} for f in filters)  # nothing added by a call
    assert relative_error(got, want) < 1e-5  # float32 rounding


def test_a_padded_linear_gives_the_linears_output_from_aligned_weights(generator: torch.Generator) -> None:
    for out_features, bias in [(3, True), (82, False), (8, True)]:
        linear = nn.Linear(32, out_features, bias=bias)
        padded = PaddedLinear(linear)
        assert padded.weight.shape == (-(-out_features // 8) * 8, 32)
        assert torch.equal(padded.weight[:out_features], linear.weight)
        assert not padded.weight[out_features:].any()
        x = torch.randn(3, 37, 32, generator=generator)
        with torch.inference_mode():
            got, want = padded(x), linear(x)
        assert got.shape == want.shape
        assert relative_error(got, want) < 1e-6  # float32 rounding of the same sums


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_moe_routers_run_in_float32_from_the_fp32_weights(precision: str, generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=5).eval()
    scales = {path: 0.01 for path, m in model.named_modules() if isinstance(m, nn.Linear)}
    module, _ = deployable_module(model, precision, "cpu", scales if precision == "fp8" else None)
    x = torch.randn(7, model.config.d_model, generator=generator)
    for path, moe in model.named_modules():
        if isinstance(moe, MixtureOfExperts):
            router = module.get_submodule(path).router
            assert torch.equal(router.weight, moe.router.weight) and router.weight.dtype == torch.float32
            logits = router(x.bfloat16())  # a bf16 activation in, float32 logits of its exact values out
            assert logits.dtype == torch.float32
            assert torch.equal(logits, moe.router(x.bfloat16().float()))
            # The parts the GPU multiplies by: bf16, summing back to the fp32 weight within 2^-24 of each weight,
            # and the sum of their products with the bf16 activation is the float32 logits up to float32 rounding
            parts = router.weight_parts.chunk(3)
            assert all(part.dtype == torch.bfloat16 for part in parts)
            residual = router.weight - (parts[0].float() + parts[1].float() + parts[2].float())
            assert (residual.abs() <= 2.0 ** -24 * router.weight.abs()).all()
            products = [x.bfloat16().float() @ part.float().t() for part in parts]
            assert relative_error(products[0] + products[1] + products[2], logits) < 1e-6  # measured: 1.1e-7
    inputs = random_inputs(model.config, 3, 37, generator)
    with torch.inference_mode():
        got = DeployedModel(module, Buckets((4,), (48,)), torch.device("cpu")).forward(inputs)
        want = model(**inputs)
    assert relative_error(got.float(), want) < (0.02 if precision == "bf16" else 0.1)


def test_activation_scales_come_from_an_fp8_table_only() -> None:
    entry = TensorRange(amax=4.48, scale=0.01, zero_point=0, dtype="float8e4m3fn", method="max", percentile=None,
                        samples=16, data_hash="h")
    tensors = {"memory.query:input": entry, "b.moe/moe_ffn:x": entry, "b.moe/moe_ffn:expert3.hidden": entry,
               "b.moe/moe_ffn:expert3.input": entry, "b.attention.ssd/ssd_scan:x": entry}
    table = CalibrationTable("float8e4m3fn", "max", 16, "h", {}, tensors)
    assert activation_scales(table) == pytest.approx(
        {"memory.query": 0.01, "b.moe/moe_ffn:x": 0.01, "b.moe/moe_ffn:expert3.hidden": 0.01})
    with pytest.raises(ValueError, match="needs a float8e4m3fn table"):
        activation_scales(dataclasses.replace(table, dtype="int8"))


def test_options_and_precisions_are_checked() -> None:
    with pytest.raises(ValueError, match="must be a CUDA device"):
        CudaOptions(device="cpu")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        DeployedModel(nn.Identity(), Buckets((1,), (16,)), torch.device("cpu"), cuda_graphs=True)
    model = build_model(get_config("tiny")).eval()
    with pytest.raises(ValueError, match="not 'int8'; deploy integer precisions with backend='onnx'"):
        deployable_module(model, "int8", "cpu")
    with pytest.raises(ValueError, match="fp8 needs activation scales"):
        deployable_module(model, "fp8", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a CUDA GPU")
def test_without_cuda_the_backend_says_so(tiny_export: dict) -> None:
    with pytest.raises(runtime.BackendUnavailableError, match="backend 'cuda' needs a CUDA GPU: torch .* "):
        runtime.load(tiny_export["dir"], backend="cuda")
    with pytest.raises(TypeError, match="backend 'onnx' takes OnnxRuntimeOptions, got CudaOptions"):
        runtime.load(tiny_export["dir"], backend="onnx", options=CudaOptions())


def test_the_artifact_must_be_deployable_and_its_weights_must_match(tiny_export: dict, tmp_path) -> None:
    directory = tiny_export["dir"]
    manifest = read_manifest(directory)
    int8 = dataclasses.replace(manifest, precision=PrecisionRecord("int8", "int8 Q/DQ ONNX"))
    with pytest.raises(ValueError, match="is int8: deploy it with backend='onnx'"):
        load_artifact(directory, int8)
    with pytest.raises(TypeError, match="takes CudaOptions, got str"):
        load_artifact(directory, manifest, "graphs please")
    assert rebuild_model(directory, manifest).config == get_config("tiny")  # the recorded seeded config
    other = dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, weights_sha256="0" * 64))
    with pytest.raises(ArtifactIntegrityError, match="do not hash to the weights_sha256"):
        rebuild_model(directory, other)
    with pytest.raises(ValueError, match="missing.safetensors is not here .*: pass CudaOptions"):
        rebuild_model(directory, manifest, str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("ssd_gated_norm", [True, False])
@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_the_fused_meta_attention_is_the_meta_attention(dtype: torch.dtype, bound: float, ssd_gated_norm: bool,
                                                        generator: torch.Generator) -> None:
    model = build_model(get_config("tiny"), seed=6).eval()
    cast = copy.deepcopy(model).to(dtype)
    attention = cast.blocks[1].attention
    fused = copy.deepcopy(cast)
    fuse_meta_attentions(fused, ssd_gated_norm)
    swapped = fused.blocks[1].attention
    assert isinstance(swapped, FusedMetaAttention) and not any(type(m) is MetaAttention for m in fused.modules())
    assert swapped.ssd_gated_norm is ssd_gated_norm
    x = torch.randn(3, 37, model.config.d_model, generator=generator).to(dtype)
    mask = torch.ones(3, 37, dtype=dtype)  # as MahiaX passes it: in the activations' dtype
    mask[1, 20:] = 0
    with torch.inference_mode():
        got, want = swapped(x, mask), attention(x, mask)
        # bf16: the model rounds each branch, the gate weights and products to bf16; the fused ends round once
        assert got.dtype == dtype and relative_error(got.float(), want.float()) < bound
        exact = copy.deepcopy(model.blocks[1].attention).double()(x.double(), mask.double())  # the fp32 model's
        assert relative_error(got.double(), exact) <= 1.5 * relative_error(want.double(), exact) + 1e-7


def test_fp8_linear_gives_the_fp8_gemm_a_row_major_activation(monkeypatch: pytest.MonkeyPatch,
                                                              generator: torch.Generator) -> None:
    # cuBLASLt takes only a row-major first operand; the compiled deployment's inlined gate sum handed Fp8Linear a
    # transposed layout's view at batch 1 (H200, 2026-12-01). The CPU GEMM takes any layout, so record what it gets.
    layer = Fp8Linear(nn.Linear(32, 48), 0.01, torch.float32)
    x = torch.randn(1, 32, 37, generator=generator).transpose(1, 2)  # [1, 37, 32], strides of [1, 32, 37]
    strides = []
    scaled_mm = torch._scaled_mm

    def recording(a: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        strides.append(a.stride())
        return scaled_mm(a, *args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", recording)
    assert torch.equal(layer(x), layer(x.contiguous()))
    assert strides == [(32, 1), (32, 1)]
