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

Every precision runs the meta-attention's elementwise ends (the Hyena short conv, the gate's weighted sum with the
branches' last steps and, except in fp8, the SSD's gated norm) as Triton kernels that change layout through shared
memory (FusedMetaAttention), the MoE routers in float32 (Float32Router: the top-k choice is discrete), the long
filters' taps precomputed per bucket length (PrecomputedFilter), and Linear layers whose output width is not a
multiple of 8 with zero-padded weights (PaddedLinear: cuBLAS's aligned kernels).
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

from mahia import kernels
from mahia.artifact import ArtifactIntegrityError, Manifest
from mahia.calibration.table import read_table_json
from mahia.default import load_model
from mahia.model import INPUT_NAMES, MahiaX, ModelSource, weights_sha256
from mahia.model.filters import ImplicitFilter
from mahia.model.meta_attention import MetaAttention
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


class FusedMetaAttention(nn.Module):
    """A MetaAttention whose elementwise ends run as kernels that read each layout along its contiguous axis:
    `mahia::hyena_short_conv` (the Hyena short conv and k * v, from the projection's [B, L, 3D] to q [B, L, D] and
    kv [B, D, L]), `mahia::meta_attention_combine` (the Hyena product with its skip, the Fourier GELU and the
    gate's softmax-weighted sum, from the long convs' [B, D, L] outputs to [B, L, D]), and, if `ssd_gated_norm`,
    `mahia::ssd_gated_norm` (the SSD branch's skip, SiLU gate and RMSNorm in one pass over whole rows).

    Why, measured on the H200 (base config, random weights, CUDA-graph replay), the first two: `PYTHONPATH=$PWD
    python3 benchmarks/compile_options.py` (bf16, 2026-12-01): compiled, 4.79 -> 4.41 ms at 8 x 523 and 63.4 ->
    58.0 ms at 32 x 2059 against the earlier swaps (the short conv as shifted multiply-adds and the gate's sum in
    PyTorch, for Inductor to fuse: it tiled them in one dimension, see mahia.kernels.triton.meta_attention);
    uncompiled, 9.10 -> 6.53 and 122.9 -> 83.7 ms against the model's own stack and `mahia::gate_combine`. Without
    them, the short conv runs as PyTorch's generic depthwise-conv kernel, which torch.compile leaves alone: 12.4 ms
    of a 164.7 ms eager forward at 32 x 2048 (`benchmarks/forward_kernels.py`), about ten times its memory traffic.

    The gated norm replaces, at 32 x 2059, a two-pass Inductor reduction that wrote its rows in float32 and read them
    back (1.84 ms of the bf16 forward's kernels); at 8 x 523 Inductor's kernel is one pass already (0.088 ms), and in
    fp8 one persistent kernel with the FP8 out_proj's input quantisation (0.111 ms), which this kernel splits in two.
    `mahia-bench --config base` in two calls, before and with it (compiled, graphs): bf16 56.45 -> 55.83 ms at 32 x
    2048, 4.44 -> 4.50 ms at 8 x 512; fp8 50.77 -> 51.02 and 4.49 -> 4.58 ms. Separate calls differ by 1-2%, so
    these say little alone; with the kernel profiles, backend "cuda" runs it in bf16, fp16 and fp32, not in fp8.

    The short conv's weights are kept in float32, of the deployed (already cast) conv, as its bf16 or fp16 output
    is summed in float32 and rounded once, as the aten conv accumulates.
    """

    def __init__(self, attention: MetaAttention, ssd_gated_norm: bool = True) -> None:
        super().__init__()
        self.in_proj, self.gate, self.out_proj = attention.in_proj, attention.gate, attention.out_proj
        self.hyena, self.ssd, self.fourier = attention.hyena, attention.ssd, attention.fourier
        self.ssd_gated_norm = ssd_gated_norm
        conv = attention.hyena.short_conv
        channels, _, width = conv.weight.shape
        if (conv.groups, conv.in_channels, conv.stride, conv.dilation, conv.padding, conv.padding_mode) != \
                (channels, channels, (1,), (1,), (width - 1,), "zeros"):
            raise ValueError(f"FusedMetaAttention takes a depthwise Conv1d of stride 1 padded by width - 1, got {conv}")
        bias = torch.zeros(channels, device=conv.weight.device) if conv.bias is None else conv.bias.detach().float()
        self.register_buffer("short_conv_weight", conv.weight.detach().float()[:, 0].t().contiguous())  # [w, 3D]
        self.register_buffer("short_conv_bias", bias.clone())  # [3D]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, D] (normalised), mask [B, L] -> [B, L, D], as MetaAttention.forward."""
        length = x.shape[1]
        u_hyena, u_ssd, u_fourier = self.in_proj(x).chunk(3, dim=-1)
        q, kv = kernels.hyena_short_conv(self.hyena.proj(u_hyena), self.short_conv_weight, self.short_conv_bias)
        hyena_conv = kernels.long_conv(kv, self.hyena.filter(length, x), True)
        fourier_input = (self.fourier.proj(u_fourier) * mask[..., None]).transpose(1, 2)
        fourier_conv = kernels.long_conv(fourier_input, self.fourier.filter(length, x), False)
        combined = kernels.meta_attention_combine(q, hyena_conv, kv, self.hyena.skip, self._ssd(u_ssd), fourier_conv,
                                                  self.gate(x))
        return self.out_proj(combined)

    def _ssd(self, u: Tensor) -> Tensor:
        if not self.ssd_gated_norm:
            return self.ssd(u)
        y, ssd_input, ssd_gate = self.ssd.scan(u)  # float32 for fp16 activations (SSDBranch.scan says why)
        norm = self.ssd.norm
        gated = kernels.ssd_gated_norm(y, ssd_input, self.ssd.skip, ssd_gate, norm.weight, norm.eps)
        return self.ssd.out_proj(gated.to(u.dtype))


def fuse_meta_attentions(module: nn.Module, ssd_gated_norm: bool = True) -> None:
    """Replace, in place, every MetaAttention of `module` by its FusedMetaAttention (same submodules, shared)."""
    for path, attention in list(module.named_modules()):
        if type(attention) is MetaAttention:
            module.set_submodule(path, FusedMetaAttention(attention, ssd_gated_norm))


def deployable_module(model: MahiaX, precision: str, device: str | torch.device,
                      scales: Mapping[str, float] | None = None) -> tuple[nn.Module, list[str]]:
    """The eager fp32 `model` as it runs deployed at `precision` on `device`: (module, paths of FP8 GEMM layers).
    Its meta-attentions are FusedMetaAttention, of the cast weights (the SSD's gated norm left to PyTorch in fp8);
    its MoE routers are Float32Router; its long filters are PrecomputedFilter (for no length yet); its Linear layers
    of unaligned widths are PaddedLinear."""
    if precision not in ACTIVATION_DTYPES:
        raise ValueError(f"backend 'cuda' runs {', '.join(ACTIVATION_DTYPES)} artifacts, not {precision!r}; "
                         "deploy integer precisions with backend='onnx'")
    if precision == "fp8":
        if scales is None:
            raise ValueError("fp8 needs activation scales (the artifact's calibration.json)")
        module, fp8_layers = to_fp8(model, scales, device)
    else:
        module, fp8_layers = copy.deepcopy(model).to(device=device, dtype=ACTIVATION_DTYPES[precision]).eval(), []
    fuse_meta_attentions(module, ssd_gated_norm=precision != "fp8")
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
        self.call = torch.compile(self.module, dynamic=False) if self.compile else self.module
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None  # one pool for every bucket's graph

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, num_classes] (module dtype, on its device) of validated inputs [B, L] (any device)."""
        batch, seq = inputs["input_ids"].shape
        bucket = self.buckets.bucket(batch, seq)
        inputs = {name: inputs[name].to(self.device, INPUT_DTYPES[name], non_blocking=True) for name in INPUT_NAMES}
        with torch.inference_mode(), kernels.use_reference_ops(False):
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
