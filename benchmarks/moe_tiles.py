"""`mahia::moe_ffn`'s tile configs at the token counts the `base` model deploys: which config per routed-rows
bucket (`mahia.kernels.triton.moe_ffn.CONFIGS`).

    PYTHONPATH=$PWD python3 benchmarks/moe_tiles.py [--tokens 139,4184,65888] [--out DIR]

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


def main() -> None:
    """One line per (tokens, config): ms, TFLOP/s, distance from the committed config's output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="139,4184,65888")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    results = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(tokens, D_MODEL, device="cuda", dtype=torch.bfloat16)
        logits = torch.randn(tokens, EXPERTS, device="cuda")
        mask = torch.ones(tokens, device="cuda", dtype=torch.bool)
        w1 = (torch.randn(EXPERTS, 2 * HIDDEN, D_MODEL, device="cuda") * D_MODEL ** -0.5).bfloat16()
        w2 = (torch.randn(EXPERTS, D_MODEL, HIDDEN, device="cuda") * HIDDEN ** -0.5).bfloat16()
        flops = 2 * tokens * TOP_K * 3 * D_MODEL * HIDDEN
        want = None
        for cfg in candidates(tokens * TOP_K):
            fn = lambda c=cfg: kernel.moe_ffn(x, logits, mask, w1, w2, TOP_K, 0.0, config=c)  # noqa: E731
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
        best = min((r for r in results if r["tokens"] == tokens), key=lambda r: r["ms"])
        print(f"T={tokens:6d} best {best['ms']:.4f} ms: {json.dumps(best['config'])}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
        (args.out / "moe_tiles.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
