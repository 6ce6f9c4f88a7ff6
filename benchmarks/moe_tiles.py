"""`mahia::moe_ffn`'s tile configs at the token counts the `base` model deploys: which config per routed-rows
bucket (`mahia.kernels.triton.moe_ffn.CONFIGS`, and `CONFIGS_FP8` with --fp8).

    PYTHONPATH=$PWD python3 benchmarks/moe_tiles.py [--tokens 139,4184,65888] [--fp8] [--out DIR]

--fp8 sweeps the FP8 deployment's experts instead (E4M3 weights and activations, `moe_ffn(..., x_scale,
hidden_scale)`), and first times, per token count, the bf16 op and the FP8-weights-only op (weights widened to bf16
in the kernels) at their committed configs, checks the FP8 op against its float64 reference and the kernels' E4M3
rounding against torch's cast: what FP8 activations gain, in one process.

The committed CONFIGS were swept on an H100 at the `large` config's sizes (D 1024, H 2816; benchmarks/kernels.py
--sweep). `base` (D 768, H 2048, 8 experts, top-2) deploys 1 x 139, 8 x 523 and 32 x 2059 tokens (the bench's 1 x
128, 8 x 512 and 32 x 2048 in their aligned buckets, tabular tokens included). bf16, every token real, float32
router logits (as backend "cuda" routes), `do_bench_cudagraph` (the GPU work alone, what the deployment replays).
Every config's output is compared with the committed config's: the tiles change only the order of float32 sums.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

from mahia.kernels.triton import moe_ffn as kernel

D_MODEL, HIDDEN, EXPERTS, TOP_K = 768, 2048, 8, 2
UP = [(64, 64, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (32, 64, 4, 4), (128, 64, 4, 3), (64, 256, 4, 3),
      (128, 64, 8, 4), (64, 64, 4, 6)]
DOWN = [(64, 64, 4, 4), (32, 128, 4, 4), (64, 128, 4, 4), (32, 64, 4, 4), (128, 64, 4, 4), (128, 128, 8, 3),
        (64, 128, 4, 6)]
BIG = [(128, (128, 64, 8, 4), (128, 128, 8, 3)), (128, (64, 64, 8, 4), (128, 64, 8, 3)),
       (64, (128, 64, 4, 4), (128, 64, 4, 4)), (128, (128, 32, 8, 5), (128, 64, 8, 4)),
       (64, (64, 64, 4, 4), (64, 64, 4, 4)), (128, (128, 64, 8, 3), (128, 128, 8, 4)),
       (128, (64, 128, 8, 3), (128, 64, 8, 4)), (128, (128, 64, 8, 4), (256, 64, 8, 3)),
       (64, (128, 64, 4, 3), (128, 128, 4, 3)), (128, (128, 64, 8, 4), (128, 64, 8, 4))]


def candidates(rows: int) -> list[dict[str, object]]:
    """Configs to time at this many routed rows: the committed one first."""
    committed = kernel.choose_config(rows)
    if rows <= 4096:
        cfgs = [{"BLOCK_M": m, "up": u, "down": committed["down"]} for m in (16, 32, 64) for u in UP]
        cfgs += [{"BLOCK_M": m, "up": committed["up"], "down": d} for m in (32, 64) for d in DOWN]
    else:
        cfgs = [{"BLOCK_M": m, "up": u, "down": d} for m, u, d in BIG]
    return [committed] + [c for c in cfgs if c != committed]


def fp8_candidates(rows: int) -> list[dict[str, object]]:
    """FP8 configs to time at this many routed rows: the committed one first. FP8 tiles take half the shared
    memory of bf16 ones, so deeper K tiles are among them."""
    committed = kernel.choose_config(rows, fp8=True)
    if rows <= 256:
        cfgs = [{"BLOCK_M": m, "up": u, "down": d} for m in (16, 32)
                for u, d in [((64, 128, 4, 4), (32, 128, 4, 4)), ((64, 256, 4, 3), (64, 256, 4, 3)),
                             ((32, 256, 4, 3), (32, 256, 4, 3)), ((64, 128, 4, 4), (64, 256, 4, 3))]]
    elif rows <= 4096:
        cfgs = [{"BLOCK_M": m, "up": u, "down": d} for m in (32, 64)
                for u, d in [((64, 64, 4, 4), (64, 128, 4, 4)), ((64, 128, 4, 4), (64, 128, 4, 4)),
                             ((128, 128, 4, 3), (128, 128, 4, 3)), ((64, 256, 4, 3), (64, 256, 4, 3)),
                             ((64, 128, 4, 3), (128, 128, 4, 4))]]
        cfgs.append({"BLOCK_M": 128, "up": (128, 128, 8, 3), "down": (128, 128, 8, 3)})
    else:
        cfgs = [{"BLOCK_M": m, "up": u, "down": d} for m, u, d in [
            (128, (128, 64, 8, 4), (256, 64, 8, 3)), (128, (128, 128, 8, 4), (256, 128, 8, 3)),
            (128, (128, 128, 8, 3), (128, 128, 8, 4)), (128, (64, 128, 4, 4), (128, 128, 4, 4)),
            (64, (128, 128, 4, 4), (128, 128, 4, 4)), (128, (128, 64, 8, 5), (256, 64, 8, 4)),
            (128, (64, 256, 8, 3), (128, 256, 8, 3)), (128, (128, 128, 8, 3), (256, 128, 8, 3))]]
    return [committed] + [c for c in cfgs if c != committed]


def fp8_baselines(tokens: int, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, w1: torch.Tensor,
                  w2: torch.Tensor, flops: int) -> list[dict[str, object]]:
    """The bf16 op and the FP8-weights-only op, timed at their committed configs."""
    from mahia.kernels import reference

    w1_q, s1 = reference.quantize_experts_fp8(w1.float())
    w2_q, s2 = reference.quantize_experts_fp8(w2.float())
    rows = []
    for name, fn in [("bf16", lambda: kernel.moe_ffn(x, logits, mask, w1, w2, TOP_K, 0.0)),
                     ("fp8 weights", lambda: kernel.moe_ffn(x, logits, mask, w1_q, w2_q, TOP_K, 0.0, w1_scale=s1,
                                                            w2_scale=s2))]:
        ms = float(triton.testing.do_bench_cudagraph(fn, rep=30))
        rows.append({"tokens": tokens, "variant": name, "ms": ms, "tflops": flops / ms / 1e9})
        print(f"T={tokens:6d} {ms:8.4f} ms {flops / ms / 1e9:6.1f} TFLOP/s  {name}, committed config", flush=True)
    return rows


def fp8_scales(x: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max calibration on these inputs: x's amax / 448, each expert's hidden amax / 448 (over every token)."""
    hidden = torch.stack([(torch.nn.functional.silu(g) * u).abs().amax() for g, u in
                          (torch.chunk(x.float() @ w.float().t(), 2, dim=-1) for w in w1)])
    return x.float().abs().amax().reshape(1) / 448, hidden / 448


@triton.jit
def _round_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    tl.store(out_ptr + offs, kernel.round_to_e4m3(tl.load(x_ptr + offs, mask=ok, other=0.0)).to(tl.float8e4nv), mask=ok)


def rounding_check() -> None:
    """The kernels' E4M3 rounding (round_to_e4m3) on the GPU against torch's cast: every E4M3 value, every tie,
    random values."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = codes[torch.isfinite(codes)].unique()
    values = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.randn(1 << 20) * torch.logspace(-4, 2.5, 1 << 20)])
    values = values.cuda()
    out = torch.empty(values.numel(), dtype=torch.float8_e4m3fn, device="cuda")
    _round_kernel[(triton.cdiv(values.numel(), 1024),)](values, out, values.numel(), BLOCK=1024)
    want = values.clamp(-448, 448).to(torch.float8_e4m3fn)
    print(f"E4M3 rounding on the GPU: {int((out.float() != want.float()).sum())} of {values.numel()} values differ "
          "from torch's cast", flush=True)


def main() -> None:
    """One line per (tokens, config): ms, TFLOP/s, distance from the committed config's output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="139,4184,65888")
    parser.add_argument("--fp8", action="store_true", help="the FP8 experts (E4M3 weights and activations)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    if args.fp8:
        rounding_check()
    results = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(tokens, D_MODEL, device="cuda", dtype=torch.bfloat16)
        logits = torch.randn(tokens, EXPERTS, device="cuda")
        mask = torch.ones(tokens, device="cuda", dtype=torch.bool)
        w1 = (torch.randn(EXPERTS, 2 * HIDDEN, D_MODEL, device="cuda") * D_MODEL ** -0.5).bfloat16()
        w2 = (torch.randn(EXPERTS, D_MODEL, HIDDEN, device="cuda") * HIDDEN ** -0.5).bfloat16()
        flops = 2 * tokens * TOP_K * 3 * D_MODEL * HIDDEN
        want = None
        if args.fp8:
            from mahia.kernels import reference

            results += fp8_baselines(tokens, x, logits, mask, w1, w2, flops)
            w1, s1 = reference.quantize_experts_fp8(w1.float())
            w2, s2 = reference.quantize_experts_fp8(w2.float())
            x_scale, hidden_scale = fp8_scales(x, reference.dequantize_experts_fp8(w1, s1, torch.float32))
            exact = reference.moe_ffn_fp8(x.double(), logits.double(), mask, w1, s1, w2, s2, TOP_K, 0.0, x_scale,
                                          hidden_scale)
            got = kernel.moe_ffn(x, logits, mask, w1, w2, TOP_K, 0.0, w1_scale=s1, w2_scale=s2, x_scale=x_scale,
                                 hidden_scale=hidden_scale)
            error = float((got.double() - exact).norm() / exact.norm())
            results.append({"tokens": tokens, "variant": "fp8 error vs float64", "rel_error": error})
            print(f"T={tokens:6d} FP8 op, committed config: rel. error {error:.2e} against its float64 reference",
                  flush=True)
        scaled = {"w1_scale": s1, "w2_scale": s2, "x_scale": x_scale, "hidden_scale": hidden_scale} if args.fp8 else {}
        for cfg in (fp8_candidates if args.fp8 else candidates)(tokens * TOP_K):
            fn = lambda c=cfg: kernel.moe_ffn(x, logits, mask, w1, w2, TOP_K, 0.0, config=c, **scaled)  # noqa: E731
            try:
                out = fn().float()
                ms = float(triton.testing.do_bench_cudagraph(fn, rep=30))
            except Exception as exc:  # a config past the shared memory or register limit: say so, go on
                print(f"T={tokens:6d} {json.dumps(cfg)} FAILED: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            want = out if want is None else want
            err = float((out - want).norm() / want.norm())
            results.append({"tokens": tokens, "config": cfg, "ms": ms, "tflops": flops / ms / 1e9, "rel_diff": err})
            print(f"T={tokens:6d} {ms:8.4f} ms {flops / ms / 1e9:6.1f} TFLOP/s diff {err:.1e}  {json.dumps(cfg)}",
                  flush=True)
        best = min((r for r in results if r["tokens"] == tokens and "config" in r), key=lambda r: r["ms"])
        print(f"T={tokens:6d} best {best['ms']:.4f} ms: {json.dumps(best['config'])}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
        (args.out / f"moe_tiles{'_fp8' if args.fp8 else ''}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
