"""The harness's power: every planted bug is killed, each misbehaviour gets its own kind."""
import json

import pytest

from inproc import cli
import tests.mutants as M
from fuzz.kinds import FailureKind


def ci_sample() -> list:
    """The CI's kill table: one mutant per failure kind (the first in ALL that expects it and
    runs on the CPU). The whole table, the GPU-only context mutants included, runs under -m slow
    (nightly). The CI also fuzzes the three historical bugs in process (tests/test_fuzz_engine.py)
    and the search past a known bug (two_bugs, tests/test_run_pipeline.py)."""
    by_kind = {}
    for cls in M.ALL:
        # runs on the CPU: not the GPU's large tier, nor a bug that needs CUDA (a stream, a second GPU)
        if getattr(cls, "profile", None) is None and "cpu" in cls.capabilities.devices:
            by_kind.setdefault(cls.expected, cls)
    picked = set(by_kind.values())
    return [cls for cls in M.ALL if cls in picked]


def test_ci_sample_covers_every_failure_kind():
    from fuzz.kinds import FailureKind
    covered = {cls.expected for cls in ci_sample()}
    expected_somewhere = {cls.expected for cls in M.ALL}
    assert covered == expected_somewhere
    assert {FailureKind.CRASH, FailureKind.TIMEOUT, FailureKind.TOLERANCE} <= covered


# a hang costs its case timeout every time Hypothesis tries a hanging case while it shrinks:
# `hangs` runs with a short one (whatever times out is its own kind: the verdict is the same),
# still 40 times a first case in a new worker on an idle CPU (50 ms, imports preloaded)
CASE_TIMEOUT_S = {"hangs": 2.0}


def _kill(classes, tmp_path) -> tuple:
    out = tmp_path / "kill.json"
    one = len(classes) == 1
    timeout = min((CASE_TIMEOUT_S.get(c.name, 5.0) for c in classes), default=5.0) if one else 5.0
    # the CI's sample shrinks each kill for 3 s (a hang or a crash pays a timeout or a new
    # worker per step); the whole table keeps the default. The verdicts do not depend on it.
    shrink = ["--shrink-budget", "3s"] if one else []
    # a fixed amount of work and a fixed Hypothesis seed: the verdict does not depend on the machine
    r = cli("mutants", "--device", "cpu", "--budget", "600s", "--max-cases", "400", "--hypothesis-seed", "0",
            "--case-timeout", timeout, *shrink, "--only", ",".join(c.name for c in classes),
            "--reports", tmp_path / "reports", "--json", out)
    print(r.stdout[-6000:])
    return r, json.loads(out.read_text())["mutants"]


def _assert_killed_as_expected(classes, r, all_rows):
    rows = all_rows
    assert {row["mutant"] for row in rows} == {cls.name for cls in classes}
    rows = [row for row in rows if not row["skipped"]]      # e.g. needs 2 GPUs: said in the table
    survived = [row["mutant"] for row in rows if not row["killed"]]
    assert not survived and r.returncode == 0, survived
    # only what cannot show on the CPU is skipped here, and the table says why
    from fuzz.check import backend_can_run
    skipped = {row["mutant"]: row["skipped"] for row in all_rows if row["skipped"]}
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
    return rows


@pytest.mark.parametrize("mutant", [cls.name for cls in ci_sample()])
def test_sampled_mutant_is_killed_with_its_expected_kind(tmp_path, mutant):
    """One test per mutant of the CI's sample (so that they run side by side). The reports of a
    crash and a hang replay, as the report writes them, with the kind of the run that found
    them (a worker contains them), and so does a history-dependent one (its replay makes the
    earlier calls first, in a fresh process); the slow table replays every report."""
    classes = [getattr(M, mutant)]
    r, rows = _kill(classes, tmp_path)
    rows = _assert_killed_as_expected(classes, r, rows)
    if rows and classes[0].expected in (FailureKind.CRASH, FailureKind.TIMEOUT, FailureKind.HISTORY_DEPENDENT):
        from fuzz.reports import load_report
        from verbatim import run_line
        rep = load_report(rows[0]["report"])
        assert rep["plugins"] == [f"tests.mutants:{mutant}"]      # only its own plugin
        replayed = run_line(rep["replay"], tmp_path)                 # in a fresh shell at the repo root
        assert replayed.returncode == 1 and f"FAIL ({rep['kind']})" in replayed.stdout, \
            replayed.stdout[-3000:] + replayed.stderr


@pytest.mark.slow
def test_every_mutant_is_killed_with_its_expected_kind(tmp_path):
    r, rows = _kill(M.ALL, tmp_path)
    rows = _assert_killed_as_expected(M.ALL, r, rows)
    _replays_give_the_same_verdicts(rows, tmp_path)


# its bug shows on a random half of the calls: a replay may pass
RANDOM = {"racy_double_count"}


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
