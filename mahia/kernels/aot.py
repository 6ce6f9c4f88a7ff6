"""Ahead-of-time build of the Triton kernels: plugin-ready PTX and cubin for sm_80, sm_89 and sm_90, no GPU needed.

What is built comes from the launch plans (`mahia.kernels.triton.<op>.plan`, see
mahia/kernels/triton/plan.py): each op's plan at representative sizes (`representative_plans`), each
launch in plugin order (`Launch.plugin_order()`: the kernel's AOT entry wrapper, parameters = input
pointers, int32 scalars, output pointers), compiled once per distinct binary with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`. The manifest records:
- `plans`: each plan's op and `plan()` arguments (call `replay(record)` to get the KernelPlan back:
  grids and scalars at other sizes come from `plan()`, never from a formula kept here) and, per
  launch and arch, the binary it runs (null where a partial build, --only or --one-per-kernel, left
  it out), its grid, block and scalars at those sizes;
- `kernels`: per binary its entry name, arch, real parameters (name, Triton type), constexprs,
  num_warps, num_stages, shared memory bytes, the PTX ISA version, the hidden parameters removed from
  the PTX entry, and the files' sha256.

Plugin-ready PTX. Measured on the H200 (driver CUDA 13.0, issue 13): Triton appends hidden scratch
pointer parameters to every kernel entry (Triton 3.6 and 3.9: global and profile scratch, 7 declared
for 5 real), and a cuLaunchKernel passing only the real arguments, as a TensorRT AOT plugin does,
segfaulted; with the unused trailing parameters removed it was correct. So the PTX written here has
them removed (after checking that the body never reads them and that Triton reports no scratch
memory; otherwise the build fails), and the cubin is assembled from that PTX with Triton's ptxas.
Its `.version` is pinned to PTX_VERSION through Triton's own `ptx_version` option (Triton 3.9 writes
9.4 for sm_90 by default, which that driver refused with CUDA_ERROR_UNSUPPORTED_PTX_VERSION).

Run: `python -m mahia.kernels.aot --out artifacts/kernels` (TRITON_INTERPRET must be unset).
No divisibility specialisation is assumed (the plugin may pass any pointer or size), so these
binaries are a little more general than the ones Triton's JIT builds for aligned tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

ARCHS = (80, 89, 90)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# PTX ISA 8.7 (CUDA 12.8): what Triton 3.6 writes for sm_90 and what driver CUDA 13.0 loaded on the H200.
PTX_VERSION = 87
FP8_MIN_ARCH = 89  # e4m3 conversions
MOE_SIZES = dict(d_model=768, hidden=2048, num_experts=8)  # the base config's MoE


def representative_plans(dtype: torch.dtype) -> Iterator[object]:
    """The plans the deployment variants come from: every shape bucket of every op (tile configs,
    one-program or three-kernel routing, top-k 1 and 2, bf16/fp16 or FP8 weights) at base-config sizes."""
    from mahia.kernels.triton import gate_combine, long_conv, moe_ffn, ssd_scan

    yield gate_combine.plan(8 * 512, 768, dtype)
    for length in (64, 512):  # the two tile buckets of long_conv.gather_config (L < 256, L >= 256), batch 8
        for causal in (True, False):
            yield long_conv.plan(8, 768, length, causal, dtype, long_conv.gather_config(8, length))
    yield ssd_scan.plan(8, 512, 12, 64, 128, 256, dtype)
    # tokens: 16 (rows <= 256, BLOCK_T 16), 200 (BLOCK_T 256), 1000 (BLOCK_T 1024), 4136 (three-kernel routing)
    for tokens in (16, 200, 1000, 4136):
        for top_k in (1, 2):
            yield moe_ffn.plan(tokens, top_k=top_k, capacity_factor=0.0, dtype=dtype, **MOE_SIZES)
        yield moe_ffn.plan(tokens, top_k=2, capacity_factor=0.0, dtype=dtype, weight_dtype=torch.float8_e4m3fn,
                           **MOE_SIZES)


def _jsonable(value: object) -> object:
    """Plan arguments as JSON (dtypes by name)."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def replay(record: dict) -> object:
    """The KernelPlan of a manifest `plans` record: its op's plan() called with the recorded arguments."""
    import importlib

    module = importlib.import_module(f"mahia.kernels.triton.{record['op']}")
    args = {k: getattr(torch, v) if k.endswith("dtype") else v for k, v in record["inputs"].items()}
    if "strides" in args:
        args["strides"] = {k: tuple(v) for k, v in args["strides"].items()}
    return module.plan(**args)


def signature(plan: object, launch: object) -> dict[str, str]:
    """Triton signature of a launch (plugin order expected): pointer types from the plan's buffer
    dtypes, i32 scalars, then the constexprs."""
    from mahia.kernels.triton.plan import POINTER_TYPES

    types = {a.name: POINTER_TYPES[plan.buffer(a.buffer).dtype] if a.is_pointer else "i32" for a in launch.args}
    return {**types, **{name: "constexpr" for name, _ in launch.constexprs}}


def constexpr_values(launch: object) -> dict[str, object]:
    """Constexpr values as triton.compile takes them (MMA as a tl dtype)."""
    from mahia.kernels.triton.launch import mma_dtype

    return {k: mma_dtype(v, launch.function()) if k == "MMA" else v for k, v in launch.constexprs}


def plugin_ptx(ptx: str, entry: str, num_params: int) -> tuple[str, list[str], list[str]]:
    """The PTX with the entry's parameters after the first num_params removed; returns (ptx, kept
    parameter declarations, removed ones). Raises if a removed parameter is referenced anywhere."""
    match = re.search(rf"\.entry {re.escape(entry)}\((.*?)\)", ptx, re.S)
    if not match:
        raise ValueError(f"aot: no .entry {entry}( in the PTX")
    params = [p.strip() for p in match.group(1).split(",") if p.strip()]
    if len(params) < num_params:
        raise ValueError(f"aot: {entry} declares {len(params)} parameters, fewer than its {num_params} real ones")
    kept, removed = params[:num_params], params[num_params:]
    body = ptx[match.end():]
    for decl in removed:
        name = decl.split()[-1]
        if re.search(rf"\b{re.escape(name)}\b", body):
            raise ValueError(f"aot: {entry}'s trailing parameter {name} is used in its body; it cannot be removed")
    block = "\n" + ",\n".join(f"\t{p}" for p in kept) + "\n"
    return ptx[:match.start(1)] + block + ptx[match.end(1):], kept, removed


def ptx_version(ptx: str) -> str:
    """The `.version` of a PTX module."""
    match = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.M)
    if not match:
        raise ValueError("aot: PTX without a .version directive")
    return match.group(1)


def assemble(ptx_file: Path, arch: int, cubin_file: Path) -> None:
    """Cubin from PTX with the ptxas Triton uses for this arch."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    try:
        ptxas = get_ptxas(arch).path
    except TypeError:  # Triton before the per-arch ptxas
        ptxas = get_ptxas().path
    result = subprocess.run([ptxas, f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx_file), "-o",
                             str(cubin_file)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"aot: ptxas failed on {ptx_file.name}: {result.stderr.strip()[:2000]}")


def compile_launch(plan: object, launch: object, arch: int, staging: Path) -> dict[str, object]:
    """Compile one launch (plugin order) for one arch into staging; returns its manifest entry."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = signature(plan, launch)
    compiled = triton.compile(ASTSource(launch.function(), sig, constexprs=constexpr_values(launch)),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": launch.num_warps, "num_stages": launch.num_stages,
                                       "ptx_version": PTX_VERSION})
    meta = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, scratch, 0):
            raise RuntimeError(f"aot: {launch.kernel} uses {scratch}={getattr(meta, scratch)}: its scratch "
                               "parameters cannot be dropped for a plugin launch")
    real = [a.name for a in launch.args]
    ptx, kept, removed = plugin_ptx(compiled.asm["ptx"], meta.name, len(real))
    version = ptx_version(ptx)
    if version != f"{PTX_VERSION // 10}.{PTX_VERSION % 10}":
        raise RuntimeError(f"aot: {launch.kernel} PTX has .version {version}, not the pinned {PTX_VERSION}")
    stem = f"{launch.variant}-{'-'.join(t.removeprefix('*') for t in sig.values() if t != 'constexpr' and t != 'i32')}"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "", stem)[:180] + f"-sm{arch}"
    (staging / f"{stem}.ptx").write_text(ptx)
    assemble(staging / f"{stem}.ptx", arch, staging / f"{stem}.cubin")
    files = {ext: {"file": f"{stem}.{ext}",
                   "sha256": hashlib.sha256((staging / f"{stem}.{ext}").read_bytes()).hexdigest()}
             for ext in ("ptx", "cubin")}
    return {"binary": stem, "kernel": launch.kernel, "module": f"mahia.kernels.triton.{launch.module}",
            "entry": meta.name, "arch": f"sm_{arch}", "ptx_version": version,
            "signature": [{"name": k, "type": v} for k, v in sig.items() if v != "constexpr"],
            "params": kept, "removed_params": removed,
            "constexprs": {k: str(v) for k, v in launch.constexprs}, "block": list(launch.block),
            "num_warps": launch.num_warps, "num_stages": launch.num_stages, "shared_bytes": meta.shared, **files}


def _min_arch(plan: object, launch: object) -> int:
    """FP8 buffers need sm_89."""
    fp8 = any(a.is_pointer and plan.buffer(a.buffer).dtype == torch.float8_e4m3fn for a in launch.args)
    return FP8_MIN_ARCH if fp8 else min(ARCHS)


def build(out_dir: Path, archs: tuple[int, ...] = ARCHS, dtypes: tuple[str, ...] = tuple(DTYPES),
          only: str | None = None, one_per_kernel: bool = False) -> dict[str, object]:
    """Compile the entry kernels of the representative plans (of the given dtypes; kernel names
    containing `only`; with one_per_kernel, the first binary of each entry kernel) for each arch."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot: unset TRITON_INTERPRET; the interpreter cannot compile kernels")
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    binaries: dict[tuple[str, int], dict] = {}
    plans = []
    seen_kernels: set[tuple[str, int]] = set()
    with tempfile.TemporaryDirectory(dir=out_dir) as staging:
        staging_dir = Path(staging)
        for dt in dtypes:
            for plan in representative_plans(DTYPES[dt]):
                launches = []
                for step in (s.plugin_order() for s in plan.launches):
                    if only and only not in step.kernel:
                        continue
                    for arch in (a for a in archs if a >= _min_arch(plan, step)):
                        key = (step.variant + repr(signature(plan, step)), arch)
                        if key not in binaries and not (one_per_kernel and (step.kernel, arch) in seen_kernels):
                            seen_kernels.add((step.kernel, arch))
                            binaries[key] = compile_launch(plan, step, arch, staging_dir)
                        built = binaries.get(key)
                        launches.append({"binary": built["binary"] if built else None, "arch": f"sm_{arch}",
                                         "kernel": step.kernel, "grid": list(step.grid), "block": list(step.block),
                                         "scalars": step.scalars,
                                         "args": [a.buffer if a.is_pointer else a.name for a in step.args]})
                if launches:
                    plans.append({"op": plan.op, "inputs": _jsonable(dict(plan.plan_inputs)), "launches": launches})
        manifest = {"triton": triton.__version__, "ptx_version": f"{PTX_VERSION // 10}.{PTX_VERSION % 10}",
                    "archs": [f"sm_{a}" for a in archs], "plans": plans, "kernels": list(binaries.values())}
        (staging_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for item in staging_dir.iterdir():
            item.replace(out_dir / item.name)
    return manifest


def main() -> None:
    """CLI: python -m mahia.kernels.aot --out DIR [--arch 80,89,90] [--dtype bf16,fp16] [--only NAME]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)))
    parser.add_argument("--dtype", default=",".join(DTYPES))
    parser.add_argument("--only", default=None, help="compile only kernels whose name contains this")
    parser.add_argument("--one-per-kernel", action="store_true", help="only the first binary of each kernel")
    args = parser.parse_args()
    manifest = build(args.out, tuple(int(a) for a in args.arch.split(",")), tuple(args.dtype.split(",")), args.only,
                     args.one_per_kernel)
    print(f"wrote {len(manifest['kernels'])} kernels for {len(manifest['plans'])} plans to {args.out}")


if __name__ == "__main__":
    main()
