"""GPU launch check of the TensorRT plugins (issue 13, section 3): every plugin launched the way TensorRT's AOT
runtime launches it, on every op's whole chain, against float64 references.

For each plugin node, the AOT payload comes from the plugin code path (mahia.plugins_trt.aot.aot_payload, what
qdp.aot_impl evaluates symbolically: the plugin-ready PTX mahia.kernels.aot builds for this GPU, the entry name,
grid, block, shared bytes and int32 scalars of the launch formula at these sizes). It is loaded with
cuModuleLoadData and launched with cuLaunchKernel through cuda-bindings: input pointers, scalars, output pointers,
nothing else (no Triton launcher, no torch dispatch; torch only allocates and computes the references). Outputs
are pre-filled with poison (NaN, -2^31), so each node must write exactly the elements its launch reference writes.
Each chain runs node after node on the previous kernels' outputs; each node is compared with its launch reference
on the same inputs (float64, integers exactly), each chain's output with the op's float64 reference
(mahia.kernels.reference), rel. L2 error within verify.TOLERANCE of the dtype.

Shapes: the export profile's min / opt / max (batch 1:8:16, text 1:128:512) and the odd 3 x 37, each plus the
model's tabular tokens, at the `small` and `base` op sizes; LongConv with every autotune tactic, causal and
two-sided; the MoE with the tile config chosen at the opt token count (as exported), and FP8 experts.

    python benchmarks/trt_plugins_gpu.py [--configs small,base] [--dtypes bfloat16,float16,float32]
        [--budget SECONDS] [--workers N] [--dry-run]

--dry-run (no GPU needed): builds every payload (set MAHIA_TRT_ARCH, e.g. 90) and runs no kernel.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from dataclasses import dataclass

import torch

from mahia.model.config import CONFIGS
from mahia.plugins_trt import CHAINS, long_conv, moe_ffn
from mahia.plugins_trt.aot import aot_payload, binary_request, build_binaries, compile_binary, target_arch
from mahia.plugins_trt.specs import DTYPES, POISON_FLOAT, POISON_INT, launch_formula, walk
from mahia.plugins_trt.verify import TOLERANCE, example_inputs, op_reference, written_rel_error

POINTS = {"min": (1, 1), "opt": (8, 128), "max": (16, 512), "odd": (3, 37)}  # batch, text tokens
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Case:
    """One op call: its chain at concrete sizes."""

    config: str
    point: str
    dtype: str
    label: str  # gate, conv-causal-t1, ..., ssd, moe, moe-fp8
    op: str
    shapes: dict
    dtypes: dict
    attributes: dict
    tactics: dict


def op_inputs(op: str, cfg: object, batch: int, length: int, dtype: str) -> tuple[dict, dict]:
    """(shapes, dtypes) of an op's inputs at a model config's sizes."""
    tokens, d = batch * length, cfg.d_model
    if op == "gate_combine":
        shapes = {"branches": (batch, length, d, 3), "logits": (batch, length, 3)}
    elif op == "long_conv":
        shapes = {"x": (batch, d, length), "filt": (d, length)}
    elif op == "ssd_scan":
        h, p, n = cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state
        shapes = {"x": (batch, length, h, p), "dt": (batch, length, h), "a": (h,), "b": (batch, length, n),
                  "c": (batch, length, n)}
    else:
        e, hidden = cfg.num_experts, cfg.expert_hidden
        shapes = {"x": (tokens, d), "router_logits": (tokens, e), "mask": (tokens,), "w1": (e, 2 * hidden, d),
                  "w2": (e, d, hidden)}
    dtypes = {name: dtype for name in shapes} | ({"mask": "bool"} if "mask" in shapes else {})
    if op == "moe_ffn_fp8":
        shapes |= {"w1_scale": shapes["w1"][:2], "w2_scale": shapes["w2"][:2]}
        dtypes |= {"w1": "float8_e4m3fn", "w2": "float8_e4m3fn", "w1_scale": "float32", "w2_scale": "float32"}
    return shapes, dtypes


def calls(cfg: object, length: int, dtype: str) -> list[tuple[str, str, dict, dict, dict]]:
    """(label, op, attributes, tactics, input shape changes) of every op call of one group."""
    opt_tokens = POINTS["opt"][0] * (POINTS["opt"][1] + cfg.num_tabular_tokens)
    moe = moe_ffn.chain_attributes(cfg.num_experts, cfg.top_k, opt_tokens)
    out = [("gate", "gate_combine", {}, {}, {})]
    for tactic in range(1, len(long_conv.CONFIGS) + 1):
        out.append((f"conv-causal-t{tactic}", "long_conv", {"causal": 1}, {"LongConv": tactic}, {}))
        out.append((f"conv-2sided-t{tactic}", "long_conv", {"causal": 0}, {"LongConv": tactic},
                    {"filt": (cfg.d_model, 2 * length - 1)}))
    out += [("ssd", "ssd_scan", {"chunk": cfg.chunk_size}, {}, {}), ("moe", "moe_ffn", moe, {}, {})]
    if dtype != "float32":  # the FP8 path's activations are bf16 / fp16
        out.append(("moe-fp8", "moe_ffn_fp8", moe, {}, {}))
    return out


def cases(configs: list[str], dtypes: list[str]) -> list[Case]:
    """Every op call to check, grouped by (config, dtype, point)."""
    out = []
    for name in configs:
        cfg = CONFIGS[name]
        for dtype in dtypes:
            for point, (batch, text) in POINTS.items():
                length = text + cfg.num_tabular_tokens
                for label, op, attributes, tactics, shape_change in calls(cfg, length, dtype):
                    shapes, types = op_inputs(op, cfg, batch, length, dtype)
                    out.append(Case(name, point, dtype, label, op, shapes | shape_change, types, attributes, tactics))
    return out


class Driver:
    """cuModuleLoadData / cuModuleGetFunction / cuLaunchKernel through cuda-bindings, on torch's current stream."""

    def __init__(self) -> None:
        from cuda.bindings import driver

        self.cu = driver
        # The primary context must be current on this thread before cuModuleLoadData (a first run without it got
        # CUDA_ERROR_INVALID_CONTEXT): torch creates it, then it is retained and made current explicitly.
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        device = self.check(driver.cuDeviceGet(torch.cuda.current_device()))
        self.check(driver.cuCtxSetCurrent(self.check(driver.cuDevicePrimaryCtxRetain(device))))
        self.functions: dict[tuple[str, str], object] = {}
        version = self.check(driver.cuDriverGetVersion())
        self.version = f"{version // 1000}.{version % 1000 // 10}"

    def check(self, result: tuple) -> object:
        err, *rest = result
        if int(err) != 0:
            name = self.cu.cuGetErrorName(err)[1]
            raise RuntimeError(f"CUDA driver error {int(err)} {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    def function(self, payload: object) -> object:
        key = (payload.kernel_name, payload.ptx)
        if key not in self.functions:
            module = self.check(self.cu.cuModuleLoadData(payload.ptx.encode() + b"\0"))
            function = self.check(self.cu.cuModuleGetFunction(module, payload.kernel_name.encode()))
            if payload.shared_bytes > 48 * 1024:  # dynamic shared memory past 48 KiB is opt-in per function
                attribute = self.cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                self.check(self.cu.cuFuncSetAttribute(function, attribute, payload.shared_bytes))
            self.functions[key] = function
        return self.functions[key]

    def launch(self, payload: object, tensors: dict[str, torch.Tensor]) -> None:
        """Input pointers, int32 scalars, output pointers: the plugin's argument order."""
        values = ([tensors[n].data_ptr() for n in payload.inputs] + [v for _, v in payload.scalars]
                  + [tensors[n].data_ptr() for n in payload.outputs])
        types = ([ctypes.c_void_p] * len(payload.inputs) + [ctypes.c_int32] * len(payload.scalars)
                 + [ctypes.c_void_p] * len(payload.outputs))
        self.check(self.cu.cuLaunchKernel(self.function(payload), *payload.grid, *payload.block, payload.shared_bytes,
                                          torch.cuda.current_stream().cuda_stream, (tuple(values), tuple(types)), 0))


def float64(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}


def run_case(case: Case, driver: Driver, arch: int, generator: torch.Generator, stats: dict,
             device: str = "cuda") -> tuple[float, list]:
    """Run one chain; returns (the chain's rel. error against the op reference, node failures)."""
    chain = CHAINS[case.op]
    tensors = example_inputs(case.op, case.shapes, case.dtypes, generator, device)
    failures = []
    for node in walk(chain, case.shapes, case.dtypes, case.attributes, case.tactics):
        spec = node.spec
        payload = aot_payload(spec, node.input_shapes, node.input_dtypes, {a: case.attributes[a] for a in spec.attrs},
                              node.sizes.tactic, arch)
        for out, shape, dtype in zip(spec.outputs, node.output_shapes, node.output_dtypes, strict=True):
            tensors[out.name] = torch.full(shape, POISON_INT if dtype == "int32" else POISON_FLOAT,
                                           dtype=DTYPES[dtype].torch, device=device)
        driver.launch(payload, tensors)
        if device == "cuda":
            torch.cuda.synchronize()
        reference = spec.reference(node.sizes, float64({t.name: tensors[t.name] for t in spec.inputs}))
        worst = 0.0
        for out, dtype in zip(spec.outputs, node.output_dtypes, strict=True):
            got, want = tensors[out.name], reference[out.name]
            if dtype == "int32":
                ok = torch.equal(got, want.to(torch.int32))
                error = 0.0 if ok else float("inf")
            else:
                same_written = torch.equal(torch.isnan(got.double()), torch.isnan(want))
                error = written_rel_error(got, want) if same_written else float("inf")
                ok = error < TOLERANCE[case.dtype]
            worst = max(worst, error)
            if not ok:
                failures.append(f"{spec.name}.{out.name} rel err {error:.2e}")
        record = stats.setdefault(spec.name, {"launches": 0, "worst": 0.0, "failed": 0, "shared": set()})
        record["launches"] += 1
        record["worst"] = max(record["worst"], worst)
        record["failed"] += worst >= TOLERANCE[case.dtype]
        record["shared"].add(payload.shared_bytes)
    reference = op_reference(case.op, float64({k: tensors[k] for k in chain.inputs}), case.attributes)
    return written_rel_error(tensors[chain.output], reference), failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,base")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later groups are skipped, and said so")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes compiling the PTX")
    parser.add_argument("--dry-run", action="store_true", help="build every payload, launch nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    todo = cases(args.configs.split(","), args.dtypes.split(","))
    arch = target_arch()
    import triton

    from mahia.kernels.aot import PTX_VERSION

    say(f"torch {torch.__version__}, triton {triton.__version__}, sm_{arch}, PTX .version {PTX_VERSION / 10:.1f}; "
        f"{len(todo)} chains ({args.configs}; {args.dtypes}; points {POINTS} + tabular tokens)")
    requests = set()
    for case in todo:
        for node in walk(CHAINS[case.op], case.shapes, case.dtypes, case.attributes, case.tactics):
            requests.add(binary_request(node.sizes, launch_formula(node.sizes), node.input_dtypes, arch))
    try:
        build_binaries(requests, args.workers)
    except Exception as exc:  # noqa: BLE001 - each chain then compiles its own and reports what fails
        say(f"parallel compile failed ({type(exc).__name__}: {exc}); compiling per chain")
    shared = {r.entry: 0 for r in requests}
    for request in requests:
        shared[request.entry] = max(shared[request.entry], compile_binary(request).shared_bytes)
    say(f"compiled {len(requests)} plugin binaries with mahia.kernels.aot in {time.perf_counter() - start:.1f} s "
        f"({args.workers} processes); most shared memory per entry kernel: "
        + ", ".join(f"{entry.removesuffix('_entry')} {size}" for entry, size in sorted(shared.items())))
    if args.dry_run:
        payloads = sum(len(CHAINS[c.op].plugins) for c in todo)
        for case in todo:
            for node in walk(CHAINS[case.op], case.shapes, case.dtypes, case.attributes, case.tactics):
                aot_payload(node.spec, node.input_shapes, node.input_dtypes,
                            {a: case.attributes[a] for a in node.spec.attrs}, node.sizes.tactic, arch)
        say(f"dry run: {payloads} payloads built, nothing launched ({time.perf_counter() - start:.1f} s)")
        return 0

    driver = Driver()
    say(f"device {torch.cuda.get_device_name()}, driver CUDA {driver.version}, cuda-bindings launches")
    generator = torch.Generator().manual_seed(0)
    stats: dict[str, dict] = {}
    groups: dict[tuple, list[Case]] = {}
    for case in todo:
        groups.setdefault((case.config, case.dtype, case.point), []).append(case)
    failed, skipped = 0, 0
    for (config, dtype, point), group in groups.items():
        if time.perf_counter() - start > args.budget:
            skipped += len(group)
            continue
        results, problems = {}, []
        for case in group:
            try:
                error, failures = run_case(case, driver, arch, generator, stats)
            except Exception as exc:  # noqa: BLE001 - report the chain and go on
                error, failures = float("inf"), [f"{type(exc).__name__}: {exc}"]
            results[case.label] = error
            if failures or not error < TOLERANCE[dtype]:
                problems.append(f"    FAIL {case.label}: chain rel err {error:.2e}; {'; '.join(failures)}")
        failed += len(problems)
        batch, text = POINTS[point]
        conv = [v for k, v in results.items() if k.startswith("conv")]
        parts = [f"gate {results['gate']:.1e}", f"conv x{len(conv)} <= {max(conv):.1e}", f"ssd {results['ssd']:.1e}",
                 f"moe {results['moe']:.1e}"] + ([f"moe-fp8 {results['moe-fp8']:.1e}"] if "moe-fp8" in results else [])
        verdict = "PASS" if not problems else "FAIL"
        length = text + CONFIGS[config].num_tabular_tokens
        say(f"{config:5s} {SHORT[dtype]} {point:3s} B={batch:2d} L={length:3d} | {' | '.join(parts)} | {verdict}")
        for line in problems:
            say(line)
    say("per plugin (launches, worst rel err of a node against its launch reference, shared bytes):")
    for name, record in stats.items():
        say(f"  {name:14s} {record['launches']:4d} launches, worst {record['worst']:.1e}, "
            f"shared {sorted(record['shared'])} B, {'PASS' if not record['failed'] else 'FAIL'}")
    total = len(todo) - skipped
    say(f"{total - failed}/{total} chains passed" + (f", {skipped} skipped at the {args.budget:.0f} s budget"
                                                     if skipped else "") + f" ({time.perf_counter() - start:.0f} s)")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
