"""Mutation testing with mutmut: how many planted bugs the tests of each correctness-deciding module kill.

    make mutation                                   # every module in TARGETS
    make mutation MODULES=mahia/train/losses.py     # some of them (space-separated)

Each target is run on its own: mutmut mutates only that module and runs only the tests listed for it
(the fast tests that cover it; per mutant, mutmut runs just those of them that call the mutated
function). Work directories, mutmut's logs and the summary (`summary.md`, `summary.json`: score and
every surviving mutant's diff) go to artifacts/mutation/. Not part of `make test`.

Score = killed / mutants, where a timeout counts as killed and a mutant that no listed test reaches
("no tests") counts as not killed. A survivor is either a missing test or an equivalent mutant (one
that cannot change behaviour); the summary lists each one for that judgement.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DETECTED = ("killed", "timeout")


@dataclass(frozen=True)
class Target:
    """One module to mutate and the pytest arguments that select the tests covering it."""

    module: str  # path from the repository root
    tests: tuple[str, ...]  # pytest arguments: files, node ids, --deselect ...
    functions: tuple[str, ...] = ()  # mutmut names to mutate within the module ("x_name*"); all when empty

    @property
    def dotted(self) -> str:
        """The module's import name (mutmut's mutant names start with it)."""
        return self.module.removesuffix(".py").replace("/", ".")

    @property
    def name(self) -> str:
        """Work directory name."""
        return self.module.removesuffix(".py").replace("/", "-")

    def selects(self, mutant: str) -> bool:
        """Whether a mutmut mutant name belongs to this target."""
        if not mutant.startswith(self.dotted + "."):
            return False
        local = mutant[len(self.dotted) + 1:]
        return not self.functions or any(fnmatch.fnmatchcase(local, pattern) for pattern in self.functions)


def deselect(*node_ids: str) -> tuple[str, ...]:
    """pytest arguments leaving out the given tests."""
    return tuple(arg for node_id in node_ids for arg in ("--deselect", node_id))


# The modules that decide correctness and the tests that cover each. Edit this list when modules or
# tests move. Slow end-to-end tests (full exports, the training CLI) are left out: mutmut reruns a
# module's tests for every mutant.
RUNTIME = "tests/runtime/test_runtime.py::test_{}"
RUNTIME_PT2 = RUNTIME.format("both_backends_match_eager_at_unseen_shapes[{}-pt2]")
TASK = "tests/export/test_task_check.py::test_{}"
CALIBRATION_DIRECT = ("tests/calibration/test_calibration.py", "-k", "not ranges and not calibration_data")
TARGETS = (
    Target("mahia/model/inputs.py", ("tests/model/test_inputs.py",)),
    Target("mahia/model/checkpoint.py", ("tests/model/test_checkpoint.py",)),
    # one .pt2 load (2 s each) covers the pt2 runner
    Target("mahia/runtime/deployment.py",
           ("tests/runtime/test_runtime.py", *deselect(RUNTIME_PT2.format("5-23"), RUNTIME_PT2.format("16-1")))),
    # reading and verifying an artifact directory
    Target("mahia/artifact/manifest.py",
           ("tests/artifact/test_manifest.py", RUNTIME.format("tampered_file_is_refused_by_name"),
            RUNTIME.format("missing_file_and_failed_manifest_are_refused"))),
    Target("mahia/export/parity.py",
           ("tests/export/test_parity.py", "tests/export/test_parity_failure.py",
            "--deselect", "tests/export/test_parity_failure.py::test_the_suggested_flags_pass",  # two exports
            "tests/export/test_export_pipeline.py::test_parity_verdict_needs_both_polygraphy_and_the_rel_l2_budget")),
    # less the two full exports through the CLI and the .pt2 check (3 s; the runner is the runtime's pt2 backend)
    Target("mahia/export/task_check.py",
           ("tests/export/test_task_check.py", *deselect(TASK.format("a_trained_model_export_records_its_task_check"),
                                                  TASK.format("a_missed_task_budget_fails_the_export"),
                                                  TASK.format("the_exported_graph_of_the_same_weights_agrees_everywhere"
                                                              "[pt2-model.pt2]")))),
    # the direct tests; those on the tiny model's ranges (the tiny_ranges fixture, 10 s) test ranges.py
    Target("mahia/calibration/statistics.py", CALIBRATION_DIRECT),
    Target("mahia/calibration/table.py", CALIBRATION_DIRECT),
    # the metrics' tests and the distillation modes' direct ones (logit MSE, feature matching, the chosen terms' sum)
    Target("mahia/train/losses.py",
           ("tests/train/test_train_metrics.py",
            "tests/train/test_train_features.py::test_logit_mse_and_feature_matching_losses",
            "tests/train/test_train_features.py::test_training_loss_sums_the_chosen_distillation_terms")),
    # the direct tests; the resume runs through the training loop (a few seconds each) are left to make test
    Target("mahia/train/state.py",
           ("tests/train/test_state.py",
            "tests/train/test_train.py::test_optimiser_state_from_another_step_is_refused")),
    # the schedule (moved from trainer.py to optim.py); the loop itself is left to the training tests
    Target("mahia/train/optim.py", ("tests/train/test_schedule.py", "tests/train/test_train.py", "-k", "learning_rate"),
           functions=("x_learning_rate*",)),
)


def setup_cfg(target: Target) -> str:
    """mutmut's configuration for one target (setup.cfg in its work directory)."""
    package = target.module.split("/")[0]
    lines = ["[mutmut]", f"source_paths={package}/", f"only_mutate={target.module}",
             "pytest_add_cli_args_test_selection=", *(f"    {arg}" for arg in target.tests),
             # xdist off: mutmut runs one pytest session per mutant itself
             "pytest_add_cli_args=", "    -p", "    no:xdist", "    -p", "    no:cacheprovider",
             # torch is not fork-safe once its thread pools run: fork each mutant from a clean server
             "process_isolation=forkserver"]
    return "\n".join(lines) + "\n"


def prepare(target: Target, work: Path) -> None:
    """A fresh work directory: links to the package and the tests, pyproject.toml (pytest's settings), setup.cfg."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    package = target.module.split("/")[0]
    for name in (package, "tests"):
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    if "[tool.mutmut]" in pyproject:
        raise SystemExit("pyproject.toml has a [tool.mutmut] table, which would override each target's setup.cfg")
    (work / "pyproject.toml").write_text(pyproject)
    (work / "setup.cfg").write_text(setup_cfg(target))


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    """Run the venv's mutmut in `work`; its output (or, with `log`, the log's path) on failure."""
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    with open(log or os.devnull, "a") as sink:
        proc = subprocess.run(command, cwd=work, stdout=subprocess.PIPE if log is None else sink,
                              stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:])} failed in {work} (exit {proc.returncode}); see "
                         f"{log if log else proc.stdout[-3000:]}")
    return proc.stdout or ""


def run_target(target: Target, root: Path, jobs: int) -> dict:
    """Mutate one module, run its tests against every mutant, and return the counts and the survivors."""
    work = root / target.name
    prepare(target, work)
    started = time.perf_counter()
    names = [f"{target.dotted}.{pattern}" for pattern in target.functions]
    mutmut(work, "run", "--max-children", str(jobs), *names, log=work / "mutmut.log")
    seconds = time.perf_counter() - started
    statuses = {}
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, _, status = line.strip().partition(": ")
        if target.selects(name):
            statuses[name] = status
    counts = Counter(statuses.values())
    detected = sum(counts[s] for s in DETECTED)
    survivors = {name: mutmut(work, "show", name).strip() for name, status in sorted(statuses.items())
                 if status not in DETECTED}
    return {"module": target.module, "tests": list(target.tests), "functions": list(target.functions),
            "mutants": len(statuses), "killed": detected, "counts": dict(counts),
            "score": detected / len(statuses) if statuses else None, "seconds": round(seconds, 1),
            "not_killed": survivors}


def markdown(results: list[dict], jobs: int) -> str:
    """The summary table and every mutant that was not killed, with its diff."""
    total = sum(r["mutants"] for r in results)
    killed = sum(r["killed"] for r in results)
    lines = ["| module | mutants | killed | survived | no tests | score | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        c = r["counts"]
        functions = f" ({', '.join(r['functions'])})" if r["functions"] else ""
        lines.append(f"| {r['module']}{functions} | {r['mutants']} | {r['killed']} | {c.get('survived', 0)} "
                     f"| {c.get('no tests', 0)} | {r['score']:.1%} | {r['seconds'] / 60:.1f} |")
    lines.append(f"| all | {total} | {killed} | | | {killed / max(total, 1):.1%} "
                 f"| {sum(r['seconds'] for r in results) / 60:.1f} |")
    lines += ["", f"mutmut {mutmut_version()}, {jobs} workers, `make mutation` (benchmarks/mutation.py).", ""]
    for r in results:
        for name, diff in r["not_killed"].items():
            lines += [f"### {name}", "", "```diff", diff, "```", ""]
    return "\n".join(lines)


def mutmut_version() -> str:
    """The installed mutmut's version."""
    from importlib.metadata import version

    return version("mutmut")


def main() -> None:
    """Run the selected targets and write artifacts/mutation/summary.{md,json}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths from TARGETS (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested in parallel")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "mutation")
    args = parser.parse_args()
    known = {t.module: t for t in TARGETS}
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        parser.error(f"not in TARGETS: {', '.join(unknown)}; known: {', '.join(known)}")
    targets = [known[m] for m in args.modules] if args.modules else list(TARGETS)

    root = args.out.resolve()
    shared = root / "shared"  # one tiny export for every pytest session of this run (tests/conftest.py)
    if shared.exists():
        shutil.rmtree(shared)
    os.environ["MAHIA_TEST_SHARED_DIR"] = str(shared)
    results = []
    for target in targets:
        print(f"{target.module}: mutating, tests {' '.join(target.tests)}", flush=True)
        result = run_target(target, root, args.jobs)
        results.append(result)
        c = result["counts"]
        print(f"{target.module}: {result['killed']}/{result['mutants']} killed ({result['score']:.1%}), "
              f"{c.get('survived', 0)} survived, {c.get('no tests', 0)} without tests, "
              f"{result['seconds'] / 60:.1f} min", flush=True)
    summary = {"mutmut": mutmut_version(), "jobs": args.jobs, "targets": results}
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (root / "summary.md").write_text(markdown(results, args.jobs) + "\n")
    print(f"summary: {root / 'summary.md'}")


if __name__ == "__main__":
    main()
