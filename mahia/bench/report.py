"""mahia-bench's outputs: the rich tables, bench.json, and the plot of latency and throughput against batch size."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from rich.table import Table

BENCH_JSON, BENCH_PLOT = "bench.json", "bench.png"


def _fmt(value: object, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def results_table(document: Mapping[str, object]) -> Table:
    """One row per (variant, shape)."""
    peak = document["peak"]
    table = Table(title=f"mahia-bench: {document['model']['label']} on {document['device']['name']} "
                        f"(MFU against the measured {peak['dtype']} matmul peak, "
                        f"{float(peak['flops_per_s']) / 1e12:.3g} TFLOP/s)")
    columns = ("variant", "shape", "p50 ms", "p99 ms", "samples/s", "tokens/s", "MFU", "peak mem GiB",
               "J/inference", "rel err vs fp32", "first call s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "shape") else "right")
    for row in document["results"]:
        shape = f"{row['batch']}x{row['seq']}"
        if row["status"] != "ok":
            table.add_row(str(row["variant"]), shape, str(row["status"]), *([""] * (len(columns) - 3)))
            continue
        energy = _fmt(row["energy_j_per_inference"], ".4f", "n/a")
        table.add_row(str(row["variant"]), shape, f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}",
                      f"{row['samples_per_s']:.1f}", f"{row['tokens_per_s']:.0f}", f"{100 * row['mfu']:.1f}%",
                      _fmt(row.get("peak_memory_gib"), ".2f"), energy, f"{row['rel_err_vs_fp32']:.2e}",
                      f"{row['first_call_s']:.1f}")
    return table


def components_table(document: Mapping[str, object]) -> Table | None:
    """Per-component time of the profiled eager variant, one column per shape."""
    profiles = {shape: p for shape, p in document["components"].items() if "components" in p}
    if not profiles:
        return None
    first = next(iter(profiles.values()))
    table = Table(title=f"Per component: {first['variant']}, {first['unit']} (share of the total)")
    table.add_column("component")
    for shape in profiles:
        table.add_column(shape, justify="right")
    for name in first["components"]:
        cells = [(p["components"][name], p["components"][name] / max(p["total_ms"], 1e-12)) for p in profiles.values()]
        table.add_row(name, *(f"{ms:.3f} ({100 * share:.0f}%)" for ms, share in cells))
    table.add_row("total", *(f"{p['total_ms']:.3f}" for p in profiles.values()))
    return table


def plot(document: Mapping[str, object]) -> bytes:
    """PNG: p50 latency and samples/s against batch size, one line per variant (each point labelled BxL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_variant: dict[str, list[Mapping[str, object]]] = {}
    for row in document["results"]:
        if row["status"] == "ok":
            by_variant.setdefault(str(row["variant"]), []).append(row)
    for name, rows in by_variant.items():
        rows = sorted(rows, key=lambda r: (r["batch"], r["seq"]))
        batches = [r["batch"] for r in rows]
        latency.plot(batches, [r["p50_ms"] for r in rows], marker="o", label=name)
        throughput.plot(batches, [r["samples_per_s"] for r in rows], marker="o", label=name)
    shapes = sorted({(r["batch"], r["seq"]) for rows in by_variant.values() for r in rows})
    for axis, label in ((latency, "p50 latency (ms)"), (throughput, "throughput (samples/s)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size (text tokens per sample: " + ", ".join(f"{b}x{s}" for b, s in shapes) + ")")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=7)
    fig.suptitle(f"mahia-bench: {document['model']['label']} on {document['device']['name']}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(document: Mapping[str, object], out: Path) -> list[Path]:
    """bench.json and bench.png in `out` (created), written atomically."""
    from mahia.artifact import write_json_atomically

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(dict(document), out / BENCH_JSON)
    png = out / BENCH_PLOT
    partial = png.with_suffix(".png.partial")
    partial.write_bytes(plot(document))
    partial.replace(png)
    return [out / BENCH_JSON, png]
