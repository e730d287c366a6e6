"""Failures that depend on earlier calls: fresh processes, the call log, confirmation alone,
minimization of the sequence (ddmin), reports that record it and replay that reruns it."""

import pytest

from conftest import ROOT
from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.executor import SubprocessExecutor
from fuzz.history import HistoryTriage, ddmin, replay_in_fresh_worker
from fuzz.kinds import FailureKind
from fuzz.reports import build_report, load_report, write_report

PLUGINS = ["tests.mutants:stale_alpha", "tests.mutants:first_call_wrong", "tests.mutants:stream0_only",
           "tests.mutants:segfaults"]
ENV = {"PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}


def test_ddmin_finds_the_calls_that_matter_in_order():
    calls = []

    def needs(*wanted):
        def fails(seq):
            calls.append(seq)
            it = iter(seq)
            return all(w in it for w in wanted)          # the wanted items, in this order
        return fails

    assert ddmin(list(range(32)), needs(17), 100) == [17] and len(calls) <= 10   # ~2 log2(32) trials
    assert ddmin(list(range(32)), needs(3, 29), 100) == [3, 29]
    assert ddmin(list(range(32)), needs(29, 3), 100) == list(range(32))      # order kept: 29 never precedes 3
    calls.clear()
    assert len(ddmin(list(range(32)), needs(3, 29), 12)) > 2 and len(calls) == 12   # stops at the trial cap
    assert ddmin([4], needs(4), 10) == [4]


@pytest.fixture(scope="module")
def executor():
    ex = SubprocessExecutor(PLUGINS, "cpu", None, 60, env=ENV)
    yield ex
    ex.close()


def test_a_first_call_case_runs_in_a_fresh_process(executor):
    p = CaseParams(1, 2, 4, 8, seed=1)
    assert executor.run("first_call_wrong", p).kind == FailureKind.FIRST_CALL     # new shape in the worker
    assert executor.run("first_call_wrong", p).status == "pass"                  # seen before there
    fresh = CaseParams(1, 2, 4, 8, seed=1, first_call=True)
    assert executor.run("first_call_wrong", fresh).kind == FailureKind.FIRST_CALL
    assert executor.run("first_call_wrong", fresh).kind == FailureKind.FIRST_CALL  # every time
    assert [c for _, c in executor.call_log][-2:] == [p, p]                     # fresh runs are not logged


def test_a_crash_in_a_fresh_process_is_contained(executor):
    res = executor.run("segfaults", CaseParams(1, 2, 2, 4, first_call=True))
    assert res.kind == FailureKind.CRASH and "SIGSEGV" in res.message
    assert executor.run_fresh("stream0_only", CaseParams(1, 1, 1, 4)).status == "pass"   # n=1: no bug


def test_history_dependent_failure_is_confirmed_minimized_reported_and_replayed(executor, tmp_path):
    first = CaseParams(1, 2, 4, 8, seed=1, alpha=(0.5, 1.0, 1.0))
    executor.run("stale_alpha", first)
    executor.run("stream0_only", CaseParams(1, 1, 1, 4))
    executor.run("stale_alpha", first)
    case = CaseParams(1, 2, 2, 4, seed=7)
    res = executor.run("stale_alpha", case)
    assert res.kind == FailureKind.TOLERANCE             # alpha of the first call, in the worker
    triage = HistoryTriage(executor, True, {})
    found = triage.classify(res)
    assert found.kind == FailureKind.HISTORY_DEPENDENT and "passes alone" in found.message
    assert found.history == [{"backend": "stale_alpha", "params": first.to_dict()}]
    assert triage.classify(res) is None                  # the same failure again: already recorded

    path, _ = write_report(build_report(found, plugins=PLUGINS), tmp_path)
    rep = load_report(path)
    assert rep["kind"] == "history-dependent" and rep["history"] == found.history
    # replay makes the earlier calls first, in a fresh process (the command line's replay of such
    # a report: the kill table's, tests/test_mutants.py)
    again = replay_in_fresh_worker(rep, "stale_alpha", "cpu", ["tests.mutants:stale_alpha"], case_timeout_s=60)
    assert again.kind == FailureKind.HISTORY_DEPENDENT and again.signature() == rep["signature"], again.message
    assert "after 1 earlier call(s)" in again.message and "tolerance" in again.message, again.message
    assert executor.run_fresh("stale_alpha", case).status == "pass"          # alone it passes


def test_a_failure_that_fails_alone_is_left_as_it_is(executor):
    res = executor.run("stream0_only", CaseParams(1, 2, 4, 8, seed=2))
    assert res.kind == FailureKind.TOLERANCE
    triage = HistoryTriage(executor, True, {})
    assert triage.classify(res) is res and triage.seen[res.signature()] == "alone"


class _Scripted:
    """An executor whose fresh-process runs give scripted verdicts (no process is started)."""

    def __init__(self, history, verdicts):
        self.history, self.verdicts, self.sequences = history, list(verdicts), []

    def recent_calls(self):
        return list(self.history)

    def run_sequence(self, name, params, seq, deadline=None, **options):
        self.sequences.append(list(seq))
        kind = self.verdicts.pop(0)
        status = "fail" if kind else "pass"
        return CaseResult(name, params, "cpu", status, kind), []


def _failure(kind=FailureKind.TOLERANCE):
    return CaseResult("b", CaseParams(1, 2, 2, 4, seed=3), "cpu", "fail", kind, message="bad")


def test_a_nondeterministic_verdict_is_not_triaged():
    """Two calls that differ is a random verdict: no number of alone runs can tell it from history."""
    ex = _Scripted([("b", CaseParams(1, 1, 1, 4))], [])
    res = _failure(FailureKind.NONDETERMINISTIC)
    assert HistoryTriage(ex).classify(res) is res and ex.sequences == []


def test_a_failure_that_comes_back_only_sometimes_with_its_history_is_not_history_dependent():
    """Alone it passes every run; with its history it fails once and then passes (a random bug):
    kept as it was, with a note, not reported as history-dependent."""
    earlier = [("b", CaseParams(1, 1, 1, 4, seed=s)) for s in range(3)]
    ex = _Scripted(earlier, ["", FailureKind.TOLERANCE, ""])
    res = _failure()
    found = HistoryTriage(ex).classify(res)
    assert found.kind == FailureKind.TOLERANCE and "did not reproduce it every time" in found.message
    assert [len(s) for s in ex.sequences] == [5, 3, 3]      # 6 runs alone in one process, the history twice
