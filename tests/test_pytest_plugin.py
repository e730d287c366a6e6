"""Reports under reports/ run as regression tests: pass, fail, strict xfail, invalid file."""
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

from conftest import ROOT
from fuzz.cases import CaseParams, make_inputs
from fuzz.check import run_case
from fuzz.reports import build_report, write_report
import tests.mutants as M
from impls.schema import BACKWARD_ARGS


def _report(tmp_path, mutant, params, expected_failure=None):
    res = run_case(mutant, params, "cpu")
    assert res.failed
    path, _ = write_report(build_report(res, plugins=[f"tests.mutants:{mutant.name}"], env={}), tmp_path / "reports")
    if expected_failure:
        doc = json.loads(path.read_text())
        doc["expected_failure"] = {"reason": expected_failure}
        path.write_text(json.dumps(doc))
    return path


INSTALLED = any(ep.value == "fuzz.pytest_plugin" for ep in entry_points(group="pytest11"))


def _pytest(tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    load = [] if INSTALLED else ["-p", "fuzz.pytest_plugin"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *load, "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "--mhc-reports", str(tmp_path / "reports"),
                           str(tmp_path / "reports"), "-rA", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_reports_collected_per_backend_with_strict_xfail(tmp_path):
    _report(tmp_path, M.stream0_only, CaseParams(1, 1, 2, 3, seed=1))                       # unfixed, unmarked
    _report(tmp_path, M.dbias_res_twice, CaseParams(1, 1, 1, 1, seed=2), expected_failure="bug 7")
    (tmp_path / "reports" / "broken").mkdir()
    (tmp_path / "reports" / "broken" / "bad.json").write_text("{oops")
    # a reduced report: its tensors stored beside it
    res = run_case(M.d_tail_dropped, CaseParams(1, 2, 2, 17, seed=3), "cpu")
    inp = make_inputs(res.params)
    path, _ = write_report(build_report(res, plugins=["tests.mutants:d_tail_dropped"], env={}), tmp_path / "reports",
                           tensors={k: getattr(inp, k) for k in BACKWARD_ARGS})
    doc = json.loads(path.read_text())
    doc["expected_failure"] = {"reason": "tensor-backed"}
    path.write_text(json.dumps(doc))
    r = _pytest(tmp_path, "--mhc-plugin", "tests.mutants:stream0_only", "--mhc-plugin", "tests.mutants:dbias_res_twice",
                "--mhc-plugin", "tests.mutants:d_tail_dropped")
    out = r.stdout
    assert "tensor-backed" in out and f"PASSED reports/d_tail_dropped/{path.name}::golden" in out
    # the mutant's own report still fails on it; golden passes the same case
    assert "FAILED" in out and "stream0_only" in out
    assert "PASSED" in out and "::golden" in out
    assert "XFAIL" in out and "bug 7" in out
    assert "invalid-report" in out and "not valid JSON" in out
    # a plugin's backend (a planted bug) replays its own reports only
    assert not any("stream0_only/" in line and "::dbias_res_twice" in line for line in out.splitlines())
    assert any("dbias_res_twice/" in line and "::dbias_res_twice" in line for line in out.splitlines())
    assert r.returncode == 1


def test_crash_and_hang_reports_are_verdicts_not_the_end_of_pytest(tmp_path):
    """The reports of a segfault and a hang (as the run that found them wrote them) run in the
    worker process under pytest: each is its report's strict xfail, and pytest goes on."""
    from fuzz.check import CaseResult
    from fuzz.kinds import FailureKind
    for mutant, params, kind, seconds in ((M.segfaults, CaseParams(1, 2, 1, 1), FailureKind.CRASH, 0.2),
                                          (M.hangs, CaseParams(1, 1, 1, 2), FailureKind.TIMEOUT, 2.0)):
        res = CaseResult(mutant.name, params, "cpu", "fail", kind, [], "found by a run", seconds)
        path, _ = write_report(build_report(res, plugins=[f"tests.mutants:{mutant.name}"], env={}),
                               tmp_path / "reports")
        doc = json.loads(path.read_text())
        doc["expected_failure"] = {"reason": f"planted {kind}"}
        path.write_text(json.dumps(doc))
    r = _pytest(tmp_path, "--mhc-plugin", "tests.mutants:segfaults", "--mhc-plugin", "tests.mutants:hangs",
                "-k", "not golden and not triton and not tilelang")
    out = r.stdout
    assert out.count("XFAIL") >= 2 and "planted crash" in out and "planted timeout" in out, out
    assert r.returncode == 0 and "INTERNALERROR" not in out, out


def test_fixed_bug_under_strict_xfail_shows_as_xpass_failure(tmp_path):
    # a report written for a mutant, then replayed against a backend with the bug "fixed"
    path = _report(tmp_path, M.dbias_res_twice, CaseParams(1, 1, 1, 1, seed=2), expected_failure="bug 7")
    doc = json.loads(path.read_text())
    doc["backend"] = "golden"          # golden computes it right: the strict xfail flips
    doc["plugins"] = []
    path.write_text(json.dumps(doc))
    r = _pytest(tmp_path, "-k", "golden")
    assert "XPASS(strict)" in r.stdout and r.returncode == 1
