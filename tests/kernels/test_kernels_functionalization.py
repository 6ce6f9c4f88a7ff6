"""What torch.compile sees of the kernels, checked on the CPU: torch's mutation analysis of user-defined
Triton kernels and Inductor's reinplacing, on the launch plans.

Issue 14: `torch.compile` of the model crashed at 8 x 512 (4,136 tokens, three-kernel routing). On the
H200 (benchmarks/kernel_plans_gpu.py, torch 2.11) the old launcher's compiled MoE op failed in an
Inductor copy kernel: every kernel argument torch's analysis reports written is cloned by
functionalization with clone_preserve_strides, which for a view at a storage offset copies the base
storage from element 0; the launcher's `expert_out` was a view at offset 19,136,512 of one bf16
scratch buffer shared with `act`, and the generated copy (`triton_poi_fused_20`) read 25,489,408
elements from a 6,352,896-element buffer (illegal memory access). The plans give every buffer its own
allocation and one writer, and pass no aliased or dummy pointers. These tests check, without a GPU,
that (1) the analysis finds exactly the writes each plan declares (it used to report `logits_ptr` and
`capacity_factor_ptr`, through helper calls, as written) and (2) after Inductor's reinplacing no
kernel argument is cloned and nothing is scattered back (the old launcher left clones and
slice_scatters for every workspace view: 6 and 11 scatters at 37 and 1,061 tokens, measured with
this script on the launcher before the plans).

Runs in a subprocess without TRITON_INTERPRET (the analysis compiles the kernels to TTIR), with
Triton told to target sm_90: `triton.runtime.driver` has no active driver on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r'''
import json
import torch, triton
from triton.backends.compiler import GPUTarget


class Sm90:
    """Only what TTIR generation asks of the driver: the target."""
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(Sm90())
from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors
from torch._subclasses.fake_tensor import FakeTensorMode
from mahia.kernels.aot import constexpr_values
from mahia.kernels.triton import gate_combine, long_conv, moe_ffn, ssd_scan

report = {"analysis": [], "graphs": {}}
plans = [gate_combine.plan(37, 48, torch.bfloat16), long_conv.plan(3, 4, 70, False, torch.bfloat16),
         long_conv.plan(2, 3, 528, False, torch.bfloat16),
         ssd_scan.plan(1, 37, 2, 16, 16, 16, torch.bfloat16, a_dtype=torch.float32),
         moe_ffn.plan(37, 16, 16, 4, 2, 1.25, torch.bfloat16),
         moe_ffn.plan(1061, 16, 16, 4, 2, 0.0, torch.bfloat16),
         moe_ffn.plan(37, 16, 16, 4, 2, 0.0, torch.bfloat16, weight_dtype=torch.float8_e4m3fn)]
with FakeTensorMode():
    for plan in plans:
        tensors = {b.name: torch.empty(b.numel, dtype=b.dtype, device="meta") for b in plan.buffers}
        for step in plan.launches:
            kwargs = {a.name: (tensors[a.buffer] if a.buffer else None) if a.is_pointer else a.value
                      for a in step.args}
            access = identify_accessed_tensors(step.function(), {**kwargs, **constexpr_values(step)}, {})
            names = {a.name: a.buffer for a in step.args if a.is_pointer}
            report["analysis"].append({"kernel": step.kernel, "declared": sorted(step.writes),
                                       "found": sorted(names[d.name] for d in access.read_writes.writes)})

# The MoE op as torch.compile traces it (functionalized), then Inductor's reinplacing pass.
from torch._inductor.fx_passes.reinplace import reinplace_inplaceable_ops
from torch._inductor.fx_utils import FakeTensorUpdater
from torch._inductor.virtualized import V

for tokens in (37, 1061):
    cfg = {"BLOCK_M": 128, "up": (16, 16, 4, 1), "down": (16, 16, 4, 1)}

    class Op(torch.nn.Module):
        def forward(self, x, logits, mask, w1, w2):
            return moe_ffn.moe_ffn(x, logits, mask, w1, w2, 2, 0.0, config=cfg)

    with FakeTensorMode():
        args = (torch.empty(tokens, 16, device="meta", dtype=torch.bfloat16), torch.empty(tokens, 4, device="meta"),
                torch.empty(tokens, device="meta", dtype=torch.bool),
                torch.empty(4, 32, 16, device="meta", dtype=torch.bfloat16),
                torch.empty(4, 16, 16, device="meta", dtype=torch.bfloat16))
    gm = torch.export.export(Op(), args, strict=False).run_decompositions({}).graph_module
    fake_mode = next(n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder").fake_mode
    with V.set_fake_mode(fake_mode):
        reinplace_inplaceable_ops(FakeTensorUpdater(gm), gm.graph)
    kernels = [n for n in gm.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    report["graphs"][tokens] = {
        "kernels": len(kernels),
        "clones": [list(n.kwargs.get("tensors_to_clone", [])) for n in kernels],
        "scatters": sum("scatter" in str(n.target) for n in gm.graph.nodes)}
print("REPORT" + json.dumps(report))
'''


def run_report() -> dict:
    """Run SCRIPT in a fresh interpreter without TRITON_INTERPRET; return its report."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT"))


@pytest.fixture(scope="module")
def report() -> dict:
    return run_report()


def test_torch_mutation_analysis_finds_exactly_the_declared_writes(report):
    wrong = [r for r in report["analysis"] if r["declared"] != r["found"]]
    assert not wrong, f"torch's analysis disagrees with the plans: {wrong}"
    assert {r["kernel"] for r in report["analysis"]} >= {"moe_route_kernel", "moe_plan_kernel", "moe_up_kernel"}


def test_inductor_reinplacing_leaves_no_clone_and_no_scatter(report):
    for tokens, graph in report["graphs"].items():
        assert graph["kernels"] == (4 if tokens == "37" else 6), graph
        assert not any(graph["clones"]), f"{tokens} tokens: cloned kernel arguments {graph['clones']}"
        assert graph["scatters"] == 0, f"{tokens} tokens: {graph['scatters']} scatters back into a shared base"
