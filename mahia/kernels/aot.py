"""Ahead-of-time build of the Triton kernels: PTX and cubin for sm_80, sm_89 and sm_90, no GPU needed.

Every kernel is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`
for each deployment variant (dtype x the committed tile config of each shape bucket) and written with
a JSON manifest: for each binary its kernel name, arch, signature (argument names and Triton types,
in launch order, constexprs folded in), constexpr values, grid formula, num_warps, num_stages,
shared memory bytes and the files' sha256. The TensorRT plugins load these binaries.

Run: `python -m mahia.kernels.aot --out artifacts/kernels` (TRITON_INTERPRET must be unset).
No divisibility specialisation is assumed (the plugin may pass any pointer or stride), so these
binaries are a little more general than the ones Triton's JIT builds for aligned tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ARCHS = (80, 89, 90)
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class KernelVariant:
    """One kernel with fixed constexprs and launch parameters, to compile for each arch."""

    module: str  # mahia.kernels.triton.<module>
    kernel: str  # name of the @triton.jit function in it
    dtype: str  # "bf16" / "fp16": the element type of the *{dt} pointers
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    grid: str  # launch grid as a formula over the op's sizes
    pointer_types: dict[str, str] = field(default_factory=dict)  # overrides of *{dt}
    min_arch: int = 80  # FP8 (e4m3) conversions need sm_89

    @property
    def tag(self) -> str:
        """A file-name-safe identifier of this variant."""
        parts = [self.kernel, self.dtype] + [f"{k}{v}" for k, v in sorted(self.constexprs.items())
                                             if k not in ("MMA", "DOT_PRECISION")]
        return "-".join(str(p) for p in parts).replace(" ", "")


def _variants() -> Iterator[KernelVariant]:
    """The deployment variants: every kernel, dtype and committed shape-bucket config."""
    from mahia.kernels.triton import long_conv, moe_ffn, ssd_scan
    from mahia.kernels.triton import gate_combine as gate

    for dt in DTYPES:
        mma = {"MMA": dt, "DOT_PRECISION": "tf32"}
        cfg = gate.CONFIG
        yield KernelVariant("gate_combine", "gate_combine_kernel", dt,
                            {"BLOCK_T": cfg["BLOCK_T"], "BLOCK_D": cfg["BLOCK_D"]}, cfg["num_warps"], 1,
                            "(cdiv(B*L, BLOCK_T), cdiv(D, BLOCK_D), 1)")
        for length in (64, 4096):  # the two tile buckets of long_conv.choose_config, at batch 8
            cfg = long_conv.choose_config(8, length)
            for causal in (True, False):
                yield KernelVariant(
                    "long_conv", "long_conv_kernel", dt,
                    {"CAUSAL": causal, "BLOCK_K": cfg["BLOCK_K"], "NT": cfg["NT"], "BLOCK_N": cfg["BLOCK_N"], **mma},
                    cfg["num_warps"], cfg["num_stages"],
                    "(D, cdiv(cdiv(L, BLOCK_K), NT), cdiv(B, BLOCK_N // NT))")
        q = 256
        cfg = ssd_scan.CONFIG
        yield KernelVariant("ssd_scan", "ssd_chunk_cb_kernel", dt,
                            {"Q": q, "BLOCK": cfg["cb"]["BLOCK"], "BLOCK_N": 64, **mma},
                            cfg["cb"]["num_warps"], cfg["cb"]["num_stages"],
                            "(B * cdiv(L, Q), Q // BLOCK, Q // BLOCK)", {"cb_ptr": "*fp32"})
        yield KernelVariant("ssd_scan", "ssd_chunk_states_kernel", dt,
                            {"Q": q, **{k: cfg["states"][k] for k in ("BLOCK_Q", "BLOCK_P", "BLOCK_N")}, **mma},
                            cfg["states"]["num_warps"], cfg["states"]["num_stages"],
                            "(B * H, cdiv(P, BLOCK_P), cdiv(N, BLOCK_N))", {"states_ptr": "*fp32", "a_ptr": "*fp32"})
        yield KernelVariant("ssd_scan", "ssd_chunk_output_kernel", dt,
                            {"Q": q, **{k: cfg["output"][k] for k in ("BLOCK_L", "BLOCK_P", "BLOCK_N")}, **mma},
                            cfg["output"]["num_warps"], cfg["output"]["num_stages"],
                            "(B * cdiv(L, Q) * H * (Q // BLOCK_L), cdiv(P, BLOCK_P), 1)",
                            {"cb_ptr": "*fp32", "states_ptr": "*fp32", "a_ptr": "*fp32"})
        route_ptrs = {"mask_ptr": "*i1", "capacity_factor_ptr": "*fp64", "weights_ptr": "*fp32",
                      "experts_ptr": "*i32", "queue_ptr": "*i32", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32",
                      "counts_ptr": "*i32", "valid_ptr": "*i32", "plan_ptr": "*i32"}
        tile = moe_ffn.ROUTE_TILE
        for limit, cfg in moe_ffn.CONFIGS:
            block_m = cfg["BLOCK_M"]
            for top_k in (1, 2):
                common = {"K": top_k, "E_PAD": 8}
                # T <= ROUTE_TILE: this one routing program; more tokens: top-k, plan, scatter.
                yield KernelVariant("moe_ffn", "moe_route_kernel", dt,
                                    {**common, "K_PAD": 2, "BLOCK_T": tile, "BLOCK_M": block_m,
                                     "CAPACITY_LIMITED": False}, 4, 1, "(1, 1, 1)", route_ptrs)
                yield KernelVariant("moe_ffn", "moe_topk_kernel", dt, {**common, "K_PAD": 2, "BLOCK_T": tile}, 4, 1,
                                    "(cdiv(T, ROUTE_TILE), 1, 1)", route_ptrs)
                yield KernelVariant("moe_ffn", "moe_plan_kernel", dt,
                                    {**common, "BLOCK_R": 1024, "BLOCK_M": block_m, "CAPACITY_LIMITED": False}, 4, 1,
                                    "(1, 1, 1)", route_ptrs)
                yield KernelVariant("moe_ffn", "moe_scatter_kernel", dt, {**common, "BLOCK_T": tile}, 4, 1,
                                    "(cdiv(T, ROUTE_TILE), k, 1)", route_ptrs)
                bn, bk, warps, stages = cfg["up"]
                for fp8 in (False, True):
                    weights = {"w1_ptr": "*fp8e4nv", "w1_scale_ptr": "*fp32"} if fp8 else {}
                    yield KernelVariant("moe_ffn", "moe_up_kernel", dt,
                                        {"K": top_k, "BLOCK_M": block_m, "BLOCK_N": bn, "BLOCK_K": bk,
                                         "GROUP_M": moe_ffn.GROUP_M, "W_SCALED": fp8, **mma},
                                        warps, stages,
                                        "(cdiv(T*k + E*(BLOCK_M-1), BLOCK_M) * cdiv(H, BLOCK_N), 1, 1)",
                                        {"sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", **weights},
                                        min_arch=89 if fp8 else 80)
                yield KernelVariant("moe_ffn", "moe_combine_kernel", dt,
                                    {"K": top_k, "BLOCK_T": 8, "BLOCK_D": 256}, 4, 1,
                                    "(cdiv(T, BLOCK_T), cdiv(D, BLOCK_D), 1)",
                                    {"weights_ptr": "*fp32", "queue_ptr": "*i32"})
            bn, bk, warps, stages = cfg["down"]
            for fp8 in (False, True):
                weights = {"w2_ptr": "*fp8e4nv", "w2_scale_ptr": "*fp32"} if fp8 else {}
                yield KernelVariant("moe_ffn", "moe_down_kernel", dt,
                                    {"BLOCK_M": block_m, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": moe_ffn.GROUP_M,
                                     "W_SCALED": fp8, **mma},
                                    warps, stages, "(cdiv(T*k + E*(BLOCK_M-1), BLOCK_M) * cdiv(D, BLOCK_N), 1, 1)",
                                    {"sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", **weights},
                                    min_arch=89 if fp8 else 80)


def _signature(fn: object, variant: KernelVariant) -> tuple[dict[str, str], dict[str, object]]:
    """Triton signature (name -> type, launch order) and constexpr values of one variant."""
    import triton.language as tl

    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            if name not in variant.constexprs:
                raise ValueError(f"aot: {variant.kernel} needs constexpr {name}")
            value = variant.constexprs[name]
            if name == "MMA":
                value = getattr(tl, DTYPES[value]) if value in DTYPES else value
            signature[name] = "constexpr"
            constexprs[name] = value
        elif name.endswith("_ptr"):
            signature[name] = variant.pointer_types.get(name, f"*{variant.dtype}")
        else:
            signature[name] = "i32"
    return signature, constexprs


def build(out_dir: Path, archs: tuple[int, ...] = ARCHS, dtypes: tuple[str, ...] = tuple(DTYPES),
          only: str | None = None, one_per_kernel: bool = False) -> dict[str, object]:
    """Compile every variant (of the given dtypes, kernel names containing `only`; with
    one_per_kernel, the first variant of each kernel) for each arch into out_dir."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot: unset TRITON_INTERPRET; the interpreter cannot compile kernels")
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory(dir=out_dir) as staging:
        staging_dir = Path(staging)
        seen = set()
        for variant in _variants():
            key = (variant.kernel, variant.min_arch) if one_per_kernel else variant.tag
            if key in seen or variant.dtype not in dtypes or (only and only not in variant.kernel):
                continue
            seen.add(key)
            fn = getattr(importlib.import_module(f"mahia.kernels.triton.{variant.module}"), variant.kernel)
            signature, constexprs = _signature(fn, variant)
            for arch in (a for a in archs if a >= variant.min_arch):
                compiled = triton.compile(
                    ASTSource(fn, signature, constexprs=constexprs),
                    target=GPUTarget("cuda", arch, 32),
                    options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
                stem = f"{variant.tag}-sm{arch}"
                files = {}
                for ext in ("ptx", "cubin"):
                    data = compiled.asm[ext]
                    data = data.encode() if isinstance(data, str) else data
                    (staging_dir / f"{stem}.{ext}").write_bytes(data)
                    files[ext] = {"file": f"{stem}.{ext}", "sha256": hashlib.sha256(data).hexdigest()}
                entries.append({
                    "kernel": variant.kernel, "module": f"mahia.kernels.triton.{variant.module}",
                    "entry": compiled.metadata.name, "arch": f"sm_{arch}", "dtype": variant.dtype,
                    "signature": [{"name": k, "type": v} for k, v in signature.items() if v != "constexpr"],
                    "constexprs": {k: str(v) for k, v in constexprs.items()}, "grid": variant.grid,
                    "block": [32 * variant.num_warps, 1, 1], "num_warps": variant.num_warps,
                    "num_stages": variant.num_stages, "shared_bytes": compiled.metadata.shared, **files})
        manifest = {"triton": triton.__version__, "archs": [f"sm_{a}" for a in archs], "kernels": entries}
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
    parser.add_argument("--one-per-kernel", action="store_true", help="only the first variant of each kernel")
    args = parser.parse_args()
    manifest = build(args.out, tuple(int(a) for a in args.arch.split(",")), tuple(args.dtype.split(",")), args.only,
                     args.one_per_kernel)
    print(f"wrote {len(manifest['kernels'])} kernels to {args.out}")


if __name__ == "__main__":
    main()
