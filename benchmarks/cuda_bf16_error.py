"""Where the CUDA deployment's bf16 error at one parity point comes from, against the eager fp32 model on the CPU:

1. the bf16 deployable module on the GPU with the reference ops and with the Triton ops, unpadded and padded to
   several buckets, with cuBLAS's reduced-precision bf16 reductions on and off;
2. per module, the rel. error of its output in the bf16 module on the CPU and on the GPU (reference ops), the
   modules where the GPU's is over twice the CPU's and over 5e-3 (every module with --all-modules);
3. with --isolate PATH, that module alone on the same inputs (the ones the CPU's bf16 run gave it): its fp32
   original, its bf16 copy on the CPU and on the GPU, so a difference there is the module's own;
4. with --moe-steps PATH, the reference MoE's steps (expert GEMMs, SiLU product) on the GPU against the CPU, each
   on the same bf16 inputs.

    python3 benchmarks/cuda_bf16_error.py ARTIFACT_DIR [--point 3x37] [--buckets 3x37,4x43,4x48] [--data F]
        [--all-modules] [--isolate blocks.0.moe] [--moe-steps blocks.0.moe] [--bf16-routers]

The deployment computes the MoE routers in float32 since commit 16a4973 (Float32Router); --bf16-routers puts the
bf16 ones back, as in the runs that found the routing gap (benchmarks/RESULTS.md).

The point is one of the artifact's parity points, fed the same reviews as in benchmarks/cuda_backend_check.py.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from cuda_backend_check import review_feeds
from torch import nn

from mahia.artifact import read_manifest
from mahia.kernels import use_reference_ops
from mahia.model.moe import MixtureOfExperts
from mahia.runtime.backends.cuda import deployable_module, rebuild_model
from mahia.runtime.backends.cuda_buckets import pad_inputs

from common import relative_error


def module_outputs(module: nn.Module, feed: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """{module path: its (first) floating output, float64 on the CPU} of one reference-ops forward."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(path: str, output: object) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            outputs[path] = tensor.detach().double().cpu()

    hooks = [sub.register_forward_hook(lambda _m, _i, out, path=path: keep(path, out))
             for path, sub in module.named_modules()]
    with torch.inference_mode(), use_reference_ops(True):
        module(**{name: tensor.to(device) for name, tensor in feed.items()})
    for hook in hooks:
        hook.remove()
    return outputs


def bf16_routers(module: nn.Module, model: nn.Module) -> None:
    """Undo the deployment's Float32Router: every MoE router of `module` the bf16 cast of `model`'s."""
    for path, moe in model.named_modules():
        if isinstance(moe, MixtureOfExperts):
            deployed = module.get_submodule(path)
            deployed.router = copy.deepcopy(moe.router).to(deployed.router.weight.device, torch.bfloat16)


def module_inputs(module: nn.Module, path: str, feed: dict[str, torch.Tensor]) -> tuple:
    """The positional inputs the submodule at `path` receives in one reference-ops forward of `module`."""
    captured: list[tuple] = []
    hook = module.get_submodule(path).register_forward_pre_hook(lambda _m, args: captured.append(args))
    with torch.inference_mode(), use_reference_ops(True):
        module(**feed)
    hook.remove()
    return captured[0]


def isolate(model: nn.Module, cpu_module: nn.Module, gpu_module: nn.Module, path: str,
            feed: dict[str, torch.Tensor], device: str = "cuda") -> None:
    """Print the submodule's rel. error on the CPU and the GPU in bf16 against fp32, all on the same inputs."""
    args = module_inputs(cpu_module, path, feed)

    def first(output: object) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output

    def cast(dtype: torch.dtype, device: str) -> tuple:
        return tuple(a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)
                     if torch.is_tensor(a) else a for a in args)

    with torch.inference_mode(), use_reference_ops(True):
        want = first(model.get_submodule(path)(*cast(torch.float32, "cpu")))
        on_cpu = first(cpu_module.get_submodule(path)(*cast(torch.bfloat16, "cpu")))
        on_gpu = first(gpu_module.get_submodule(path)(*cast(torch.bfloat16, device)))
    print(f"\n{path} alone on the CPU run's bf16 inputs: rel. error against fp32 CPU bf16 "
          f"{relative_error(on_cpu, want):.2e}, GPU bf16 {relative_error(on_gpu, want):.2e}; GPU against CPU "
          f"{relative_error(on_gpu, on_cpu):.2e}")


def moe_steps(cpu_module: nn.Module, gpu_module: nn.Module, path: str, feed: dict[str, torch.Tensor],
              device: str = "cuda") -> None:
    """The reference MoE at `path` step by step on the same bf16 inputs (the CPU run's) on the CPU and the GPU:
    the GPU-against-CPU rel. difference of each step, worst over the experts, and each step's own on fp32 inputs."""
    from mahia.kernels.reference.moe_ffn import route_tokens

    x, mask = module_inputs(cpu_module, path, feed)[:2]
    cpu_moe, gpu_moe = cpu_module.get_submodule(path), gpu_module.get_submodule(path)
    x = x.reshape(-1, x.shape[-1])
    with torch.inference_mode():
        logits = cpu_moe.router(x)
        weights, experts, keep = route_tokens(logits, mask.reshape(-1).bool(), cpu_moe.top_k, 0.0)
        worst = {"x W1^T (gate, up)": 0.0, "silu(gate) * up": 0.0, "(...) W2^T": 0.0}
        for e in range(cpu_moe.w1.shape[0]):
            token, _ = torch.nonzero((experts == e) & keep, as_tuple=True)
            if token.numel() == 0:
                continue
            h = x[token] @ cpu_moe.w1[e].t()
            gate, up = h.chunk(2, dim=-1)
            a = torch.nn.functional.silu(gate) * up
            on_cpu = (h, a, a @ cpu_moe.w2[e].t())
            # each step on the GPU from the CPU's inputs to that step, so a difference is that step's own
            h_gpu = (x[token].to(device) @ gpu_moe.w1[e].t()).cpu()
            a_gpu = (torch.nn.functional.silu(gate.to(device)) * up.to(device)).cpu()
            o_gpu = (a.to(device) @ gpu_moe.w2[e].t()).cpu()
            for key, got, want in zip(worst, (h_gpu, a_gpu, o_gpu), on_cpu):
                worst[key] = max(worst[key], relative_error(got, want))
    print(f"\n{path} step by step, GPU against CPU on the same bf16 inputs to each step (worst expert): "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))


def main() -> None:
    """Part 1: one line per (ops, reduced-precision reductions, bucket); part 2: one line per diverging module."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--point", default="3x37")
    parser.add_argument("--buckets", default="3x37,4x43,4x48")
    parser.add_argument("--data", default=None)
    parser.add_argument("--all-modules", action="store_true")
    parser.add_argument("--isolate", action="append", default=[], help="a module path (repeatable)")
    parser.add_argument("--moe-steps", action="append", default=[], help="an MoE module path (repeatable)")
    parser.add_argument("--bf16-routers", action="store_true", help="routers in bf16 as before commit 16a4973 "
                        "(the deployment's Float32Router replaced by the bf16 cast of the fp32 router)")
    args = parser.parse_args()
    manifest = read_manifest(args.artifact)
    model = rebuild_model(args.artifact, manifest)
    point = tuple(int(v) for v in args.point.split("x"))
    points = [tuple(p) for p in manifest.parity["points"]]  # the reviews cuda_backend_check.py feeds this point
    feed = review_feeds(manifest.model.config.vocab_size, points, args.data)[points.index(point)]
    with torch.inference_mode():
        want = model(**feed)
    module, _ = deployable_module(model, "bf16", "cuda")
    cpu_module = deployable_module(model, "bf16", "cpu")[0]
    if args.bf16_routers:
        for deployed in (module, cpu_module):
            bf16_routers(deployed, model)
    cuda_feed = {name: tensor.cuda() for name, tensor in feed.items()}
    print(f"{args.artifact.name} at {args.point}: eager fp32 logits {want.tolist()}")
    matmul = torch.backends.cuda.matmul
    for reduced in (True, False):
        matmul.allow_bf16_reduced_precision_reduction = reduced
        for reference in (True, False):
            for bucket in (tuple(int(v) for v in b.split("x")) for b in args.buckets.split(",")):
                with torch.inference_mode(), use_reference_ops(reference):
                    got = module(**pad_inputs(cuda_feed, *bucket))[:point[0]].float().cpu()
                print(f"{'reference' if reference else 'Triton':9s} ops, reduced-precision bf16 reductions "
                      f"{'on ' if reduced else 'off'}, bucket {bucket[0]} x {bucket[1]}: rel L2 "
                      f"{relative_error(got, want):.2e}  {[[round(v, 4) for v in row] for row in got.tolist()]}")
    matmul.allow_bf16_reduced_precision_reduction = True
    fp32 = module_outputs(model, feed, "cpu")
    cpu = module_outputs(cpu_module, feed, "cpu")
    gpu = module_outputs(module, feed, "cuda")
    shown = "every module" if args.all_modules else "GPU > 2x CPU and > 5e-3"
    print(f"\nmodule | CPU bf16 | GPU bf16  (rel. error of its output against fp32; {shown})")
    for path, reference in fp32.items():
        if path in cpu and path in gpu and cpu[path].shape == gpu[path].shape == reference.shape:
            on_cpu, on_gpu = relative_error(cpu[path], reference), relative_error(gpu[path], reference)
            if args.all_modules or on_gpu > max(2 * on_cpu, 5e-3):
                print(f"{path or '(model)'} | {on_cpu:.2e} | {on_gpu:.2e}")
    for path in args.isolate:
        isolate(model, cpu_module, module, path, feed)
    for path in args.moe_steps:
        moe_steps(cpu_module, module, path, feed)


if __name__ == "__main__":
    main()
