"""The harness's power: every planted bug is killed, each misbehaviour gets its own kind."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
import tests.mutants as M


def ci_sample() -> list:
    """The CI's kill table: one mutant per failure kind (the first in ALL that expects it), the
    three historical bugs and the two-bug mutant. The whole table runs under -m slow (nightly)."""
    by_kind = {}
    for cls in M.ALL:
        if getattr(cls, "profile", None) is None:      # runs on the CPU (not the GPU's large tier)
            by_kind.setdefault(cls.expected, cls)
    picked = set(by_kind.values()) | {M.Stream0Only, M.DbiasResTwice, M.DgammaNoInvRmsRes, M.TwoBugs}
    return [cls for cls in M.ALL if cls in picked]


def test_ci_sample_covers_every_failure_kind():
    from fuzz.kinds import FailureKind
    covered = {cls.expected for cls in ci_sample()}
    expected_somewhere = {cls.expected for cls in M.ALL}
    assert covered == expected_somewhere
    assert {FailureKind.CRASH, FailureKind.TIMEOUT, FailureKind.TOLERANCE} <= covered


@pytest.mark.parametrize("scope", ["ci-sample", pytest.param("all", marks=pytest.mark.slow)])
def test_every_mutant_is_killed_with_its_expected_kind(tmp_path, scope):
    classes = ci_sample() if scope == "ci-sample" else M.ALL
    out = tmp_path / "kill.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", TRITON_INTERPRET="1")
    # a fixed amount of work and a fixed Hypothesis seed: the verdict does not depend on the machine
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "mutants", "--device", "cpu", "--budget", "600s",
                        "--max-cases", "400", "--hypothesis-seed", "0",
                        "--only", ",".join(c.name for c in classes),
                        "--reports", tmp_path / "reports", "--json", out],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    print(r.stdout[-6000:])
    rows = json.loads(out.read_text())["mutants"]
    assert {row["mutant"] for row in rows} == {cls.name for cls in classes}
    rows = [row for row in rows if not row["skipped"]]      # e.g. needs 2 GPUs: said in the table
    survived = [row["mutant"] for row in rows if not row["killed"]]
    assert not survived and r.returncode == 0, survived
    # only what cannot show on the CPU is skipped here, and the table says why
    from fuzz.check import backend_can_run
    skipped = {row["mutant"]: row["skipped"] for row in json.loads(out.read_text())["mutants"] if row["skipped"]}
    cannot_run_here = {cls.name for cls in classes if backend_can_run(getattr(M, cls.name), "cpu")}
    assert set(skipped) == cannot_run_here and all(skipped.values()), skipped
    killed = [row for row in rows if row["killed"]]
    wrong_kind = [(row["mutant"], row["kinds"], row["expected_kind"]) for row in killed
                  if not row["expected_kind_found"]]
    assert not wrong_kind
    missed = [row["mutant"] for row in rows if not row["expected_signatures_found"]]
    assert not missed                        # e.g. two_bugs: the rare bug too
    # nothing is lost: every kill left a complete report that names its kind
    from fuzz.reports import load_report
    for row in killed:
        rep = load_report(row["report"])
        assert rep["backend"] == row["mutant"] and rep["kind"] in row["kinds"]
    # killed fast: within a few dozen cases (the seconds depend on the machine, the cases do not)
    slow = [(row["mutant"], row["cases_to_first_failure"]) for row in rows if row["cases_to_first_failure"] > 60]
    assert not slow, slow
    _replays_give_the_same_verdicts(rows, tmp_path)


# their bugs show on a random half of the calls: a replay may pass
RANDOM = {"racy_double_count", "nondeterministic"}


def _replays_give_the_same_verdicts(rows, tmp_path):
    """Every report replays (in a worker: the segfault and the hang included) with the kind of
    the run that found it; a report carries only its own mutant's plugin, and its replay line
    runs as written in a fresh shell at the repository root."""
    from fuzz.reports import load_report
    from verbatim import run_line
    reps = {row["mutant"]: load_report(row["report"]) for row in rows}
    assert all(rep["plugins"] == [f"tests.mutants:{m}"] for m, rep in reps.items()), reps
    paths = [row["report"] for row in rows if row["mutant"] not in RANDOM]
    line = "mhc-fuzz replay " + " ".join(paths) + "".join(f" --plugin tests.mutants:{row['mutant']}" for row in rows)
    r = run_line(line, tmp_path)
    verdicts = [ln.split()[1].strip("()") for ln in r.stdout.splitlines() if ln.startswith("FAIL (")]
    expected = [load_report(p)["kind"] for p in paths]
    assert verdicts == expected and r.returncode == 1, r.stdout[-3000:] + r.stderr
    crash = reps["segfaults"]
    r = run_line(crash["replay"], tmp_path)                        # exactly as the report writes it
    assert r.returncode == 1 and "FAIL (crash)" in r.stdout, r.stdout + r.stderr
