"""The fuzz loop finds, shrinks and reports bugs, and raises no alarm on golden."""
import time

import pytest

from fuzz import engine
from fuzz.executor import InProcessExecutor
from fuzz.profiles import PROFILES
from fuzz.reports import iter_reports, load_report
from impls.registry import default_registry
import tests.mutants as M

HISTORICAL = ["stream0_only", "dbias_res_twice", "dgamma_no_inv_rms_res"]


@pytest.fixture(scope="module")
def registry():
    return default_registry(M.targets(M.CORRECTNESS) + ["tests.mutants:tf32_declared"], entry_points=False)


def _fuzz(registry, name, tmp_path, max_cases=200, stop=True):
    """A fixed amount of work (max_cases; the time budget is only a safety net), so verdicts do
    not depend on the machine's speed."""
    ex = InProcessExecutor(registry, "cpu")
    opts = engine.FuzzOptions(device="cpu", chunk_examples=40, limits=PROFILES["ci"].cpu, seed=1,
                              reports_dir=tmp_path, plugins=tuple(M.targets(M.CORRECTNESS)),
                              stop_on_first_failure=stop, max_cases=max_cases, hypothesis_seed=1)
    return engine.fuzz_backend(name, registry.get(name).capabilities, ex, 900.0, opts)


def test_golden_raises_no_alarm(registry, tmp_path):
    stats = _fuzz(registry, "golden", tmp_path, max_cases=40, stop=False)
    assert stats.cases == 40
    assert not stats.findings, [f.result.message for f in stats.findings.values()]
    assert max(stats.worst.values()) < 1.0
    assert stats.refused == 0          # golden declares no limits, so nothing is out of bounds
    assert not iter_reports(tmp_path)


def test_declared_tf32_raises_no_alarm(registry, tmp_path):
    """undeclared_tf32's products, declared as TF32: judged by TF32 bounds, a pass (the mutant
    table shows the same products fail when declared fp32)."""
    stats = _fuzz(registry, "tf32_declared", tmp_path, max_cases=30, stop=False)
    assert stats.cases == 30
    assert not stats.findings, [f.result.message for f in stats.findings.values()]
    assert max(stats.worst.values()) < 1.0


@pytest.mark.parametrize("name", HISTORICAL)
def test_historical_bug_is_found_shrunk_and_reported(registry, tmp_path, name):
    t0 = time.monotonic()
    stats = _fuzz(registry, name, tmp_path)
    assert stats.findings, f"{name} survived {stats.cases} cases"
    f = min(stats.findings.values(), key=lambda f: f.result.params.T * f.result.params.D * f.result.params.n)
    p = f.result.params
    print(f"{name}: found after {f.detected_after_s:.2f} s ({stats.cases} cases, {time.monotonic() - t0:.1f} s "
          f"with shrinking); minimized to {p.short()}")
    assert p.T * p.n * p.D <= 16, p.short()          # shrunk to a tiny case
    rep = load_report(f.path)
    assert rep["backend"] == name and rep["kind"] == "tolerance" and rep["failing_components"]
    assert "tests.mutants:" in " ".join(rep["plugins"]) and rep["replay"].startswith("mhc-fuzz replay ")


def test_findings_are_deduplicated_by_signature(registry, tmp_path):
    """Every failure seen is one of the run's findings, and each finding is one report on disk
    that holds that finding's (smallest) case."""
    stats = _fuzz(registry, "d_tail_dropped", tmp_path, max_cases=60, stop=False)
    assert stats.failed > len(stats.findings) >= 1        # many failing cases, few distinct bugs
    reports = {f: load_report(f) for f in iter_reports(tmp_path)}
    assert sorted(r["signature"] for r in reports.values()) == sorted(stats.findings)
    for sig, finding in stats.findings.items():
        rep = reports[finding.path]
        assert rep["signature"] == sig == finding.result.signature()
        assert rep["params"] == finding.result.params.to_dict()


def test_unwritable_reports_keep_findings_in_memory(registry, tmp_path, monkeypatch):
    import errno
    import fuzz.engine as eng

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eng, "write_report", full_disk)
    stats = _fuzz(registry, "stream0_only", tmp_path, max_cases=30)
    assert stats.findings and all(f.path is None for f in stats.findings.values())
    assert stats.write_errors and "No space left on device" in stats.write_errors[0]
    assert stats.to_dict()["findings"][0]["params"]["n"] >= 2


def _primary_entries(db) -> int:
    """Cases in the example database's primary corpus: those the next run replays first as
    known failures (the secondary and pareto corpora are sub-keys: key + b'.secondary')."""
    return sum(len(v) for k, v in db.data.items() if not k.endswith((b".secondary", b".pareto")))


@pytest.mark.parametrize("name, cut", [("golden", "budget"), ("stream0_only", "shrink budget")])
def test_a_case_cut_short_is_not_saved_as_a_failure(registry, name, cut):
    """The case during which the budget (or the shrink budget) ran out is not run; Hypothesis saves
    the case of any exception but KeyboardInterrupt to the primary corpus, where tomorrow's run
    would replay it first in place of yesterday's failure."""
    from hypothesis.database import InMemoryExampleDatabase
    db = InMemoryExampleDatabase()
    opts = engine.FuzzOptions(device="cpu", chunk_examples=40, limits=PROFILES["ci"].cpu, database=db,
                              max_cases=5 if cut == "budget" else 60, shrink_budget_s=0.0,
                              stop_on_first_failure=True)
    stats = engine.fuzz_backend(name, registry.get(name).capabilities, InProcessExecutor(registry, "cpu"),
                                900.0, opts)
    assert len(stats.findings) == (name != "golden")
    assert _primary_entries(db) == len(stats.findings)    # each a failure that replays as one


def test_how_a_chunk_ended_is_read_from_what_hypothesis_raised():
    """Hypothesis replays every failure at a chunk's end and raises what each replay raised,
    several as one group: two replays after the shrink budget ran out are a group of two
    ShrinkBudgetSpent, a chunk like any other, not the end of the run."""
    spent, budget, fail = engine.ShrinkBudgetSpent(), engine.OutOfBudget(), AssertionError("dx")
    assert engine.chunk_end(BaseExceptionGroup("2 failures", [spent, engine.ShrinkBudgetSpent()])) == "next"
    assert engine.chunk_end(BaseExceptionGroup("2", [fail, spent])) == "next"
    assert engine.chunk_end(ExceptionGroup("2", [fail, ValueError()])) == "next"
    assert engine.chunk_end(spent) == engine.chunk_end(fail) == "next"
    assert engine.chunk_end(budget) == engine.chunk_end(BaseExceptionGroup("2", [spent, budget])) == "budget"
    assert engine.chunk_end(KeyboardInterrupt()) == "interrupted"
    assert engine.chunk_end(BaseExceptionGroup("2", [budget, BaseExceptionGroup("1", [KeyboardInterrupt()])])) \
        == "interrupted"
    assert engine.chunk_end(SystemExit(3)) == engine.chunk_end(BaseExceptionGroup("2", [fail, SystemExit(3)])) \
        == "raise"
