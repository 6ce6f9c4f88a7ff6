"""The ahead-of-time kernel build: PTX and cubin for sm_80/89/90 without a GPU, and its manifest.

The build runs in a subprocess with TRITON_INTERPRET removed from its environment, because the
interpreter tests of this suite set it in theirs (and triton.jit reads it at import time). CI builds
one variant of every kernel for sm_90 in bfloat16 and one kernel for sm_80 and sm_89, to stay
within the suite's time (the full build, every variant, dtype and arch, is
`python -m mahia.kernels.aot --out DIR`, about a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
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
    """Files exist with the recorded hashes, the PTX targets the arch and defines the entry point."""
    for ext in ("ptx", "cubin"):
        data = (out_dir / entry[ext]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry[ext]["sha256"]
    ptx = (out_dir / entry["ptx"]["file"]).read_text()
    assert f".target {entry['arch']}" in ptx
    assert f".entry {entry['entry']}(" in ptx
    assert (out_dir / entry["cubin"]["file"]).read_bytes()[:4] == b"\x7fELF"
    assert entry["block"] == [32 * entry["num_warps"], 1, 1] and entry["grid"].startswith("(")


def test_aot_builds_one_variant_of_every_kernel_for_sm90(tmp_path):
    manifest = run_build(tmp_path, "--arch", "90", "--dtype", "bf16", "--one-per-kernel")
    names = {e["kernel"] for e in manifest["kernels"]}
    assert names == {"gate_combine_kernel", "long_conv_kernel", "ssd_chunk_cb_kernel", "ssd_chunk_states_kernel",
                     "ssd_chunk_output_kernel", "moe_route_kernel", "moe_topk_kernel", "moe_plan_kernel",
                     "moe_scatter_kernel", "moe_up_kernel", "moe_down_kernel", "moe_combine_kernel"}
    from mahia.kernels.triton import gate_combine, long_conv, moe_ffn, ssd_scan
    modules = {m.__name__: m for m in (gate_combine, long_conv, moe_ffn, ssd_scan)}
    for entry in manifest["kernels"]:
        check_entry(tmp_path, entry)
        kernel = getattr(modules[entry["module"]], entry["kernel"])
        params = list(inspect.signature(kernel.fn).parameters)
        runtime = [p["name"] for p in entry["signature"]]
        assert runtime == [p for p in params if p not in entry["constexprs"]], entry["kernel"]
        assert set(entry["constexprs"]) | set(runtime) == set(params)


def test_aot_builds_for_sm80_and_sm89(tmp_path):
    manifest = run_build(tmp_path, "--arch", "80,89", "--dtype", "fp16", "--only", "gate_combine")
    assert {e["arch"] for e in manifest["kernels"]} == {"sm_80", "sm_89"}
    for entry in manifest["kernels"]:
        check_entry(tmp_path, entry)
