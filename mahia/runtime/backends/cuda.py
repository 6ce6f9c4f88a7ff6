"""Backend "cuda": an artifact on a CUDA GPU, every `mahia::` op on its Triton kernel, one CUDA graph per shape
bucket, optionally torch.compile'd.

How the GPU program is obtained: the eager MahiaX is rebuilt from the artifact's model source (the manifest's
`model.source`: the embedded default, a seeded config, or a checkpoint) and must hash to the manifest's
`weights_sha256` (after every artifact file passed its sha256 check), then cast, or for fp8 quantised, and
moved to the GPU. Not the `.pt2`: only the fp32 and bf16 artifacts have one (fp16 and fp8 are ONNX only); it
was traced on the CPU with CPU device constants; a `.pt2` written by one torch release is not promised to load
in another (the export machine and the GPU machine often differ); and FP8 GEMMs are a module swap on the eager
model but a graph rewrite on a program.

    deployment = mahia.runtime.load("artifacts/small-bf16-...", backend="cuda")
    logits = deployment.run(inputs)   # numpy float32 [batch, num_classes]

bf16, fp16 and fp32 artifacts run in their dtype; fp8 artifacts run bf16 activations with FP8 GEMMs and FP8
experts (cuda_fp8.py) scaled by the artifact's calibration.json. Every input is validated as on the other
backends (Deployment.check_inputs), then padded to its (batch, seq) bucket (cuda_buckets.py).

Every precision runs the Hyena short convolutions as ShiftedShortConv (width shifted multiply-adds that
torch.compile fuses into one elementwise kernel) instead of PyTorch's generic depthwise-conv kernel, and the MoE
routers in float32 (Float32Router: the top-k choice is discrete), the long filters' taps precomputed per bucket
length (PrecomputedFilter), and Linear layers whose output width is not a multiple of 8 with zero-padded weights
(PaddedLinear: cuBLAS's aligned kernels). Compiled, the meta-attention gate's weighted sum is left to Inductor
(InlineGateCombine), which fuses it with the branch outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mahia.artifact import ArtifactIntegrityError, Manifest
from mahia.calibration.table import read_table_json
from mahia.default import load_model
from mahia.kernels import use_reference_ops
from mahia.model import INPUT_NAMES, MahiaX, ModelSource, weights_sha256
from mahia.model.filters import ImplicitFilter
from mahia.model.meta_attention import HyenaBranch, MetaAttention
from mahia.model.moe import MixtureOfExperts
from mahia.runtime.backends.base import BackendUnavailableError, Runner
from mahia.runtime.backends.cuda_buckets import Buckets, fill_padded, pad_inputs
from mahia.runtime.backends.cuda_fp8 import activation_scales, to_fp8

ACTIVATION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}
CALIBRATION_FILE = "calibration.json"  # mahia.calibration.build.CALIBRATION_JSON, without importing the builder
HALF_DTYPES = (torch.bfloat16, torch.float16)
ROUTER_WEIGHT_PARTS = 3  # Float32Router: bf16 parts of a float32 weight
LINEAR_ALIGNMENT = 8  # output features of a GEMM: rows of 16 bytes in bf16 and fp16 (PaddedLinear)
FP8_CAPABILITY = (8, 9)  # E4M3 tensor-core GEMMs: Ada (8.9) and Hopper (9.0) on
INPUT_DTYPES = {"input_ids": torch.int64, "attention_mask": torch.int64, "numeric": torch.float32,
                "categorical": torch.int64}


@dataclass(frozen=True)
class CudaOptions:
    """How the CUDA backend runs the model."""

    cuda_graphs: bool = True  # capture one CUDA graph per (batch, seq) bucket on its first batch, replay after
    compile: bool = False  # torch.compile the module before capture: one static compile per bucket (dynamic=False)
    device: str = "cuda"
    checkpoint: str | None = None  # the checkpoint the artifact was exported from, when its recorded path is gone

    def __post_init__(self) -> None:
        if not torch.device(self.device).type == "cuda":
            raise ValueError(f"CudaOptions.device must be a CUDA device ('cuda', 'cuda:1', ...), got {self.device!r}")


def require_cuda(device: str, precision: str) -> None:
    """BackendUnavailableError unless `device` is a usable CUDA GPU (of compute capability >= 8.9 for fp8)."""
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else \
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        raise BackendUnavailableError(f"backend 'cuda' needs a CUDA GPU: {built}; use backend='onnx' or 'pt2' on a CPU")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"backend 'cuda': device {device!r} does not exist "
                                      f"({torch.cuda.device_count()} GPU(s) visible)")
    capability = torch.cuda.get_device_capability(index)
    if precision == "fp8" and capability < FP8_CAPABILITY:
        raise BackendUnavailableError(f"backend 'cuda': fp8 needs compute capability >= 8.9 (FP8 tensor cores); "
                                      f"{torch.cuda.get_device_name(index)} has {capability[0]}.{capability[1]}")


class ShiftedShortConv(nn.Module):
    """A Hyena short convolution (depthwise nn.Conv1d of width w, padded by w - 1) as w shifted multiply-adds over
    the input padded by w - 1 on the left: y[..., t] = b + sum_j W[:, j] * x[..., t - (w - 1) + j], for t < L.

    Why: on CUDA the nn.Conv1d runs as PyTorch's generic `conv_depthwise2d_forward_kernel_generic`, and
    torch.compile leaves convolutions to that aten kernel. Measured on an H200 (bf16 base config,
    `PYTHONPATH=$PWD python3 benchmarks/forward_kernels.py --shapes 1x128,8x512,32x2048`, 2026-12-01): 12.4 ms of
    a 164.7 ms forward at 32 x 2048 tokens (8 calls of 1.55 ms, ~10x their memory traffic), 0.8 ms of 11.1 ms at
    8 x 512. These multiply-adds are elementwise, so torch.compile fuses them into one kernel.

    The output has the L causal positions only, not the conv's L + w - 1: the one call site,
    `causal_depthwise_conv(x, conv)`, returns `conv(x)[..., :L]`, and of a length-L output that slice is the
    whole tensor, so the call gives the same [B, C, L] as with the nn.Conv1d (the right padding the conv adds
    only feeds the positions from L on, which the call drops).

    bf16 and fp16 inputs are multiplied and summed in float32 and rounded once, as the aten kernel accumulates;
    the weights are the (already cast) conv's, held in float32. Measured on the CPU (tests/runtime/
    test_cuda_backend.py): bitwise equal to the nn.Conv1d in float32 and bf16, a relative error of 1.66e-3 to
    the float64 conv in bf16 (the output's rounding), where summing in bf16 would give 3.0e-3. Compiled (Inductor
    on the CPU), the pad, the w multiply-adds and the cast are one fused kernel; uncompiled, they are w + 2
    elementwise kernels.
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        channels, _, width = conv.weight.shape
        if (conv.groups, conv.in_channels, conv.stride, conv.dilation, conv.padding, conv.padding_mode) != \
                (channels, channels, (1,), (1,), (width - 1,), "zeros"):
            raise ValueError(f"ShiftedShortConv takes a depthwise Conv1d of stride 1 padded by width - 1, got {conv}")
        self.width = width
        self.register_buffer("weight", conv.weight.detach().float()[:, 0].t()[:, :, None].contiguous())  # [w, C, 1]
        bias = torch.zeros(channels, device=conv.weight.device) if conv.bias is None else conv.bias.detach().float()
        self.register_buffer("bias", bias[:, None].clone())  # [C, 1]

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, L] -> the causal positions [B, C, L] of the conv's output, in x's dtype."""
        length = x.shape[-1]
        padded = F.pad(x, (self.width - 1, 0))
        y = self.bias  # float32, as the weight: each addcmul below computes and returns float32
        for j in range(self.width):
            y = torch.addcmul(y, self.weight[j], padded[..., j:j + length])
        return y.to(x.dtype)


def shift_short_convs(module: nn.Module) -> None:
    """Replace, in place, the short conv of every HyenaBranch in `module` by its ShiftedShortConv."""
    for branch in module.modules():
        if isinstance(branch, HyenaBranch):
            branch.short_conv = ShiftedShortConv(branch.short_conv)


class Float32Router(nn.Module):
    """An MoE router computed in float32 from the fp32 model's weights, whatever the activation dtype.

    Why: the top-k choice is discrete, so a logit rounded to bf16 can swap a token's experts where two are
    nearly tied, which moves that token's output by far more than rounding does. Measured on the H200 with the
    trained default (`cd benchmarks && python3 cuda_bf16_error.py ARTIFACT --isolate blocks.0.moe --moe-steps
    blocks.0.moe`, 2026-12-01): the first MoE, alone on the same bf16 inputs, was 2.16e-2 away from the same bf16
    MoE on the CPU while each of its expert steps agreed within 1.4e-4 given the same router logits; the whole
    model was 1.15e-2 from fp32 at the 3 x 37 parity point (budget 1e-2). Both `mahia::moe_ffn` paths take float32
    logits with bf16 tokens.

    How, on a GPU with bf16 or fp16 activations: the fp32 weight W is split into ROUTER_WEIGHT_PARTS parts in the
    activation dtype, each the rounding of what the parts before it leave (W = w0 + w1 + w2 + r, |r| <= 2^-24 |W|
    in bf16, where no part underflows), and one GEMM of the activations with [w0; w1; w2] accumulates and returns
    float32 (`torch.mm(..., out_dtype=torch.float32)`), the parts' logits then summed. The activations are exact in
    their dtype and the product of two bf16 values is exact in float32, so these are the float32 logits up to
    float32 rounding. The float32 GEMM it replaces ran as a SIMT kernel on the H200 (`benchmarks/forward_kernels.py
    --deployed --ops`, 2026-12-01): 0.041 ms of 1.486 at 1 x 139 tokens, 0.826 ms of 68.8 at 32 x 2059, plus the
    activations' cast to float32. Elsewhere (a CPU, float32 activations) the router is a float32 F.linear of the
    activations cast to float32.
    """

    def __init__(self, router: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        weight = router.weight.detach().float()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", None if router.bias is None else router.bias.detach().float().clone())
        parts, rest = [], weight
        for _ in range(ROUTER_WEIGHT_PARTS):
            parts.append(rest.to(dtype))
            rest = rest - parts[-1].float()
        self.register_buffer("weight_parts", torch.cat(parts))  # [parts * E, D]

    def forward(self, x: Tensor) -> Tensor:
        """x [T, D] (any float dtype) -> router logits [T, E] in float32."""
        if not (x.is_cuda and x.dtype == self.weight_parts.dtype and x.dtype in HALF_DTYPES):
            return F.linear(x.float(), self.weight, self.bias)
        first, *rest = torch.mm(x, self.weight_parts.t(), out_dtype=torch.float32).chunk(ROUTER_WEIGHT_PARTS, dim=-1)
        logits = sum(rest, first)
        return logits if self.bias is None else logits + self.bias


def float32_routers(module: nn.Module, model: MahiaX, dtype: torch.dtype) -> None:
    """Replace, in place, the router of every MoE in `module` (the deployed copy of `model`, activations in `dtype`)
    by a Float32Router of the fp32 `model`'s router at the same path."""
    for path, moe in model.named_modules():
        if isinstance(moe, MixtureOfExperts):
            deployed = module.get_submodule(path)
            deployed.router = Float32Router(moe.router, dtype).to(deployed.router.weight.device)


class PaddedLinear(nn.Module):
    """An nn.Linear with its output features padded by zero rows to a multiple of LINEAR_ALIGNMENT; returns the
    real features, a view [..., :out_features] of the padded product (the same values).

    Why: cuBLAS streams a matrix 16 bytes at a time only when its rows are a multiple of 16 bytes; other widths get
    slower kernels. Measured on the H200 (`benchmarks/forward_kernels.py --deployed --ops`, 2026-12-01): the
    meta-attention gate (768 -> 3) ran as `cutlass_75_..._align1`, 0.095 ms of 1.486 at 1 x 139 tokens and 0.834 ms
    of 68.8 at 32 x 2059; the SSD projection (768 -> 1804) as `cutlass_80_..._align2`, 0.082 ms at 1 x 139 and
    0.443 ms of 5.86 at 8 x 523, where the wider but aligned in_proj (768 -> 2304) takes 0.040 and 0.201 ms.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        padding = -linear.out_features % LINEAR_ALIGNMENT
        self.register_buffer("weight", F.pad(linear.weight.detach(), (0, 0, 0, padding)))
        self.register_buffer("bias", None if linear.bias is None else F.pad(linear.bias.detach(), (0, padding)))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features] (a view of the padded output)."""
        return F.linear(x, self.weight, self.bias)[..., :self.out_features]


def pad_linears(module: nn.Module) -> None:
    """Replace, in place, every nn.Linear of `module` whose output features are not a multiple of LINEAR_ALIGNMENT
    by its PaddedLinear (FP8 GEMM layers pad their own weights)."""
    for path, linear in list(module.named_modules()):
        if type(linear) is nn.Linear and linear.out_features % LINEAR_ALIGNMENT:
            module.set_submodule(path, PaddedLinear(linear))


class PrecomputedFilter(nn.Module):
    """An ImplicitFilter whose taps are computed once per sequence length, in float32 from the fp32 model's filter,
    rounded to the activation dtype and kept as a buffer; other lengths are computed the same way on each call.

    Why: the taps depend on the weights and the length alone, and backend "cuda" runs a few fixed lengths (its
    buckets), yet the model recomputes them every forward: a three-layer MLP over L (causal) or 2L - 1 (two-sided)
    positions, the decay window and a transpose, twice per block. Measured on the H200 (`benchmarks/
    forward_kernels.py --deployed --ops`, 2026-12-01): the MLP's 48 small GEMMs and the tap kernels took about 0.19
    ms of the 1.31 ms a compiled forward spends in kernels at 1 x 139 tokens, about 1.6 ms of 67.5 at 32 x 2059.
    `DeployedModel` adds its buckets' lengths (`add_length`) before anything runs or compiles.
    """

    def __init__(self, source: ImplicitFilter, dtype: torch.dtype) -> None:
        super().__init__()
        self.source = copy.deepcopy(source).float()
        self.dtype = dtype
        self.lengths: set[int] = set()

    def add_length(self, length: int) -> None:
        """Compute and keep the taps for sequences of `length` (nothing if they are kept already)."""
        if length not in self.lengths:
            with torch.no_grad():
                self.register_buffer(f"taps_{length}", self.float32_taps(length).to(self.dtype), persistent=False)
            self.lengths.add(length)

    def float32_taps(self, length: int) -> Tensor:
        """The source filter's taps for `length` ([D, L] causal, [D, 2L - 1] two-sided), computed in float32."""
        return self.source(length, like=self.source.log_rate)  # log_rate: float32, on the module's device

    def forward(self, length: int, like: Tensor) -> Tensor:
        """Taps for a sequence of `length`, in like's dtype (as ImplicitFilter.forward)."""
        if length in self.lengths:
            return getattr(self, f"taps_{length}").to(like.dtype)
        return self.float32_taps(length).to(like.dtype)


def precompute_filters(module: nn.Module, model: MahiaX, dtype: torch.dtype) -> None:
    """Replace, in place, every ImplicitFilter of `module` (the deployed copy of `model`, activations in `dtype`) by
    a PrecomputedFilter of the fp32 `model`'s filter at the same path (no lengths yet)."""
    for path, source in model.named_modules():
        if isinstance(source, ImplicitFilter):
            device = module.get_submodule(path).log_rate.device
            module.set_submodule(path, PrecomputedFilter(source, dtype).to(device))


def add_filter_lengths(module: nn.Module, lengths: Iterable[int]) -> None:
    """Precompute, for each of `lengths`, the taps of every PrecomputedFilter in `module`."""
    for filt in module.modules():
        if isinstance(filt, PrecomputedFilter):
            for length in lengths:
                filt.add_length(length)


class InlineGateCombine(nn.Module):
    """A MetaAttention whose gate combines the three branch outputs in plain PyTorch arithmetic (float32 softmax and
    weighted sum, rounded once) instead of stacking them into [B, L, D, 3] for `mahia::gate_combine`: compiled,
    Inductor fuses the sum with the branches' last elementwise steps and their transposes back to [B, L, D].

    Why: in the compiled deployment the stack was its own fused kernel that read the Hyena and Fourier outputs
    across their [B, D, L] layout and wrote the stack interleaved, 5.7 ms per forward at 32 x 2059 on the H200, and
    gate_combine read it again, 1.5 ms (`benchmarks/forward_kernels.py --deployed`, 2026-12-01). Uncompiled, the
    stack and the Triton kernel are the faster pair, so only DeployedModel(compile=True) makes this swap.
    """

    def __init__(self, attention: MetaAttention) -> None:
        super().__init__()
        self.in_proj, self.gate, self.out_proj = attention.in_proj, attention.gate, attention.out_proj
        self.hyena, self.ssd, self.fourier = attention.hyena, attention.ssd, attention.fourier

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, D] (normalised), mask [B, L] -> [B, L, D], as MetaAttention.forward."""
        u_hyena, u_ssd, u_fourier = self.in_proj(x).chunk(3, dim=-1)
        weights = torch.softmax(self.gate(x).float(), dim=-1)
        branches = (self.hyena(u_hyena), self.ssd(u_ssd), self.fourier(u_fourier, mask))
        combined = sum(weights[..., j, None] * branch.float() for j, branch in enumerate(branches))
        return self.out_proj(combined.to(x.dtype))


def inline_gate_combines(module: nn.Module) -> None:
    """Replace, in place, every MetaAttention of `module` by its InlineGateCombine (same submodules, shared)."""
    for path, attention in list(module.named_modules()):
        if type(attention) is MetaAttention:
            module.set_submodule(path, InlineGateCombine(attention))


def deployable_module(model: MahiaX, precision: str, device: str | torch.device,
                      scales: Mapping[str, float] | None = None) -> tuple[nn.Module, list[str]]:
    """The eager fp32 `model` as it runs deployed at `precision` on `device`: (module, paths of FP8 GEMM layers).
    Its Hyena short convs are ShiftedShortConv, of the cast weights; its MoE routers are Float32Router; its long
    filters are PrecomputedFilter (for no length yet); its Linear layers of unaligned widths are PaddedLinear."""
    if precision not in ACTIVATION_DTYPES:
        raise ValueError(f"backend 'cuda' runs {', '.join(ACTIVATION_DTYPES)} artifacts, not {precision!r}; "
                         "deploy integer precisions with backend='onnx'")
    if precision == "fp8":
        if scales is None:
            raise ValueError("fp8 needs activation scales (the artifact's calibration.json)")
        module, fp8_layers = to_fp8(model, scales, device)
    else:
        module, fp8_layers = copy.deepcopy(model).to(device=device, dtype=ACTIVATION_DTYPES[precision]).eval(), []
    shift_short_convs(module)
    float32_routers(module, model, ACTIVATION_DTYPES[precision])
    precompute_filters(module, model, ACTIVATION_DTYPES[precision])
    pad_linears(module)
    return module, fp8_layers


def raise_recompile_limit(limit: int) -> None:
    """Let torch.compile keep at least `limit` compiled entries per function (recompile_limit, cache_size_limit
    before torch 2.7)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


@dataclass
class _Graph:
    """One captured bucket: its static inputs (written before each replay) and its static logits."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    logits: Tensor


@dataclass
class DeployedModel:
    """A deployable module plus its buckets: `forward(inputs)` pads to the bucket, runs (replaying the bucket's
    CUDA graph when graphs are on), and returns the logits of the real rows on the module's device (with graphs,
    a view of the graph's output that the next call overwrites)."""

    module: nn.Module
    buckets: Buckets
    device: torch.device
    cuda_graphs: bool = False
    compile: bool = False
    graphs: dict[tuple[int, int], _Graph] = field(default_factory=dict, repr=False)
    warmup: int = 2  # runs before a capture: Triton and Inductor compile, cuFFT plans are made, on a side stream

    def __post_init__(self) -> None:
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        # A bucket's sequence is its text length plus the model's tabular tokens: the taps of those lengths, once.
        tabular = self.module.config.num_tabular_tokens
        add_filter_lengths(self.module, [seq + tabular for seq in self.buckets.seq])
        # Static shapes: each bucket is one fixed shape, so each compiles once, specialised; dynamo's recompile limit
        # (8 by default, counted per code object) is raised to let every bucket compile rather than run uncompiled.
        if self.compile:
            raise_recompile_limit(len(self.buckets.batch) * len(self.buckets.seq) + 8)
            inline_gate_combines(self.module)
        self.call = torch.compile(self.module, dynamic=False) if self.compile else self.module
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None  # one pool for every bucket's graph

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, num_classes] (module dtype, on its device) of validated inputs [B, L] (any device)."""
        batch, seq = inputs["input_ids"].shape
        bucket = self.buckets.bucket(batch, seq)
        inputs = {name: inputs[name].to(self.device, INPUT_DTYPES[name], non_blocking=True) for name in INPUT_NAMES}
        with torch.inference_mode(), use_reference_ops(False):
            if not self.cuda_graphs:
                return self.call(**pad_inputs(inputs, *bucket))[:batch]
            graph = self.graphs.get(bucket) or self._capture(bucket, inputs)
            fill_padded(graph.inputs, inputs)
            graph.graph.replay()
            return graph.logits[:batch]

    def _capture(self, bucket: tuple[int, int], inputs: Mapping[str, Tensor]) -> _Graph:
        static = pad_inputs(inputs, *bucket)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.call(**static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.call(**static)
        self.graphs[bucket] = _Graph(graph, static, logits)
        return self.graphs[bucket]


class CudaRunner(Runner):
    """The Runner of a DeployedModel: logits as float32 numpy."""

    def __init__(self, deployed: DeployedModel, fp8_layers: list[str]) -> None:
        super().__init__("cuda")
        self.deployed = deployed
        self.fp8_layers = fp8_layers

    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        return self.deployed.forward(tensors).float().cpu().numpy()


def rebuild_model(directory: Path, manifest: Manifest, checkpoint: str | None = None) -> MahiaX:
    """The artifact's eager fp32 model from its recorded source (or `checkpoint`), checked against weights_sha256."""
    source = ModelSource.from_checkpoint(checkpoint) if checkpoint else manifest.model.source
    if source.path is not None and not Path(source.path).is_file():
        raise ValueError(f"the checkpoint {source.path} is not here ({directory.name} was exported from "
                         f"{manifest.model.source}): pass CudaOptions(checkpoint=PATH) with the same weights")
    model = load_model(source).model
    if weights_sha256(model) != manifest.model.weights_sha256:
        raise ArtifactIntegrityError(f"the weights of {source} do not hash to the weights_sha256 of "
                                     f"{directory / 'manifest.json'}: not the model this artifact was exported from")
    return model


def load_artifact(directory: Path, manifest: Manifest, options: CudaOptions | None = None) -> Runner:
    """The CUDA runner of a verified artifact directory (see the module docstring)."""
    if options is None:
        options = CudaOptions()
    if not isinstance(options, CudaOptions):
        raise TypeError(f"backend 'cuda' takes CudaOptions, got {type(options).__name__}")
    precision = manifest.precision.name
    if precision not in ACTIVATION_DTYPES:
        raise ValueError(f"backend 'cuda' runs {', '.join(ACTIVATION_DTYPES)} artifacts; {directory.name} is "
                         f"{precision}: deploy it with backend='onnx'")
    require_cuda(options.device, precision)
    scales = None
    if precision == "fp8":
        if CALIBRATION_FILE not in manifest.files:
            raise ArtifactIntegrityError(f"{directory.name} is fp8 but has no {CALIBRATION_FILE}: its activation "
                                         "scales are missing")
        scales = activation_scales(read_table_json(directory / CALIBRATION_FILE))
    model = rebuild_model(directory, manifest, options.checkpoint)
    module, fp8_layers = deployable_module(model, precision, options.device, scales)
    config = manifest.model.config
    buckets = Buckets.from_ranges(manifest.batch, manifest.seq, config.num_tabular_tokens, config.max_seq_len)
    deployed = DeployedModel(module, buckets, torch.device(options.device), options.cuda_graphs, options.compile)
    return CudaRunner(deployed, fp8_layers)
