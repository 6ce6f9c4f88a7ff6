"""A failed parity says which check failed, whether the model is untrained, and the flags that pass; those flags
do pass."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mahia.export.cli import main
from mahia.export.config import Tolerances
from mahia.export.parity import ParityResult, ParityRow, _round_up, failure_message


def row(rel_l2: float, max_abs: float, polygraphy_passed: bool, budget: Tolerances, batch: int = 1) -> ParityRow:
    return ParityRow("onnxrt", batch, 37, "logits", max_abs, max_abs / 0.5, rel_l2, 0.8, polygraphy_passed,
                     polygraphy_passed and rel_l2 <= budget.max_rel_error)


def test_to_pass_raises_only_the_failed_budgets_to_a_round_value_above_the_worst_error() -> None:
    budget = Tolerances(atol=0.1, rtol=0.1, max_rel_error=0.03)
    passing = ParityResult(budget, (row(0.01, 0.02, True, budget),))
    assert passing.passed and passing.to_pass() == budget and "to_pass" not in passing.to_dict()
    # rel. L2 0.0959 (tiny fp8 at 1 x 1, measured): 1.25 x 0.0959 = 0.12 -> 0.2; Polygraphy passed: atol stays.
    over_l2 = ParityResult(budget, (row(0.0959, 0.061, True, budget), row(0.047, 0.057, True, budget, 8)))
    assert over_l2.to_pass() == Tolerances(0.1, 0.1, 0.2)
    assert over_l2.to_dict()["to_pass"] == {"atol": 0.1, "rtol": 0.1, "max_rel_error": 0.2}
    # Elementwise failure too: atol rises above 1.25 x the largest absolute error (0.188 -> 0.235 -> 0.3).
    both = ParityResult(budget, (row(0.34, 0.065, False, budget), row(0.205, 0.188, False, budget, 8)))
    assert both.to_pass() == Tolerances(0.3, 0.1, 0.5)
    exact = ParityResult(budget, (row(0.04, 0.01, True, budget),))  # 1.25 x 0.04 = 0.05 stays 0.05
    assert exact.to_pass().max_rel_error == 0.05


def test_failure_message_names_the_check_and_explains_untrained_models() -> None:
    budget = Tolerances(atol=0.1, rtol=0.1, max_rel_error=0.03)
    result = ParityResult(budget, (row(0.0959, 0.061, True, budget), row(0.2, 0.15, False, budget, 8)))
    untrained = failure_message(result, trained=False, precision="fp8")
    assert "\n" not in untrained
    assert untrained.startswith("Parity FAILED: worst onnxrt output 'logits' at batch 8 x seq 37: rel L2 error "
                                "2.000e-01 > 0.03; elementwise |error| 1.500e-01 over atol=0.1")
    assert "The model is untrained (seeded weights): the fp8 budget is set on a trained model" in untrained
    assert untrained.endswith("pass --max-rel-error 0.3 --atol 0.2.")
    trained = failure_message(result, trained=True, precision="fp8")
    assert "untrained" not in trained and trained.endswith("Passing would take --max-rel-error 0.3 --atol 0.2.")


def test_round_up_to_one_significant_digit() -> None:
    cases = {0.0: 0.0, 0.12: 0.2, 0.042: 0.05, 0.05: 0.05, 0.0375: 0.04, 1.0: 1.0, 3.1: 4.0, 12.0: 20.0,
             0.00071: 0.0008}
    assert {value: _round_up(value) for value in cases} == cases


def test_failure_message_of_each_single_check_in_full() -> None:
    budget = Tolerances(atol=0.1, rtol=0.1, max_rel_error=0.03)
    over_l2 = ParityResult(budget, (row(0.0959, 0.061, True, budget),))  # Polygraphy passed: atol is not suggested
    assert failure_message(over_l2, trained=True, precision="fp8") == (
        "Parity FAILED: worst onnxrt output 'logits' at batch 1 x seq 37: rel L2 error 9.590e-02 > 0.03 (max abs "
        "error 6.100e-02, logits norm 0.8). Passing would take --max-rel-error 0.2.")
    assert failure_message(over_l2, trained=False, precision="int4") == (
        "Parity FAILED: worst onnxrt output 'logits' at batch 1 x seq 37: rel L2 error 9.590e-02 > 0.03 (max abs "
        "error 6.100e-02, logits norm 0.8). The model is untrained (seeded weights): the int4 budget is set on a "
        "trained model, and untrained weights lose more in int4 (under fp8 and int4 their pooled features move "
        "several times as much; benchmarks/RESULTS.md). To export it anyway, e.g. to measure latency before "
        "training, pass --max-rel-error 0.2.")
    # a rel. L2 error exactly at its budget passes that check: only the elementwise one is named
    elementwise = ParityResult(budget, (row(0.03, 0.15, False, budget),))
    assert failure_message(elementwise, trained=True, precision="fp8") == (
        "Parity FAILED: worst onnxrt output 'logits' at batch 1 x seq 37: elementwise |error| 1.500e-01 over "
        "atol=0.1 where the relative error 3.000e-01 is over rtol=0.1 (max abs error 1.500e-01, logits norm 0.8). "
        "Passing would take --max-rel-error 0.04 --atol 0.2.")


def test_the_suggested_flags_pass(tmp_path: Path) -> None:
    # bf16 against eager fp32 cannot meet atol = rtol = 0: every row fails Polygraphy's elementwise check (and the
    # untrained tiny model's rel. L2 error, 4.0e-2 at 2 x 16, is over bf16's 1e-2 as well).
    base = ["--config", "tiny", "--batch", "1:2:3", "--seq", "1:16:40", "--precision", "bf16", "--rtol", "0",
            "--quiet"]
    failed = CliRunner().invoke(main, [*base, "--atol", "0", "--out", str(tmp_path / "a")])
    assert failed.exit_code == 1
    message = failed.output.strip()
    assert message.count("\n") == 0 and "elementwise |error|" in message and "The model is untrained" in message
    flags = re.search(r"pass (--max-rel-error \S+ --atol \S+)\. Kept for debugging", message).group(1).split()
    passed = CliRunner().invoke(main, [*base, *flags, "--out", str(tmp_path / "b")])
    assert passed.exit_code == 0, passed.output


def test_a_non_finite_output_fails_with_its_own_message_and_no_flags() -> None:
    # The fp16 export of the trained default produced NaN logits at every point (2026-12-01); parity then crashed
    # computing the flags ("cannot convert float NaN to integer") instead of saying what failed.
    budget = Tolerances(atol=0.1, rtol=0.1, max_rel_error=0.03)
    nan = float("nan")
    result = ParityResult(budget, (row(0.2, 0.15, False, budget), row(nan, nan, False, budget, 3),
                                   row(0.01, 0.02, True, budget, 8)))
    assert result.worst().batch == 3 and result.to_pass() is None
    assert result.to_dict()["to_pass"] is None and not result.to_dict()["passed"]
    assert failure_message(result, trained=True, precision="fp16") == (
        "Parity FAILED: the onnxrt output 'logits' at batch 3 x seq 37 is not finite (NaN or inf; max abs error nan), "
        "which no tolerance passes: in fp16, most likely a value past its range (65504).")
    assert failure_message(result, trained=False, precision="bf16").endswith("which no tolerance passes.")
