"""mahia-bench on a CPU: shapes, the analytic FLOP count (against torch's FlopCounterMode), latency statistics,
the command on `tiny` (eager, and an artifact's ONNX graph), its outputs and its errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from mahia.bench.cli import main, parse_shapes
from mahia.bench.flops import forward_flops
from mahia.bench.measure import MIN_COUNTER_UPDATES, Timing, counter_update_interval, time_calls, window_energy
from mahia.model import build_model, get_config, random_inputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_shapes_are_parsed_and_checked() -> None:
    assert parse_shapes("1x128, 8X512,1x128", 512) == ((1, 128), (8, 512))
    for text, message in (("8*512", "expected BATCHxSEQ"), ("0x5", "must be >= 1"), ("1x600", "above the model's "
                          "max_seq_len 512"), (" , ", "--shapes is empty")):
        with pytest.raises(ValueError, match=message):
            parse_shapes(text, 512)


@pytest.mark.parametrize("config_name, batch, seq", [("tiny", 3, 37), ("tiny", 1, 1), ("small", 1, 20)])
def test_dense_flops_are_what_torch_counts_outside_the_custom_ops(config_name: str, batch: int, seq: int,
                                                                 generator: torch.Generator) -> None:
    model = build_model(get_config(config_name)).eval()
    inputs = random_inputs(model.config, batch, seq, generator, full=True)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs)  # the mahia:: ops are single ops FlopCounterMode has no formula for: it counts the rest
    assert forward_flops(model.config, batch, seq)["dense"] == counter.get_total_flops()


def test_moe_flops_count_the_active_experts_only() -> None:
    config = get_config("small")
    one, two = (forward_flops(config.replace(top_k=k), 2, 64)["moe"] for k in (1, 2))
    positions = 2 * (64 + config.num_tabular_tokens)
    assert two == 2 * one == config.n_layers * positions * 2 * 2 * 3 * config.d_model * config.expert_hidden


def test_percentiles_are_nearest_rank() -> None:
    timing = Timing(tuple(float(i) for i in range(1, 101)), 5050.0, None, "unavailable: test")
    assert timing.p50 == 50.5 and timing.p99 == 99.0 and timing.joules_per_call is None
    assert Timing((3.0, 1.0, 2.0), 6.0, 0.6, "nvml").p99 == 3.0
    assert Timing((1.0, 1.0), 2.0, 0.5, "nvml").joules_per_call == 0.25


def test_the_energy_counters_step_is_measured_between_two_changes() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    counter = lambda: int(now[0] / 0.025) * 7  # noqa: E731 -- a counter that steps every 25 ms
    assert counter_update_interval(counter, clock) == pytest.approx(0.025, abs=0.0021)
    assert counter_update_interval(lambda: 5, clock, limit=0.2) is None  # a counter that never moves
    # one early update (2 ms after the one before) among 25 ms steps does not set the step: the median of three does
    updates = iter([0.0, 0.025, 0.027, 0.052, 0.077, 0.102])
    due = [next(updates)]
    steps = [0]

    def irregular() -> int:
        while now[0] >= due[0]:
            steps[0] += 1
            due[0] = next(updates, float("inf"))
        return steps[0]

    now[0] = 0.0
    assert counter_update_interval(irregular, clock) == pytest.approx(0.025, abs=0.0021)


def test_energy_needs_a_window_of_enough_counter_steps() -> None:
    step = 0.02
    assert window_energy(1_000, 3_500, MIN_COUNTER_UPDATES * step, step) == (2.5, "nvml")
    joules, why = window_energy(1_000, 1_000, 0.012, step)
    assert joules is None and why.startswith("unavailable: the 12 ms window spans under") and "20 ms" in why


def test_the_timed_window_covers_the_energy_counters_steps() -> None:
    meter = SimpleNamespace(min_window=0.05, millijoules=lambda: None, reason="unavailable: test")
    timing = time_calls(lambda: time.sleep(0.001), torch.device("cpu"), 0.0, meter, 0.001)
    assert len(timing.seconds) >= 50 and timing.wall_seconds >= 0.05
    # past the 1000-call cap where a call is short (here estimated at 10 us)
    assert len(time_calls(lambda: None, torch.device("cpu"), 0.0, meter, 1e-5).seconds) == 5000


def test_gpu_kernels_are_counted_once_by_the_range_span_that_holds_them() -> None:
    from torch.autograd import DeviceType

    from mahia.bench.components import RANGE_PREFIX, kernel_times

    def event(name: str, start: float, end: float, annotation: bool = False,
              device: DeviceType = DeviceType.CUDA) -> SimpleNamespace:
        span = SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)
        return SimpleNamespace(name=name, time_range=span, is_user_annotation=annotation, device_type=device)

    events = [event(RANGE_PREFIX + "hyena", 10, 40, annotation=True), event(RANGE_PREFIX + "moe", 50, 90, True),
              event(RANGE_PREFIX + "moe", 0, 100, annotation=True, device=DeviceType.CPU),  # host side: not a span
              event("long_conv_kernel", 10, 25), event("elementwise", 30, 40), event("gate_combine_kernel", 42, 45),
              event("moe_up_kernel", 50, 80), event("moe_down_kernel", 81, 90), event("norm", 95, 99)]
    totals: dict[str, float] = {}
    for name, microseconds in kernel_times(events):
        totals[name] = totals.get(name, 0.0) + microseconds
    assert totals == {"hyena": 25.0, "meta-attention gate": 3.0, "moe": 39.0, "other": 4.0}
    host_only = [e for e in events if not (e.is_user_annotation and e.device_type == DeviceType.CUDA)]
    with pytest.raises(RuntimeError, match="no GPU-side copies"):
        list(kernel_times(host_only))


def test_bench_runs_the_eager_model_on_a_cpu(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", "tiny", "--device", "cpu", "--variants", "eager-fp32",
                                       "--shapes", "3x37", "--window", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "bench.json").read_text())
    rows = document["results"]
    assert [(r["variant"], r["batch"], r["seq"], r["status"]) for r in rows] == [("eager fp32", 3, 37, "ok")]
    assert all(r["rel_err_vs_fp32"] == 0.0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["calls"] >= 10 for r in rows)
    assert rows[0]["tokens_per_s"] == pytest.approx(3 * 37 / (rows[0]["p50_ms"] / 1e3))
    assert rows[0]["flops"] == sum(forward_flops(get_config("tiny"), 3, 37).values())
    assert all(r["energy_j_per_inference"] is None and r["energy"].startswith("unavailable: ") for r in rows)
    assert document["energy_counter_step_ms"] is None
    # seconds: at least half the calls took the median or longer (slow calls on a busy CPU may take far more)
    assert rows[0]["calls"] // 2 * rows[0]["p50_ms"] / 1e3 <= rows[0]["window_s"] < 60
    components = document["components"]["3x37"]["components"]
    assert {"embedding", "hyena", "ssd", "fourier", "meta-attention gate", "moe", "memory", "head"} <= set(components)
    assert components["moe"] > 0 and "partial" not in document
    assert (tmp_path / "bench.png").read_bytes().startswith(PNG_MAGIC)
    assert "eager fp32" in result.output and "Per component" in result.output


def test_bench_runs_an_artifacts_onnx_graph(tiny_export: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tiny_export["dir"]), "--device", "cpu", "--shapes", "3x37", "--window",
                                       "0", "--no-profile", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads((tmp_path / "bench.json").read_text())["results"]}
    assert set(rows) == {"eager-fp32", "onnx-fp32"}
    assert rows["onnx-fp32"]["status"] == "ok" and rows["onnx-fp32"]["rel_err_vs_fp32"] < 1e-5


@pytest.mark.parametrize("args, message", [
    ([], "give ARTIFACT_DIR(s) or --config NAME"),
    (["--config", "tiny", "--shapes", "1x999"], "above the model's max_seq_len 160"),
    (["--config", "tiny", "--device", "cpu", "--shapes", "1x16", "--variants", "eager-fp32,warp-drive"],
     "unknown warp-drive"),
])
def test_bad_requests_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 1 and message in result.output, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a CUDA GPU")
def test_asking_for_a_gpu_without_one_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", "tiny", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--device cuda: torch sees no CUDA GPU" in result.output
