"""Calibration: real data subsets, eager range collection (incl. custom-op internals), statistics, tables."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from mahia.calibration.data import CalibrationDataConfig, CalibrationError, load_calibration_data
from mahia.calibration.onnx_names import QuantizableNode
from mahia.calibration.ranges import EagerRanges, collect_ranges
from mahia.calibration.statistics import MethodConfig, RangeStatistics, _rounding_step, mse_amax
from mahia.calibration.table import (
    CalibrationTable,
    TensorRange,
    build_table,
    read_table_json,
    read_trt_cache,
    trt_cache_scales,
    write_table_json,
    write_trt_cache,
)
from mahia.data import load_reviews
from mahia.data.tokenizer import split_words, token_id
from mahia.model import build_model, get_config

METHODS = ("max", "percentile", "entropy", "mse")


@pytest.fixture(scope="module")
def reviews_train():
    return load_reviews()["train"]


@pytest.fixture(scope="module")
def tiny_ranges(reviews_train):
    config = get_config("tiny")
    model = build_model(config, seed=0).eval()
    data = load_calibration_data(config, CalibrationDataConfig(samples=32, batch_size=16), dataset=reviews_train)
    return model, data, collect_ranges(model, data, METHODS, num_bins=512)


def test_calibration_data_is_a_deterministic_real_subset(reviews_train) -> None:
    first = load_calibration_data(get_config("tiny"), CalibrationDataConfig(samples=40, batch_size=16),
                                  dataset=reviews_train)
    again = load_calibration_data(get_config("tiny"), CalibrationDataConfig(samples=40, batch_size=16),
                                  dataset=reviews_train)
    other = load_calibration_data(get_config("tiny"), CalibrationDataConfig(samples=40, batch_size=16, seed=1),
                                  dataset=reviews_train)
    assert first.samples == 40 and sum(b["input_ids"].shape[0] for b in first.batches) == 40
    assert first.content_hash == again.content_hash != other.content_hash
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first.batches, again.batches))
    # Real text: [CLS] then the hashed words of a review, not random ids.
    ids = first.batches[-1]["input_ids"][0]
    words = tuple(ids[1:][ids[1:] > 0].tolist())
    vocab = get_config("tiny").vocab_size
    assert words in {tuple(token_id(w, vocab) for w in split_words(t)[: len(words)]) for t in reviews_train.texts}
    with pytest.raises(CalibrationError, match="too few calibration samples: 4"):
        load_calibration_data(get_config("tiny"), CalibrationDataConfig(samples=4), dataset=reviews_train)


def test_ranges_cover_module_inputs_and_custom_op_internals(tiny_ranges) -> None:
    model, data, ranges = tiny_ranges
    names = set(ranges.names())
    for layer in range(model.config.n_layers):
        prefix = f"blocks.{layer}"
        assert {f"{prefix}.attention.in_proj:input", f"{prefix}.moe.router:input",
                f"{prefix}.attention.hyena/long_conv:x", f"{prefix}.attention.fourier/long_conv:x",
                f"{prefix}.attention.ssd/ssd_scan:x", f"{prefix}.attention.ssd/ssd_scan:dt",
                f"{prefix}.moe/moe_ffn:x"} <= names
        experts = [n for n in names if n.startswith(f"{prefix}.moe/moe_ffn:expert") and n.endswith(".input")]
        assert len(experts) >= 2
        # Every real token goes to top_k >= 1 experts, so the experts' inputs together are the op's input.
        union = max(ranges.amax(n, MethodConfig("max")) for n in experts)
        assert union == ranges.amax(f"{prefix}.moe/moe_ffn:x", MethodConfig("max"))
        assert (ranges.amax(f"{prefix}.moe/moe_ffn:x", MethodConfig("max"))
                == ranges.amax(f"{prefix}.moe.router:input", MethodConfig("max")))
    assert ranges.samples == 32 and ranges.data_hash == data.content_hash


def test_ranges_use_real_tokens_only(tiny_ranges) -> None:
    model, data, ranges = tiny_ranges
    seen, masks = [], []
    handles = [model.blocks[0].attention.in_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0])),
               model.embedding.register_forward_hook(lambda m, a, out: masks.append(out[1].bool()))]
    with torch.no_grad():
        for batch in data.batches:
            model(**batch)
    for handle in handles:
        handle.remove()
    assert masks[0].shape[1] == data.batches[0]["input_ids"].shape[1] + model.config.num_tabular_tokens
    real = max(float(x[mask].abs().max()) for x, mask in zip(seen, masks))
    assert ranges.amax("blocks.0.attention.in_proj:input", MethodConfig("max")) == pytest.approx(real, rel=1e-6)
    real_values = sum(int(mask.sum()) for mask in masks) * model.config.d_model
    assert ranges.statistics.counts["blocks.0.attention.in_proj:input"] == real_values
    assert real_values < sum(x.numel() for x in seen)  # the batches do have padding to drop


def test_methods_never_exceed_max_on_the_model_ranges(tiny_ranges) -> None:
    _, _, ranges = tiny_ranges
    for name in ranges.names():
        top = ranges.amax(name, MethodConfig("max", num_bins=512))
        for method in METHODS[1:]:
            assert 0.0 <= ranges.amax(name, MethodConfig(method, num_bins=512)) <= top


def test_methods_clip_heavy_tails() -> None:
    stats = RangeStatistics(METHODS, num_bins=2048)
    rng = np.random.default_rng(0)
    values = rng.standard_t(3, size=400_000).astype(np.float32)
    stats.add("t", values[:200_000])
    stats.add("t", values[200_000:])
    observed = float(np.abs(values).max())
    p9999 = stats.amax("t", MethodConfig("percentile", percentile=99.99))
    assert p9999 == pytest.approx(np.percentile(np.abs(values), 99.99), rel=0.02)
    assert stats.amax("t", MethodConfig("percentile", percentile=99.0)) < p9999 < observed
    assert stats.amax("t", MethodConfig("entropy")) < 0.5 * observed
    # MSE keeps the long tail of t(3) (its squared clipping error dominates) but drops lone outliers.
    assert 0.5 * observed < stats.amax("t", MethodConfig("mse")) <= observed
    stats.add("outliers", np.concatenate([rng.standard_normal(200_000), [12.0, -11.0]]).astype(np.float32))
    assert stats.amax("outliers", MethodConfig("mse")) < 8.0


def test_mse_amax_minimises_the_quantization_error() -> None:
    values = np.abs(np.random.default_rng(1).standard_normal(200_000))
    hist, edges = np.histogram(values, bins=2048)
    best = mse_amax(hist, edges, "int8")

    def error(amax: float) -> float:
        scale = amax / 127
        return float(((np.clip(np.round(values / scale), -127, 127) * scale - values) ** 2).mean())

    assert error(best) <= min(error(best * 0.8), error(best * 1.25), error(float(values.max())))
    fp8 = mse_amax(hist, edges, "fp8")
    assert 0 < fp8 <= values.max()


def e4m3fn_grid() -> np.ndarray:
    """Every non-negative finite float8_e4m3fn value, ascending (from the dtype itself, not a formula)."""
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double().numpy()
    return np.unique(values[np.isfinite(values) & (values >= 0)])


def test_fp8_rounding_step_is_the_spacing_of_the_e4m3fn_grid() -> None:
    grid = e4m3fn_grid()
    assert len(grid) == 127 and grid[-1] == 448.0
    lower, spacing = grid[:-1], np.diff(grid)
    for amax in (448.0, 3.7):  # scale 1, and an arbitrary scale
        scale = amax / 448.0
        for at in (lower, lower + 0.5 * spacing):  # each grid point and the middle of the gap above it
            step = _rounding_step(at * scale, np.float64(amax), "fp8")
            np.testing.assert_allclose(step, spacing * scale, rtol=1e-12)


def test_fp8_rounding_error_model_matches_fake_quantization_on_the_e4m3fn_grid() -> None:
    # mse_amax models E4M3FN rounding as step^2 / 12; fake-quantize with the dtype itself and compare, per binade.
    amax = 3.7
    scale = amax / 448.0
    values = amax * 2.0 ** np.random.default_rng(4).uniform(-16, 0, 200_000)  # subnormals to the top binade
    fake = torch.from_numpy(values / scale).to(torch.float8_e4m3fn).double().numpy() * scale
    actual = (fake - values) ** 2
    modelled = _rounding_step(values, np.float64(amax), "fp8") ** 2 / 12.0
    binade = np.floor(np.log2(np.maximum(values / scale, 2.0 ** -6)))
    ratios = [actual[binade == b].mean() / modelled[binade == b].mean() for b in np.unique(binade)]
    assert len(ratios) == 15 and all(0.9 < r < 1.1 for r in ratios), ratios


def test_int8_and_fp8_scales_are_amax_over_the_largest_code() -> None:
    statistics = RangeStatistics(("max",))
    statistics.add("a:input", np.array([0.5, -2.54, 1.0], np.float32))
    statistics.add("b:input", np.array([4.48, -1.0], np.float32))
    statistics.add("zero:input", np.zeros(3, np.float32))
    ranges = EagerRanges(statistics, samples=3, data_hash="ab" * 32)
    nodes = [QuantizableNode("mm_a", "MatMul", "a", "act_a", "w_a", ("a:input",)),
             QuantizableNode("mm_b", "MatMul", "b", "act_b", "w_b", ("b:input",)),
             QuantizableNode("mm_zero", "MatMul", "zero", "act_zero", "w_zero", ("zero:input",))]
    int8 = build_table(ranges, nodes, MethodConfig("max"))
    # Symmetric signed int8: scale = amax / 127, zero point 0 (2.54 / 127 = 0.02, 4.48 / 127 = 0.03527...).
    assert int8.tensors["act_a"].scale == pytest.approx(0.02, rel=1e-6)
    assert int8.tensors["act_b"].scale == pytest.approx(0.0352756, rel=1e-6)
    assert int8.tensors["act_zero"].scale == pytest.approx(1e-12 / 127, rel=1e-6)  # a zero scale is invalid
    assert {t.zero_point for t in int8.tensors.values()} == {0} and int8.dtype == "int8"
    assert trt_cache_scales(int8) == {name: t.scale for name, t in int8.tensors.items()}
    assert trt_cache_scales(int8)["act_a"] == pytest.approx(0.02, rel=1e-6)
    # E4M3FN: scale = amax / 448 (4.48 / 448 = 0.01).
    fp8 = build_table(ranges, nodes, MethodConfig("max", grid="fp8"))
    assert fp8.dtype == "float8e4m3fn" and fp8.tensors["act_b"].scale == pytest.approx(0.01, rel=1e-6)


def test_unknown_or_unfit_method_is_refused() -> None:
    with pytest.raises(CalibrationError, match="'entropy' is not available for fp8"):
        MethodConfig("entropy", grid="fp8")
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        RangeStatistics(("kl",))
    with pytest.raises(CalibrationError, match="was not collected"):
        stats = RangeStatistics(("max",))
        stats.add("x", np.ones(4, np.float32))
        stats.amax("x", MethodConfig("mse"))


def test_trt_cache_round_trips_every_scale_bit_exactly(tmp_path) -> None:
    rng = np.random.default_rng(2)
    scales = {f"tensor_{i}/in:{i}": float(np.float32(s)) for i, s in enumerate(10.0 ** rng.uniform(-8, 3, 200))}
    path = write_trt_cache(scales, tmp_path / "calib.cache", version=100900)
    text = path.read_text().splitlines()
    assert text[0] == "TRT-100900-EntropyCalibration2"
    name, value = text[1].split(": ")
    assert bytes.fromhex(value) == struct.pack(">f", scales[name])
    version, algorithm, parsed = read_trt_cache(path)
    assert (version, algorithm) == (100900, "EntropyCalibration2") and parsed.keys() == scales.keys()
    assert all(struct.pack(">f", parsed[n]) == struct.pack(">f", scales[n]) for n in scales)


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("TRT-EntropyCalibration2\nx: 3c000000\n", "line 1"),
    ("TRT-100900-EntropyCalibration2\nx: 3c0000\n", "line 2"),
    ("TRT-100900-EntropyCalibration2\nx: 3c000000\nx: 3c000000\n", "appears twice"),
    ("TRT-100900-EntropyCalibration2\nx: 00000000\n", "not a positive number"),
    ("TRT-100900-EntropyCalibration2\nx: 7fc00000\n", "not a positive number"),
])
def test_corrupt_trt_cache_is_refused_naming_the_line(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "calib.cache"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        read_trt_cache(path)


def test_table_json_round_trips_and_names_missing_tensors(tmp_path) -> None:
    entry = TensorRange(1.5, float(np.float32(1.5 / 127)), 0, "int8", "percentile", 99.99, 512, "ab" * 32, ("m:input",))
    table = CalibrationTable("int8", "percentile", 512, "ab" * 32, {"x": entry}, {"m:input": entry}, {"x": "m"},
                             {"n": "m"})
    path = write_table_json(table, tmp_path / "calibration.json")
    assert read_table_json(path) == table
    fields = json.loads(path.read_text())["tensors"]["x"]
    assert {"amax", "scale", "zero_point", "dtype", "method", "percentile", "samples", "data_hash"} <= set(fields)
    with pytest.raises(CalibrationError, match="lacks 2 tensor.*y, z"):
        table.check_covers(["x", "y", "z"])
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not readable JSON"):
        read_table_json(path)


def test_method_config_bounds_and_messages() -> None:
    MethodConfig("percentile", percentile=100.0)  # the whole range is a percentile too
    MethodConfig("percentile", percentile=0.5)
    MethodConfig("max", num_bins=256, num_quantized_bins=128)  # exactly twice
    refused = [(dict(method="max", grid="int4"), "unknown quantization grid 'int4'; expected int8 or fp8"),
               (dict(method="entropy", grid="fp8"),
                "calibration method 'entropy' is not available for fp8; expected one of max, percentile, mse"),
               (dict(method="percentile", percentile=0.0), "percentile must be in (0, 100], got 0.0"),
               (dict(method="percentile", percentile=100.5), "percentile must be in (0, 100], got 100.5"),
               (dict(method="max", num_bins=255, num_quantized_bins=128),
                "num_bins (255) must be at least twice num_quantized_bins (128)")]
    for kwargs, message in refused:
        with pytest.raises(CalibrationError) as err:
            MethodConfig(**kwargs)
        assert str(err.value) == message


def test_each_method_collected_alone_and_the_percentile_of_one_sided_data() -> None:
    rng = np.random.default_rng(1)
    # one-sided: positive bulk, a negative tail; the percentile is of |x|, so the sign must not matter
    values = np.concatenate([rng.exponential(1.0, 100_000), -rng.exponential(4.0, 2_000)]).astype(np.float32)
    want = float(np.percentile(np.abs(values), 99.0))
    for method in ("percentile", "mse", "entropy", "max"):
        stats = RangeStatistics((method,))
        stats.add("x", values)
        amax = stats.amax("x", MethodConfig(method, percentile=99.0))
        assert 0.0 < amax <= float(np.abs(values).max()), method
        if method == "percentile":
            assert amax == pytest.approx(want, rel=0.01)
    assert stats.names() == ["x"] and stats.counts == {"x": values.size}


def test_statistics_default_resolution_is_the_method_default() -> None:
    values = np.random.default_rng(5).standard_normal(50_000).astype(np.float32)
    default, explicit = RangeStatistics(("percentile", "mse")), RangeStatistics(("percentile", "mse"), num_bins=2048)
    for stats in (default, explicit):
        stats.add("x", values)
    assert MethodConfig().num_bins == 2048
    for method in ("percentile", "mse"):
        config = MethodConfig(method, percentile=99.0)
        assert default.amax("x", config) == explicit.amax("x", config), method


def test_add_accumulates_batches_of_any_shape_and_dtype() -> None:
    stats = RangeStatistics(METHODS)
    stats.add("x", np.array([[0.5, -4.0], [1.0, 2.0]]))  # float64, 2-D
    stats.add("x", np.array([3.0], np.float32))  # a one-value batch counts; a smaller max keeps the running one
    stats.add("x", np.zeros((0, 3), np.float32))  # an empty batch is ignored
    stats.add("empty", np.zeros(0, np.float32))
    assert stats.names() == ["x"] and stats.counts == {"x": 5}
    assert stats.amax("x", MethodConfig("max")) == 4.0
    # a float64 batch gives the statistics of its float32 values
    wide, narrow = RangeStatistics(METHODS, num_bins=512), RangeStatistics(METHODS, num_bins=512)
    values = np.random.default_rng(6).standard_normal((40, 50))
    wide.add("x", values)
    narrow.add("x", values.astype(np.float32).reshape(-1))
    for method in METHODS:
        config = MethodConfig(method, percentile=99.0)
        assert wide.amax("x", config) == narrow.amax("x", config), method


def test_statistics_messages_name_the_tensor_and_the_methods() -> None:
    refused = []
    with pytest.raises(CalibrationError) as err:
        RangeStatistics(("max", "kl"))
    refused.append((err, "unknown calibration method(s) ['kl']; expected some of max, percentile, entropy, mse"))
    stats = RangeStatistics(("max", "entropy"))
    with pytest.raises(CalibrationError) as err:
        stats.add("y", np.array([1.0, np.nan], np.float32))
    refused.append((err, "tensor 'y' has non-finite values on the calibration data"))
    stats.add("x", np.ones(4, np.float32))
    with pytest.raises(CalibrationError) as err:
        stats.amax("x", MethodConfig("mse"))
    refused.append((err, "method 'mse' was not collected (collected: max, entropy)"))
    assert [str(e.value) for e, _ in refused] == [message for _, message in refused]
    assert stats.names() == ["x"]  # the refused batch left no trace


def test_zero_tensor_has_zero_amax_and_a_unit_maximum_is_no_shortcut() -> None:
    stats = RangeStatistics(METHODS)
    stats.add("zero", np.zeros(100, np.float32))
    stats.add("unit", np.concatenate([np.full(999, 0.01), [1.0]]).astype(np.float32))
    for method in METHODS:
        assert stats.amax("zero", MethodConfig(method)) == 0.0, method
    assert stats.amax("unit", MethodConfig("max")) == 1.0
    assert stats.amax("unit", MethodConfig("percentile", percentile=99.0)) < 0.05


def test_rounding_step_has_one_step_per_value_and_amax_on_both_grids() -> None:
    values = np.array([0.01, 0.2, 0.5, 1.0])  # every value within every amax
    amax = np.array([[1.0], [2.0], [4.0]])
    for grid in ("int8", "fp8"):
        assert _rounding_step(values, amax, grid).shape == (3, 4), grid
    np.testing.assert_array_equal(_rounding_step(values, amax, "int8"), np.repeat(amax / 127.0, 4, axis=1))


def test_mse_amax_is_the_best_of_512_candidates_up_to_the_top_edge() -> None:
    # bin centres (2k + 1) / 512 fall exactly on candidates: a value at amax is rounded, not clipped
    edges = np.arange(0, 513, 2, dtype=np.float64) / 512
    hist, _ = np.histogram(np.abs(np.random.default_rng(1).standard_t(3, 20_000)) * 40 / 512, bins=edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    candidates = np.arange(1, 513) / 512  # top edge / 512 .. top edge

    def error(amax: float, grid: str) -> float:
        """The documented model, one candidate at a time: step^2 / 12 inside, (c - amax)^2 above."""
        step = _rounding_step(np.minimum(centres, amax), np.float64(amax), grid)
        return float(np.sum(hist * np.where(centres <= amax, step ** 2 / 12.0, (centres - amax) ** 2)))

    for grid in ("int8", "fp8"):
        best = mse_amax(hist, edges, grid)
        assert best in candidates, grid
        assert error(best, grid) <= min(error(a, grid) for a in candidates) * (1 + 1e-9), grid


class FixedRanges:
    """Stand-in eager ranges: one fixed amax per tensor, whatever the method."""

    def __init__(self, amax: dict[str, float]) -> None:
        self.fixed, self.samples, self.data_hash = amax, 8, "cd" * 32

    def amax(self, name: str, config: MethodConfig) -> float:
        return self.fixed[name]

    def names(self) -> list[str]:
        return list(self.fixed)


def test_build_table_records_each_range_with_its_provenance() -> None:
    ranges = FixedRanges({"a:input": 2.54, "b:input": 4.48, "c:input": 3.0})
    nodes = [QuantizableNode("mm_skip", "MatMul", "skip", "act_a", "w_s", ("b:input",), keep_float=True),
             QuantizableNode("mm_none", "MatMul", "none", "act_n", "w_n"),  # no eager range: left out
             QuantizableNode("mm_q", "MatMul", "q", "act_qk", "w_q", ("b:input", "a:input")),
             QuantizableNode("mm_k", "MatMul", "k", "act_qk", "w_k", ("c:input",)),  # the same activation: max of both
             QuantizableNode("mm_a", "MatMul", "a", "act_a", "w_a", ("a:input",))]
    table = build_table(ranges, nodes, MethodConfig("max"))

    def entry(amax: float, eager: tuple[str, ...], method: str = "max", percentile: float | None = None,
              dtype: str = "int8") -> TensorRange:
        scale = float(np.float32(amax / (127 if dtype == "int8" else 448)))
        return TensorRange(amax, scale, 0, dtype, method, percentile, 8, "cd" * 32, eager)

    assert (table.dtype, table.method, table.samples, table.data_hash) == ("int8", "max", 8, "cd" * 32)
    assert table.tensors.keys() == {"act_qk", "act_a"}
    assert table.tensors["act_qk"].amax == 4.48  # the kept-float node's larger range did not reach act_a
    assert table.tensors["act_a"] == entry(2.54, ("a:input",))
    assert table.layers == {"act_qk": "k", "act_a": "a"}
    assert table.nodes == {"mm_q": "q", "mm_k": "k", "mm_a": "a"}
    assert table.eager_tensors == {n: entry(a, (n,)) for n, a in ranges.fixed.items()}
    assert build_table(ranges, nodes, MethodConfig("max"), include_eager=False).eager_tensors == {}
    # the percentile is recorded for the percentile method only
    percentile = build_table(ranges, nodes, MethodConfig("percentile", percentile=99.0, grid="fp8"))
    assert percentile.tensors["act_a"] == entry(2.54, ("a:input",), "percentile", 99.0, "float8e4m3fn")
    assert percentile.eager_tensors["c:input"].percentile == 99.0


def test_build_table_refuses_an_invalid_amax_or_nothing_to_calibrate() -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(CalibrationError) as err:
            build_table(FixedRanges({"a:input": bad}), [QuantizableNode("mm", "MatMul", "l", "act", "w", ("a:input",))],
                        MethodConfig("max"))
        assert str(err.value) == f"invalid amax {bad} for ('a:input',)"
    only_float = [QuantizableNode("mm", "MatMul", "l", "act", "w", ("a:input",), keep_float=True)]
    with pytest.raises(CalibrationError) as err:
        build_table(FixedRanges({"a:input": 1.0}), only_float, MethodConfig("max"))
    assert str(err.value) == "no quantizable node has an eager range: nothing to calibrate"


def test_table_scale_and_its_error_list_the_tensors() -> None:
    entry = TensorRange(1.5, 0.25, 0, "int8", "max", None, 8, "cd" * 32, ("m:input",))
    table = CalibrationTable("int8", "max", 8, "cd" * 32, {"y": entry, "x": entry})
    assert table.scale("x") == 0.25
    with pytest.raises(CalibrationError) as err:
        table.scale("z")
    assert str(err.value) == "calibration table has no tensor 'z'; it has ['x', 'y']"


def test_table_json_is_canonical_and_a_bad_file_is_refused_by_field(tmp_path) -> None:
    entry = TensorRange(1.5, 0.25, 0, "int8", "max", None, 8, "cd" * 32, ("m:input",))
    table = CalibrationTable("int8", "max", 8, "cd" * 32, {"y": entry, "x": entry}, {"m:input": entry}, {"x": "m"})
    path = write_table_json(table, tmp_path / "calibration.json")
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"  # stable: sorted, one-space indent
    data = json.loads(text)
    for content, message in [("[1]", "expected schema_version 1"), (json.dumps({**data, "schema_version": 2}),
                                                                     "expected schema_version 1"),
                             (json.dumps({k: v for k, v in data.items() if k != "dtype"}),
                              "missing or malformed field 'dtype'")]:
        path.write_text(content)
        with pytest.raises(CalibrationError) as err:
            read_table_json(path)
        assert str(err.value) == f"calibration table {path}: {message}"


def test_trt_cache_reader_skips_blank_lines_and_quotes_bad_lines(tmp_path) -> None:
    path = tmp_path / "calib.cache"
    path.write_text("TRT-100900-EntropyCalibration2\nx: 3c000000  \n\ny: 3d000000\n")
    assert read_trt_cache(path) == (100900, "EntropyCalibration2", {"x": 0.0078125, "y": 0.03125})
    long = "z" * 100
    for content, message in [("", "line 1 is not a 'TRT-<version>-<algorithm>' header: '(empty file)'"),
                             (long + "\n", f"line 1 is not a 'TRT-<version>-<algorithm>' header: {long[:80]!r}"),
                             (f"TRT-1-E\n{long}\n", f"line 2 is not '<tensor>: <8 hex digits>': {long[:80]!r}")]:
        path.write_text(content)
        with pytest.raises(CalibrationError) as err:
            read_trt_cache(path)
        assert str(err.value) == f"calibration cache {path}: {message}"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CalibrationError, match="is not readable text"):
        read_trt_cache(path)


def test_trt_cache_writer_refuses_bad_scales_and_names(tmp_path) -> None:
    path = tmp_path / "calib.cache"
    write_trt_cache({"ok": 1e-30}, path)
    for scales, bad in [({"zero": 0.0, "ok": 1.0}, ["zero"]), ({"neg": -1.0}, ["neg"]),
                        ({"inf": float("inf")}, ["inf"]), ({"nan": float("nan")}, ["nan"]), ({"a\nb": 1.0}, ["a\nb"])]:
        with pytest.raises(CalibrationError) as err:
            write_trt_cache(scales, path)
        assert str(err.value) == f"cannot write calibration cache {path}: invalid scale or name for {bad}"
