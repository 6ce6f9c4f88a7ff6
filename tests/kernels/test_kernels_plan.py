"""Launch plans as data (mahia/kernels/triton/plan.py): their invariants, the launchers executing
them (under the Triton interpreter, on CPU tensors), and the reference-ops switch.

The plan invariants are what torch.compile and the TensorRT plugins need: every buffer written by
exactly one launch (no kernel mutates what another produced), no launch given one buffer twice, each
workspace buffer its own allocation (issue 14: the compiled model's moe_up_kernel read garbage
routing after the launcher passed views of one int32 workspace and aliased a dummy pointer).
"""

from __future__ import annotations

import inspect
import os
import threading

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import torch  # noqa: E402

from mahia.kernels import ops, reference, use_reference_ops  # noqa: E402
from mahia.kernels.triton import gate_combine, long_conv, moe_ffn, ssd_scan  # noqa: E402
from mahia.kernels.triton import launch as launch_module  # noqa: E402
from mahia.kernels.triton import plan as plan_module  # noqa: E402

INTERPRETED = launch_module.is_interpreted(gate_combine.gate_combine_kernel)
interpreted = pytest.mark.skipif(not INTERPRETED, reason="triton was imported without TRITON_INTERPRET=1 here; "
                                 "tests/kernels/test_kernels_triton.py runs the interpreter suite in a subprocess")

PLANS = [
    gate_combine.plan(1, 5, torch.float32),
    gate_combine.plan(3 * 37, 300, torch.bfloat16),
    long_conv.plan(1, 3, 1, True, torch.float32),
    long_conv.plan(3, 2, 300, False, torch.float16),
    long_conv.plan(2, 3, 528, False, torch.bfloat16),  # the shifted copies: two launches
    ssd_scan.plan(1, 37, 3, 24, 20, 100, torch.bfloat16, a_dtype=torch.float32),
    ssd_scan.plan(2, 17, 2, 16, 16, 16, torch.float32, strides={"b": (37 * 50, 50, 1), "c": (37 * 50, 50, 1)}),
    moe_ffn.plan(1, 32, 48, 4, 2, 0.0, torch.float32),
    moe_ffn.plan(37, 40, 24, 5, 2, 1.25, torch.bfloat16),
    moe_ffn.plan(1061, 16, 16, 4, 2, 0.0, torch.float32),  # three-kernel routing
    moe_ffn.plan(1061, 16, 16, 4, 2, 1.25, torch.float16),
    moe_ffn.plan(40, 48, 32, 8, 8, 0.0, torch.bfloat16, weight_dtype=torch.float8_e4m3fn),
    moe_ffn.plan(40, 48, 32, 8, 8, 0.0, torch.bfloat16, weight_dtype=torch.float8_e4m3fn, activations_fp8=True),
    moe_ffn.plan(1061, 16, 16, 4, 2, 0.0, torch.float16, weight_dtype=torch.float8_e4m3fn, activations_fp8=True),
]


def kernel_params(function: object) -> tuple[list[str], list[str]]:
    """(runtime parameter names, constexpr names) of a @triton.jit function, in order."""
    fn = getattr(function, "fn", function)
    runtime, constexprs = [], []
    for name, param in inspect.signature(fn).parameters.items():
        (constexprs if "constexpr" in str(param.annotation) else runtime).append(name)
    return runtime, constexprs


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.op}-{'-'.join(map(str, p.plan_inputs.values()))}")
def test_plan_is_single_assignment_and_matches_the_kernels(plan):
    names = [b.name for b in plan.buffers]
    assert len(names) == len(set(names)), f"duplicate buffers {names}"
    writers: dict[str, int] = {}
    for index, step in enumerate(plan.launches):
        runtime, constexprs = kernel_params(step.function())
        assert [a.name for a in step.args] == runtime, step.kernel
        assert sorted(name for name, _ in step.constexprs) == sorted(constexprs), step.kernel
        pointers = [a.buffer for a in step.args if a.is_pointer and a.buffer is not None]
        assert len(pointers) == len(set(pointers)), f"{step.kernel} receives a buffer twice: {pointers}"
        assert set(step.reads) | set(step.writes) == set(pointers), step.kernel
        for name in step.reads:
            assert name in plan.inputs or name in writers, f"{step.kernel} reads {name} before any launch writes it"
        for name in step.writes:
            assert name not in plan.inputs, f"{step.kernel} writes the op input {name}"
            assert name not in writers, f"{name} written by launch {writers[name]} and {index}"
            writers[name] = index
        assert all(g >= 1 for g in step.grid) and len(step.grid) == 3
        # The AOT entry takes the same launch in plugin order: inputs, int32 scalars, outputs.
        if step.entry is not None:
            entry = step.plugin_order()
            entry_runtime, entry_constexprs = kernel_params(entry.function())
            assert [a.name for a in entry.args] == entry_runtime, step.entry
            assert sorted(entry_constexprs) == sorted(constexprs), step.entry
            kinds = ["in" if a.is_pointer and a.buffer not in step.writes else "scalar" if not a.is_pointer else "out"
                     for a in entry.args]
            assert kinds == sorted(kinds, key=["in", "scalar", "out"].index), (step.entry, kinds)
    assert set(writers) == {b.name for b in plan.workspace} | set(plan.outputs), "every buffer has one writer"


def test_moe_routing_path_follows_token_count():
    one = moe_ffn.plan(moe_ffn.ONE_PROGRAM_ROUTING, 16, 16, 4, 2, 0.0, torch.float32)
    three = moe_ffn.plan(moe_ffn.ONE_PROGRAM_ROUTING + 1, 16, 16, 4, 2, 0.0, torch.float32)
    assert [s.kernel for s in one.launches][0] == "moe_route_kernel"
    assert [s.kernel for s in three.launches][:3] == ["moe_topk_kernel", "moe_plan_kernel", "moe_scatter_kernel"]
    assert dict(three.launches[0].constexprs)["BLOCK_T"] == moe_ffn.ROUTE_TILE
    assert three.launches[0].grid[0] == -(-(moe_ffn.ONE_PROGRAM_ROUTING + 1) // moe_ffn.ROUTE_TILE)


class Recorder:
    """Records every kernel launch (through launch.traceable, which every launcher uses) with its tensors."""

    def __init__(self, real):
        self.real = real
        self.calls: list[tuple[str, tuple, list]] = []

    def __call__(self, kernel):
        recorder = self

        class Launcher:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    recorder.calls.append((getattr(kernel, "fn", kernel).__name__, tuple(grid), list(args)))
                    return recorder.real(kernel)[grid](*args, **kwargs)
                return run
        return Launcher()


def storage_of(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def run_and_record(monkeypatch, call, inputs: list[torch.Tensor]) -> list[tuple[str, tuple, list]]:
    """Run a launcher with every launch recorded; check no launch gets two tensors sharing memory
    (unless both are op inputs, e.g. b and c as column slices of one projection) and every tensor that
    is not an op input owns its whole allocation (no views of a shared workspace)."""
    recorder = Recorder(launch_module.traceable)
    monkeypatch.setattr(launch_module, "traceable", recorder)
    for module in (gate_combine, long_conv, moe_ffn, ssd_scan):
        if hasattr(module, "traceable"):
            monkeypatch.setattr(module, "traceable", recorder)
    call()
    input_storages = {storage_of(t) for t in inputs}
    for name, _, args in recorder.calls:
        tensors = [a for a in args if isinstance(a, torch.Tensor) and storage_of(a) not in input_storages]
        storages = [storage_of(t) for t in tensors]
        assert len(storages) == len(set(storages)), f"{name} receives two non-input tensors sharing memory"
        for t in tensors:
            assert t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size(), (
                f"{name} receives a view of a larger workspace ({t.numel()} of "
                f"{t.untyped_storage().nbytes() // t.element_size()} elements at offset {t.storage_offset()})")
    return recorder.calls


@interpreted
@pytest.mark.parametrize("tokens, capacity", [(37, 0.0), (37, 1.25), (1061, 0.0)])
def test_moe_launcher_executes_its_plan_without_aliasing(monkeypatch, generator, tokens, capacity):
    d_model, hidden, experts = 16, 16, 4
    x = torch.randn(tokens, d_model, generator=generator)
    logits = torch.randn(tokens, experts, generator=generator)
    mask = torch.rand(tokens, generator=generator) > 0.25
    w1 = torch.randn(experts, 2 * hidden, d_model, generator=generator) * d_model ** -0.5
    w2 = torch.randn(experts, d_model, hidden, generator=generator) * hidden ** -0.5
    cfg = {"BLOCK_M": 128, "up": (16, 16, 4, 1), "down": (16, 16, 4, 1)} if tokens > 1000 else None
    out = {}
    calls = run_and_record(monkeypatch, lambda: out.setdefault("y", moe_ffn.moe_ffn(
        x, logits, mask, w1, w2, 2, capacity, config=cfg)), [x, logits, mask, w1, w2])
    expected = moe_ffn.plan(tokens, d_model, hidden, experts, 2, capacity, torch.float32, config=cfg)
    assert [(n, g) for n, g, _ in calls] == [(s.kernel, s.grid) for s in expected.launches]
    ref = reference.moe_ffn(x.double(), logits.double(), mask, w1.double(), w2.double(), 2, capacity)
    assert ((out["y"].double() - ref).norm() / ref.norm()).item() < 2e-5


@interpreted
def test_ssd_and_conv_and_gate_launchers_execute_their_plans(monkeypatch, generator):
    proj = torch.randn(2, 37, 16 + 2 * 16 + 5, generator=generator)
    x, b, c, _ = proj.split([16, 16, 16, 5], dim=-1)
    x = x.reshape(2, 37, 2, 8)
    dt = torch.nn.functional.softplus(torch.randn(2, 37, 2, generator=generator))
    a = -torch.rand(2, generator=generator) - 0.5
    calls = run_and_record(monkeypatch, lambda: ssd_scan.ssd_scan(x, dt, a, b, c, 16), [proj, dt, a])
    expected = ssd_scan.plan(2, 37, 2, 8, 16, 16, torch.float32, strides={"b": b.stride(), "c": c.stride()})
    assert [n for n, _, _ in calls] == [s.kernel for s in expected.launches]
    conv_x, filt = torch.randn(3, 2, 70, generator=generator), torch.randn(2, 139, generator=generator)
    calls = run_and_record(monkeypatch, lambda: long_conv.long_conv(conv_x, filt, False), [conv_x, filt])
    assert [(n, g) for n, g, _ in calls] == [(s.kernel, s.grid) for s in long_conv.plan(3, 2, 70, False,
                                                                                          torch.float32).launches]
    branches, gate = torch.randn(3, 37, 5, 3, generator=generator), torch.randn(3, 37, 3, generator=generator)
    calls = run_and_record(monkeypatch, lambda: gate_combine.gate_combine(branches, gate), [branches, gate])
    assert [(n, g) for n, g, _ in calls] == [(s.kernel, s.grid) for s in gate_combine.plan(111, 5,
                                                                                             torch.float32).launches]


def test_long_conv_rejects_a_filter_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"filt has shape \(2, 70\), expected \(2, 139\)"):
        long_conv.long_conv(torch.zeros(1, 2, 70), torch.zeros(2, 70), False)


def test_reference_switch_is_scoped_nested_and_per_thread():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cuda = torch.empty(2, 3, device="cuda", dtype=torch.bfloat16)  # a CUDA tensor without a GPU
    cpu = torch.empty(2, 3)
    assert ops._use_triton(cuda) and not ops._use_triton(cpu)
    seen_in_thread = []
    with use_reference_ops():
        assert ops.reference_ops_enabled() and not ops._use_triton(cuda)
        with use_reference_ops(False):
            assert ops._use_triton(cuda)
        assert not ops._use_triton(cuda)
        worker = threading.Thread(target=lambda: seen_in_thread.append(ops._use_triton(cuda)))
        worker.start()
        worker.join()
    assert seen_in_thread == [True], "the switch must not leak into other threads"
    assert ops._use_triton(cuda) and not ops.reference_ops_enabled()
    with pytest.raises(RuntimeError), use_reference_ops():
        raise RuntimeError("an error inside the block")
    assert not ops.reference_ops_enabled(), "the switch is reset when the block raises"


def test_long_conv_algorithm_follows_the_h200_measurements():
    # fft / Toeplitz time on the H200 in CUDA-graph replay (long_conv.py's table): the kernel only where faster.
    faster_at_batch_8 = {(True, 128): True, (True, 2064): True, (True, 4096): True, (True, 8192): False,
                         (False, 128): True, (False, 1024): True, (False, 2064): True, (False, 4096): True,
                         (False, 8192): False}
    for (causal, length), kernel_faster in faster_at_batch_8.items():
        for batch in (8, 32):
            assert (long_conv.choose_algorithm(length, causal, batch) == "toeplitz") == kernel_faster, \
                (causal, length, batch)
    faster_at_batch_1 = {(True, 133): True, (True, 528): True, (True, 2064): True, (True, 4096): False,
                         (False, 528): True, (False, 1024): True, (False, 2048): False, (False, 2064): False}
    for (causal, length), kernel_faster in faster_at_batch_1.items():
        assert (long_conv.choose_algorithm(length, causal, 1) == "toeplitz") == kernel_faster, (causal, length)
    for causal, length in ((True, 4096), (False, 2048)):  # batch 2 takes batch 1's limits, batch 3 the others
        assert long_conv.choose_algorithm(length, causal, 2) == "fft"
        assert long_conv.choose_algorithm(length, causal, 3) == "toeplitz"
    assert long_conv.choose_algorithm(37, False, 1) == "toeplitz", "short lengths keep the kernel"
    assert long_conv.choose_algorithm(2053, False, 32) == "toeplitz", "base at 2048 words: 2053 positions"


def test_long_conv_tiles_fill_columns_with_batch_rows_first():
    # H200 (long_conv_tiles.py): NT = 4 at batch 32, NT = 16 (or the number of blocks) at batch 1 and 8.
    assert long_conv.choose_config(32, 400)["NT"] == 4
    assert long_conv.choose_config(8, 400)["NT"] == 8
    assert long_conv.choose_config(1, 400)["NT"] == 8
    assert long_conv.choose_config(32, 400)["BLOCK_N"] == 128
    assert not any(long_conv.choose_config(b, 400)["SHIFTED_COPIES"] for b in (1, 8, 32))


def test_long_conv_takes_the_shifted_copies_from_512_positions():
    # H200 (long_conv_gather.py), fastest configs at 528 and 2064 positions
    assert long_conv.choose_config(32, 2064) == {"BLOCK_K": 64, "NT": 8, "BLOCK_N": 256, "num_warps": 8,
                                                 "num_stages": 4, "SHIFTED_COPIES": 1}
    assert long_conv.choose_config(8, 2064) == {"BLOCK_K": 64, "NT": 16, "BLOCK_N": 128, "num_warps": 4,
                                                "num_stages": 4, "SHIFTED_COPIES": 1}
    assert long_conv.choose_config(1, 2064)["NT"] == 32
    assert long_conv.choose_config(32, 528) == {"BLOCK_K": 64, "NT": 4, "BLOCK_N": 128, "num_warps": 4,
                                                "num_stages": 4, "SHIFTED_COPIES": 1}
    assert long_conv.choose_config(1, 528)["num_stages"] == 2
    assert long_conv.choose_config(1, 528)["NT"] == 16, "no more output blocks per program than there are blocks"
    assert long_conv.choose_config(64, 528)["BLOCK_N"] == 128, "at most 32 batch rows per program"
    copies_plan = long_conv.plan(8, 4, 2064, False, torch.bfloat16)
    assert [s.kernel for s in copies_plan.launches] == ["long_conv_copies_kernel", "long_conv_kernel"]
    assert [s.entry for s in copies_plan.launches] == [None, None], "TensorRT plugins run the one-launch form"
    assert copies_plan.buffer("copies").numel == 4 * 8 * long_conv.copies_size(2 * 2064 - 1, 64)[0]


def test_plans_are_built_once_per_distinct_call_and_never_for_symbolic_sizes() -> None:
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    cached_plan = plan_module.cached_plan
    first = cached_plan(gate_combine.plan, 37, 96, torch.float32)
    assert cached_plan(gate_combine.plan, 37, 96, torch.float32) is first
    assert cached_plan(gate_combine.plan, 37, 96, torch.float16) is not first
    assert cached_plan(gate_combine.plan, 38, 96, torch.float32).buffer("out").numel == 38 * 96
    strided = {"dt": (999, 3, 1)}
    assert cached_plan(ssd_scan.plan, 1, 5, 3, 4, 8, 16, torch.float32, None, strided) is \
        cached_plan(ssd_scan.plan, 1, 5, 3, 4, 8, 16, torch.float32, None, dict(strided))
    symbolic = ShapeEnv().create_unbacked_symint()
    assert plan_module._frozen((symbolic, 3)) is None  # traced sizes: built every time, never cached


def test_fp8_activation_plan_quantises_the_input_once_and_keeps_the_hidden_rows_in_fp8():
    plan = moe_ffn.plan(37, 48, 32, 8, 2, 0.0, torch.bfloat16, weight_dtype=torch.float8_e4m3fn,
                        activations_fp8=True)
    kernels = [step.kernel for step in plan.launches]
    assert kernels == ["moe_route_kernel", "moe_quantize_kernel", "moe_up_kernel", "moe_down_kernel",
                       "moe_combine_kernel"]
    up, down = plan.launches[2], plan.launches[3]
    assert "x_fp8" in up.reads and "x" not in up.reads
    assert plan.buffer("x_fp8").dtype == plan.buffer("act").dtype == torch.float8_e4m3fn
    assert dict(up.constexprs)["MMA"] == dict(down.constexprs)["MMA"] == "fp8e4nv"
    assert plan.inputs[-2:] == ("x_scale", "hidden_scale") and plan.buffer("hidden_scale").numel == 8
    assert up.entry is None and down.entry is None  # the TensorRT plugins take activations in their dtype
    weight_only = moe_ffn.plan(37, 48, 32, 8, 2, 0.0, torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    assert dict(weight_only.launches[1].constexprs)["A_FP8"] is False
    with pytest.raises(ValueError, match="FP8 activations need FP8"):
        moe_ffn.plan(37, 48, 32, 8, 2, 0.0, torch.bfloat16, activations_fp8=True)
