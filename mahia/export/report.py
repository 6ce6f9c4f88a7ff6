"""report.md: what was built, the parity table per output and shape, timings and the re-run commands."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from mahia.artifact import Manifest
from mahia.export.flavours import get_flavour
from mahia.export.formats import in_registry_order
from mahia.export.parity import ParityResult

# The manifest's ONNX section: these keys, then the flavour's lowering choices (op -> lowering).
ONNX_KEYS = ("file", "opset", "flavour", "optimizer")


def polygraphy_command(atol: float, rtol: float, onnx_file: str, runner: str = "--onnxrt") -> str:
    """The `polygraphy run` command that re-checks the ONNX graph against the saved eager outputs."""
    return (f"polygraphy run {onnx_file} {runner} --load-inputs inputs.json --load-outputs eager_outputs.json "
            f"--atol {atol!r} --rtol {rtol!r}")


def task_lines(task: Mapping[str, Any]) -> list[str]:
    """The task-check section: eager vs deployed accuracy on the test split, against the budget."""
    if "skipped" in task:
        return [f"Not run: {task['skipped']}."]
    budget = task["budget"]
    return [f"**{'PASSED' if task['passed'] else 'FAILED'}** on {task['rows']} test-split reviews (texts cut to "
            f"{task['text_tokens']} tokens, {task['backend']}); budget: accuracy drop <= "
            f"{budget['max_accuracy_drop_pt']} points, argmax agreement >= {budget['min_agreement']}.",
            "", "| eager accuracy | deployed accuracy | drop (points) | argmax agreement |", "|---|---|---|---|",
            f"| {task['eager_accuracy']:.4f} | {task['deployed_accuracy']:.4f} | {task['accuracy_drop_pt']:.2f} | "
            f"{task['argmax_agreement']:.4f} |"]


def tensorrt_lines(manifest: Manifest, atol: float, rtol: float) -> list[str]:
    """The TensorRT section: the plugin graph, what each plugin receives, TensorRT-RTX's parse and build, the task
    check of the plugin graph and the TensorRT engine (or the commands that build and compare it)."""
    from mahia.export.engines import profile_shapes, tensorrt_commands

    trt = manifest.tensorrt
    graph = trt["graph"]
    chains = "; ".join(f"{op}: {choice}" for op, choice in graph.items() if op not in ONNX_KEYS)
    lines = [f"- Graph: `{graph['file']}` (opset {graph['opset']}, TensorRT plugin nodes in domain `mahia`, "
             f"attributes plugin_namespace=\"mahia\", plugin_version=\"1\", aot=1): {chains}"]
    quantization = trt.get("quantization")
    if quantization:
        fp8 = quantization.get("fp8_experts")
        lines.append(f"- Quantization: {quantization['source']}: Q/DQ of {quantization['quantized_nodes']} "
                     f"MatMul/Gemm nodes; {quantization['moe_expert_nodes_inside_plugins']} per-expert MatMuls of the "
                     "portable graph run inside the MoE plugins" + (f"; FP8 expert plugins: {fp8}" if fp8 else ""))
    lines += ["", "What each plugin receives (dtype per input; `initializer`: a weight in the graph):", "",
              "| plugin | inputs |", "|---|---|"]
    lines += [f"| {plugin} | {', '.join(f'{name}: {kind}' for name, kind in inputs.items())} |"
              for plugin, inputs in trt.get("plugin_inputs", {}).items()]
    rtx = trt.get("rtx")
    if rtx:
        engine = (f"; engine `{rtx['engine']}` for {', '.join(rtx['compute_capabilities'])}: "
                  f"{rtx['engine_status']}" if rtx.get("engine") else "")
        lines += ["", f"- TensorRT-RTX {rtx['tensorrt_rtx']} (parser-coverage check, CPU build for "
                      f"{', '.join(rtx['compute_capabilities'])}): **{'PASSED' if rtx['ok'] else 'FAILED'}**: "
                      f"{rtx['summary']}{engine}"]
        lines += [f"  - {failure}" for failure in rtx["failures"]]
    task = trt.get("task")
    if task:
        lines += ["", "Task check of the plugin graph (ONNX Runtime, plugin nodes run by their launch references):",
                  ""] + task_lines(task)
    engine = trt["engine"]
    lines += ["", f"- TensorRT engine `{engine['file']}`: {engine['status']}"]
    if engine["status"] != "built":
        shapes = profile_shapes(manifest.model.config, _profile(manifest))
        build, compare = tensorrt_commands(graph["file"], engine["file"], engine["file"].replace(".engine",
                                                                                                ".timing.cache"),
                                           shapes, atol, rtol)
        lines += ["", "To build it on a machine with TensorRT >= 10.9, a GPU and mahia installed, from this directory:",
                  "", *("    " + line for line in build.splitlines()), "",
                  "and to compare it with the eager outputs this export saved (an AOT-plugin engine runs without "
                  "Python plugins):", "", "    " + compare]
    return lines


def _profile(manifest: Manifest) -> object:
    from mahia.export.config import ShapeProfile

    return ShapeProfile(manifest.batch, manifest.seq)


def render(manifest: Manifest, result: ParityResult, stage_records: Sequence, graph_files: Sequence[str]) -> str:
    """The report as Markdown."""
    model, precision, tol = manifest.model, manifest.precision, result.tolerances
    batch, seq = manifest.batch, manifest.seq
    lines = [
        f"# MAHIA export: {model.config.name} / {precision.name}",
        "",
        f"**Parity: {'PASSED' if result.passed else 'FAILED'}** against the eager PyTorch fp32 model.",
        "",
        "## What was built",
        "",
        f"- Model: {model.label} (trained: {'yes' if model.trained else 'no'}); source: {model.source}; "
        f"weights sha256 `{model.weights_sha256[:16]}...`",
        f"- Precision: {precision.name}: {precision.summary}",
        f"- Formats: {', '.join(manifest.formats)}; files: {', '.join(graph_files)}",
        f"- Dynamic shapes: batch {batch.min}..{batch.max} (opt {batch.opt}), seq {seq.min}..{seq.max} (opt {seq.opt})",
    ]
    onnx_info = manifest.onnx
    if onnx_info:
        flavour = get_flavour(onnx_info["flavour"])
        lowering = "".join(f"; {op} as `{choice}`" for op, choice in onnx_info.items() if op not in ONNX_KEYS)
        lines.append(f"- ONNX: `{onnx_info['file']}`, opset {onnx_info['opset']}, {flavour.name} flavour ("
                     f"{flavour.description}{lowering}), optimiser: {onnx_info['optimizer']}")
    if precision.notes.get("fp32_ops"):
        lines.append(f"- Ops kept in fp32 (no fp16 CPU kernel in ONNX Runtime, or accuracy): "
                     f"{', '.join(precision.notes['fp32_ops'])} (converter: {precision.notes['converter']})")
    lines += [
        "",
        "## Parity",
        "",
        f"Budget: per element |out - ref| <= atol={tol.atol!r} or relative error <= rtol={tol.rtol!r} "
        f"(Polygraphy Comparator), and ||out - ref|| / ||ref|| <= {tol.max_rel_error!r}. Inputs are real "
        "test-split reviews.",
        "",
        "| backend | batch x seq | output | max abs err | rel L2 err | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(f"| {r.backend} | {r.batch} x {r.seq} | {r.output} | {r.max_abs_error:.3e} | "
                     f"{r.rel_l2_error:.3e} | {'pass' if r.passed else 'FAIL'} |")
    lines += ["", "## Task check", ""] + task_lines(manifest.task)
    if manifest.tensorrt is not None:
        lines += ["", "## TensorRT", ""] + tensorrt_lines(manifest, tol.atol, tol.rtol)
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s.name} | {s.seconds:.2f} |" for s in stage_records if s.name != "package"]
    lines += ["", "## Re-run", "", "The export:", "", "    " + shlex.join(manifest.command), ""]
    for fmt in in_registry_order(manifest.formats):
        runner = get_flavour(fmt.flavour).polygraphy_runner if fmt.flavour else None
        if runner:
            lines += ["The ONNX parity check with Polygraphy alone, from this directory:", "",
                      "    " + polygraphy_command(tol.atol, tol.rtol, manifest.graphs[fmt.name], runner), ""]
    backend = in_registry_order(manifest.formats)[0].backend
    lines += ["Loading for deployment (verifies every file's sha256 against manifest.json):", "",
              "    import mahia.runtime",
              f"    deployment = mahia.runtime.load('.', backend={backend!r})",
              "    logits = deployment.run(inputs)  # input_ids, attention_mask, numeric, categorical", ""]
    return "\n".join(lines)
