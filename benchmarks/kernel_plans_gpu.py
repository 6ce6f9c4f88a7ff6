"""One GPU run for the launch-plan work (issues 12-14): long conv crossover, plugin-ready PTX launched through
the CUDA driver, the torch.compile crash (old launcher) and its fix, and the kernels' check.

    python benchmarks/kernel_plans_gpu.py --out DIR [--old-launcher OLD_MOE.py] [--budget SECONDS]

Needs a CUDA GPU. Sections, in order (each prints plain text; results also go to DIR/results.json):
1. long_conv: the Toeplitz kernel (the launcher, whatever the op would choose) against torch.fft (the reference) at
   L = 512 ... 8192, causal and two-sided, bf16, batch 8, 768 channels (medians of do_bench).
2. plugin PTX: gate_combine's entry built by mahia.kernels.aot (hidden parameters removed, .version
   pinned), loaded with cuModuleLoadData and launched with cuLaunchKernel passing only the real
   arguments, compared with the reference.
3. torch.compile, each case in its own process (an illegal memory access ends a CUDA context):
   the MoE op at the base config's 8 x 512 token count (4,136 tokens, three-kernel routing) with the
   launcher before the plans (--old-launcher: that module's source, e.g.
   `git show c0ad26f:mahia/kernels/triton/moe_ffn.py`, with mma_dtype taking a torch dtype) and
   with the current one; then the base model (random weights, bf16, or float32 for case new-model-fp32,
   8 x 512), eager against compiled.
   Inductor's debug output (output_code.py) of each case goes to DIR/compile-<case>/.
4. `benchmarks/kernels.py --check` (every kernel against its float64 reference), with what is left of
   --budget.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS: dict[str, object] = {}


def say(line: str) -> None:
    """Print at once."""
    print(line, flush=True)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (inf when out is not finite)."""
    if not torch.isfinite(out).all():
        return math.inf
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def conv_crossover() -> list[dict]:
    """Toeplitz kernel against torch.fft over lengths, causal and two-sided."""
    import triton.testing

    from mahia.kernels import reference
    from mahia.kernels.triton import long_conv as conv

    rows = []
    batch, channels = 8, 768
    for causal in (True, False):
        for length in (512, 1024, 2048, 4096, 8192):
            x = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16)
            filt = (torch.randn(channels, length if causal else 2 * length - 1, device="cuda")
                    * length ** -0.5).to(torch.bfloat16)
            err = rel_error(conv.long_conv(x, filt, causal),
                            reference.long_conv(x.double(), filt.double(), causal))
            toeplitz = triton.testing.do_bench(lambda: conv.long_conv(x, filt, causal),
                                               warmup=25, rep=100, return_mode="median")
            fft = triton.testing.do_bench(lambda: reference.long_conv(x, filt, causal), warmup=25, rep=100,
                                          return_mode="median")
            kind = "causal" if causal else "two-sided"
            rows.append({"length": length, "causal": causal, "toeplitz_ms": toeplitz, "fft_ms": fft, "rel_error": err})
            say(f"long_conv B=8 D=768 L={length:5d} {kind:9s} toeplitz {toeplitz:8.4f} ms  torch.fft {fft:8.4f} ms  "
                f"fft/toeplitz {fft / toeplitz:5.2f}x  err {err:.1e}")
    return rows


def cuda_driver():
    """(name, cuModuleLoadData, cuModuleGetFunction, cuLaunchKernel) from cuda-bindings, else libcuda by ctypes."""
    try:
        from cuda.bindings import driver

        def check(result):
            err, *rest = result
            if int(err) != 0:
                raise RuntimeError(f"CUDA driver error {err}")
            return rest[0] if len(rest) == 1 else rest

        def load(ptx: bytes):
            return check(driver.cuModuleLoadData(ptx))

        def function(module, name: str):
            return check(driver.cuModuleGetFunction(module, name.encode()))

        def launch(fn, grid, block, shared, values, kinds):
            types = [ctypes.c_void_p if k == "ptr" else ctypes.c_int32 for k in kinds]
            check(driver.cuLaunchKernel(fn, *grid, *block, shared, torch.cuda.current_stream().cuda_stream,
                                        (tuple(values), tuple(types)), 0))
        return "cuda-bindings", load, function, launch
    except ImportError:
        lib = ctypes.CDLL("libcuda.so.1")

        def check(code: int) -> None:
            if code != 0:
                raise RuntimeError(f"CUDA driver error {code}")

        def load(ptx: bytes):
            module = ctypes.c_void_p()
            check(lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx)))
            return module

        def function(module, name: str):
            fn = ctypes.c_void_p()
            check(lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()))
            return fn

        def launch(fn, grid, block, shared, values, kinds):
            holders = [ctypes.c_void_p(v) if k == "ptr" else ctypes.c_int32(v) for v, k in zip(values, kinds)]
            params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(h), ctypes.c_void_p) for h in holders])
            check(lib.cuLaunchKernel(fn, *[ctypes.c_uint(g) for g in grid], *[ctypes.c_uint(b) for b in block],
                                     ctypes.c_uint(shared), ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
                                     params, None))
        return "libcuda (ctypes)", load, function, launch


def plugin_ptx(out: Path) -> dict:
    """Build gate_combine's plugin PTX for this GPU and launch it with the real arguments only."""
    from mahia.kernels import aot, reference
    from mahia.kernels.triton import gate_combine

    major, minor = torch.cuda.get_device_capability()
    manifest = aot.build(out / "aot", archs=(10 * major + minor,), dtypes=("bf16",), only="gate_combine")
    entry = manifest["kernels"][0]
    record = next(r for r in manifest["plans"] if r["op"] == "gate_combine")
    say(f"plugin PTX: {entry['entry']} .version {entry['ptx_version']}, {len(entry['params'])} params kept, "
        f"removed {[p.split()[-1] for p in entry['removed_params']]}, shared {entry['shared_bytes']} B")
    torch.zeros(1, device="cuda")  # makes the primary context current (the first run got CUDA_ERROR_INVALID_CONTEXT)
    name, load, function, launch = cuda_driver()
    module = load((out / "aot" / entry["ptx"]["file"]).read_bytes() + b"\0")
    fn = function(module, entry["entry"])
    results = {"driver_api": name, "ptx_version": entry["ptx_version"], "params": entry["params"],
               "removed_params": entry["removed_params"], "cases": []}
    for tokens, dim in ((record["inputs"]["num_tokens"], record["inputs"]["dim"]), (3 * 37, 768), (1, 5)):
        branches = torch.randn(1, tokens, dim, 3, device="cuda", dtype=torch.bfloat16)
        logits = (torch.randn(1, tokens, 3, device="cuda") * 2).to(torch.bfloat16)
        out_t = torch.full((1, tokens, dim), float("nan"), device="cuda", dtype=torch.bfloat16)
        step = gate_combine.plan(tokens, dim, torch.bfloat16).launches[0].plugin_order()
        tensors = {"branches": branches, "logits": logits, "out": out_t}
        values = [tensors[a.buffer].data_ptr() if a.is_pointer else a.value for a in step.args]
        kinds = ["ptr" if a.is_pointer else "i32" for a in step.args]
        launch(fn, step.grid, step.block, entry["shared_bytes"], values, kinds)
        torch.cuda.synchronize()
        err = rel_error(out_t, reference.gate_combine(branches.double(), logits.double()))
        say(f"plugin PTX launch via {name}: gate_combine T={tokens} D={dim} grid {step.grid} block {step.block} "
            f"{len(values)} args -> rel err {err:.2e} {'PASS' if err < 2e-2 else 'FAIL'}")
        results["cases"].append({"tokens": tokens, "dim": dim, "rel_error": err})
    return results


def moe_inputs(tokens: int, dtype: torch.dtype = torch.bfloat16) -> tuple:
    """The base config's MoE sizes: D 768, H 2048, E 8."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, 768, device="cuda", generator=gen).to(dtype)
    logits = torch.randn(tokens, 8, device="cuda", generator=gen).to(dtype)
    mask = torch.rand(tokens, device="cuda", generator=gen) > 0.1
    w1 = (torch.randn(8, 4096, 768, device="cuda", generator=gen) * 768 ** -0.5).to(dtype)
    w2 = (torch.randn(8, 768, 2048, device="cuda", generator=gen) * 2048 ** -0.5).to(dtype)
    return x, logits, mask, w1, w2


def compile_case(case: str, old_launcher: str | None) -> None:
    """One torch.compile case (run in a child process); prints its result line."""
    torch._dynamo.config.cache_size_limit = 64
    if case.startswith("old"):
        import importlib.util

        spec = importlib.util.spec_from_file_location("old_moe_ffn", old_launcher)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        import mahia.kernels.triton.moe_ffn as current

        current.moe_ffn = old.moe_ffn  # the op (mahia.kernels.ops) calls this module attribute
    from mahia.kernels import moe_ffn

    if case.endswith("op"):
        args = moe_inputs(4136)
        fn = lambda *a: moe_ffn(*a, 2, 0.0)  # noqa: E731
        with torch.no_grad():
            eager = fn(*args)
            start = time.perf_counter()
            compiled = torch.compile(fn, fullgraph=True)(*args)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        say(f"compile {case}: moe_ffn T=4136 D=768 H=2048 E=8 k=2 bf16 compiled in {seconds:.1f} s, "
            f"rel err vs eager {rel_error(compiled, eager):.2e}")
        return
    from mahia.model import INPUT_NAMES, build_model, get_config, random_inputs

    dtype = torch.float32 if case.endswith("fp32") else torch.bfloat16
    config = get_config("base")
    model = build_model(config, seed=0).eval().cuda().to(dtype)
    inputs = random_inputs(config, 8, 512, torch.Generator().manual_seed(0))
    inputs = {k: (v.cuda().to(dtype) if v.is_floating_point() else v.cuda()) for k, v in inputs.items()}
    with torch.no_grad():
        eager = model(**inputs)
        start = time.perf_counter()
        compiled_model = torch.compile(model)
        compiled = compiled_model(**inputs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        times = {}
        for name, fn in (("eager", lambda: model(**inputs)), ("compiled", lambda: compiled_model(**inputs))):
            for _ in range(3):
                fn()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(10):
                fn()
            end.record()
            torch.cuda.synchronize()
            times[name] = begin.elapsed_time(end) / 10
    say(f"compile {case}: base model 8 x 512 {str(dtype).removeprefix('torch.')} ({len(INPUT_NAMES)} inputs) "
        f"compiled in {seconds:.1f} s, "
        f"logits rel err vs eager {rel_error(compiled.float(), eager.float()):.2e}; "
        f"eager {times['eager']:.2f} ms, compiled {times['compiled']:.2f} ms per forward")


def run_child(case: str, out: Path, old_launcher: str | None, timeout: float) -> dict:
    """Run one compile case in a child process; return its outcome."""
    # No compile caches: the traced graph of the op is the same call whatever launcher implements it.
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    debug_dir = out / f"compile-{case}"
    if case.endswith("op"):  # Inductor's generated code of the MoE op (the model's would be large)
        env.update(TORCH_COMPILE_DEBUG="1", TORCH_COMPILE_DEBUG_DIR=str(debug_dir))
    if case.startswith("old"):
        env["CUDA_LAUNCH_BLOCKING"] = "1"
    cmd = [sys.executable, __file__, "--case", case, "--out", str(out)] + (
        ["--old-launcher", old_launcher] if old_launcher else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    lines = [line for line in stdout.splitlines() if line.startswith("compile ")]
    errors = [line for line in stderr.splitlines() if "Error" in line or "error" in line][-6:]
    for line in lines:
        say(line)
    if code != 0:
        say(f"compile {case}: exit {code} after {time.perf_counter() - start:.0f} s; last errors:")
        for line in errors:
            say(f"    {line[:300]}")
    (out / f"compile-{case}.log").write_text(stdout + "\n--- stderr ---\n" + stderr[-200000:])
    for index, code in enumerate(sorted(debug_dir.glob("**/output_code.py"))):
        shutil.copy(code, out / f"output_code-{case}-{index}.py")
    shutil.rmtree(debug_dir, ignore_errors=True)
    return {"case": case, "exit": code, "lines": lines, "errors": errors}


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--old-launcher", default=None, help="source file of the launcher before the plans")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    parser.add_argument("--sections", default="conv,ptx,compile,check", help="which sections to run")
    parser.add_argument("--cases", default="old-op,new-op,new-model", help="which compile cases to run")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        compile_case(args.case, args.old_launcher)
        return
    deadline = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    say(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {__import__('triton').__version__}, CUDA {torch.version.cuda}")
    sections = args.sections.split(",")
    steps = [("long_conv", conv_crossover), ("plugin_ptx", lambda: plugin_ptx(args.out))]
    for name, fn in (step for step, key in zip(steps, ("conv", "ptx")) if key in sections):
        try:
            RESULTS[name] = fn()
        except Exception as exc:  # report and go on: each section stands alone
            say(f"{name} FAILED: {type(exc).__name__}: {exc}")
            RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
        (args.out / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    cases = [c for c in args.cases.split(",")
             if "compile" in sections and (args.old_launcher or not c.startswith("old"))]
    RESULTS["compile"] = []
    for case in cases:
        left = deadline - time.perf_counter()
        if left < 60:
            say(f"compile {case}: skipped, {left:.0f} s of the budget left")
            continue
        RESULTS["compile"].append(run_child(case, args.out, args.old_launcher, min(240, left - 30)))
        (args.out / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    left = deadline - time.perf_counter()
    if "check" in sections and left > 30:
        check_out = args.out / "check"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--check", "--out", str(check_out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left - 10,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
            stdout = proc.stdout
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            say(f"check: stopped at the budget after {len(stdout.splitlines())} lines")
        lines = stdout.splitlines()
        passed = sum(line.startswith("PASS") for line in lines)
        failed = [line for line in lines if line.startswith("FAIL")]
        say(f"check: {passed} passed, {len(failed)} failed (of the cases run)")
        for line in failed + [line for line in lines if line.startswith("check:")]:
            say(f"    {line}")
        RESULTS["check"] = {"passed": passed, "failed": failed}
    elif "check" in sections:
        say(f"check: skipped, {left:.0f} s of the budget left")
    (args.out / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
