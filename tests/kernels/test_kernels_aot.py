"""The ahead-of-time kernel build: PTX and cubin for sm_80/89/90 without a GPU, and its manifest.

The build runs in a subprocess with TRITON_INTERPRET removed from its environment, because the
interpreter tests of this suite set it in theirs (and triton.jit reads it at import time). CI builds
one variant of every kernel for sm_90 in bfloat16 (its manifest still records every launch of
every representative plan) and one kernel for sm_80 and sm_89, to stay within the suite's time (the full build, every
variant, dtype and arch, is `python -m mahia.kernels.aot --out DIR`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def run_build(out_dir, *args: str) -> dict:
    """Run the AOT CLI into out_dir and return its manifest."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "mahia.kernels.aot", "--out", str(out_dir), *args],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out_dir / "manifest.json").read_text())


def check_entry(out_dir, entry: dict) -> None:
    """Files exist with the recorded hashes; the PTX targets the arch, has the pinned .version, and its
    entry declares exactly the real parameters (Triton's hidden scratch pointers removed)."""
    for ext in ("ptx", "cubin"):
        data = (out_dir / entry[ext]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry[ext]["sha256"]
    ptx = (out_dir / entry["ptx"]["file"]).read_text()
    assert f".target {entry['arch']}" in ptx
    assert re.search(r"^\.version 8\.7$", ptx, re.M) and entry["ptx_version"] == "8.7"
    declared = re.search(rf"\.entry {entry['entry']}\((.*?)\)", ptx, re.S).group(1)
    assert declared.count(".param") == len(entry["signature"]) == len(entry["params"])
    assert entry["removed_params"], "Triton's hidden scratch parameters were expected (and removed)"
    for removed in entry["removed_params"]:
        assert removed.split()[-1] not in ptx
    assert (out_dir / entry["cubin"]["file"]).read_bytes()[:4] == b"\x7fELF"
    assert entry["block"] == [32 * entry["num_warps"], 1, 1]


@pytest.fixture(scope="module")
def sm90_build(tmp_path_factory) -> tuple:
    """One binary of every kernel for sm_90 in bfloat16: (directory, manifest)."""
    out = tmp_path_factory.mktemp("aot-sm90")
    return out, run_build(out, "--arch", "90", "--dtype", "bf16", "--one-per-kernel")


def test_aot_builds_one_variant_of_every_kernel_for_sm90(sm90_build):
    tmp_path, manifest = sm90_build
    names = {e["kernel"] for e in manifest["kernels"]}
    assert names == {"gate_combine_kernel_entry", "long_conv_kernel_entry", "ssd_chunk_cb_kernel_entry",
                     "ssd_chunk_states_kernel_entry", "ssd_chunk_output_kernel_entry", "moe_route_kernel_entry",
                     "moe_topk_kernel_entry", "moe_plan_kernel_entry", "moe_scatter_kernel_entry",
                     "moe_up_kernel_entry", "moe_up_kernel_scaled_entry", "moe_down_kernel_entry",
                     "moe_down_kernel_scaled_entry", "moe_combine_kernel_entry"}
    from mahia.kernels.triton import gate_combine, long_conv, moe_ffn, ssd_scan
    modules = {m.__name__: m for m in (gate_combine, long_conv, moe_ffn, ssd_scan)}
    for entry in manifest["kernels"]:
        check_entry(tmp_path, entry)
        kernel = getattr(modules[entry["module"]], entry["kernel"])
        params = list(inspect.signature(kernel.fn).parameters)
        runtime = [p["name"] for p in entry["signature"]]
        assert runtime == [p for p in params if p not in entry["constexprs"]], entry["kernel"]
        assert set(entry["constexprs"]) | set(runtime) == set(params)


def test_manifest_and_launchers_agree_because_both_come_from_plan(sm90_build):
    """Every launch the manifest records is what plan() gives again at the recorded inputs (the
    launchers execute the same plan() results: tests/kernels/test_kernels_plan.py)."""
    from mahia.kernels.aot import replay

    _, manifest = sm90_build
    assert {r["op"] for r in manifest["plans"]} == {"gate_combine", "long_conv", "ssd_scan", "moe_ffn"}
    binaries = {e["binary"]: e for e in manifest["kernels"]}
    three_kernel = 0
    for record in manifest["plans"]:
        launches = [s.plugin_order() for s in replay(record).launches]
        assert [(s.kernel, list(s.grid), list(s.block), s.scalars) for s in launches] == [
            (r["kernel"], r["grid"], r["block"], r["scalars"]) for r in record["launches"]]
        for step, recorded in zip(launches, record["launches"]):
            if recorded["binary"] is None:  # a --one-per-kernel build compiles one binary per kernel
                continue
            binary = binaries[recorded["binary"]]
            assert binary["constexprs"] == {k: str(v) for k, v in step.constexprs}
            assert (binary["num_warps"], binary["num_stages"]) == (step.num_warps, step.num_stages)
            assert [p["name"] for p in binary["signature"]] == [a.name for a in step.args]
        three_kernel += any(r["kernel"] == "moe_topk_kernel_entry" for r in record["launches"])
    assert three_kernel, "the representative sizes must include the three-kernel routing"
def test_aot_builds_for_sm80_and_sm89(tmp_path):
    manifest = run_build(tmp_path, "--arch", "80,89", "--dtype", "fp16", "--only", "gate_combine")
    assert {e["arch"] for e in manifest["kernels"]} == {"sm_80", "sm_89"}
    for entry in manifest["kernels"]:
        check_entry(tmp_path, entry)
