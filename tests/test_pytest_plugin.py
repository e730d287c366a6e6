"""Reports under reports/ run as regression tests: pass, fail, strict xfail, invalid file."""
import json
import os
import re
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
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1", COLUMNS="400")
    env.pop("PYTEST_XDIST_WORKER", None)
    load = [] if INSTALLED else ["-p", "fuzz.pytest_plugin"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *load, "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "--mhc-reports", str(tmp_path / "reports"),
                           str(tmp_path / "reports"), "-rA", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


SUMMARY_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+)(?: - (.*))?$")


def outcomes(stdout: str) -> dict:
    """node id -> (outcome, message), from the whole lines of pytest's -rA short summary."""
    found = {}
    for line in stdout.splitlines():
        m = SUMMARY_LINE.match(line)
        if m:
            assert m[2] not in found, f"{m[2]} reported twice"
            found[m[2]] = (m[1], m[3])
    return found


def node(path, backend) -> str:
    return f"reports/{path.parent.name}/{path.name}::{backend}"


def test_reports_collected_per_backend_with_strict_xfail(tmp_path):
    unfixed = _report(tmp_path, M.stream0_only, CaseParams(1, 1, 2, 3, seed=1))          # unfixed, unmarked
    marked = _report(tmp_path, M.dbias_res_twice, CaseParams(1, 1, 1, 1, seed=2), expected_failure="bug 7")
    (tmp_path / "reports" / "broken").mkdir()
    (tmp_path / "reports" / "broken" / "bad.json").write_text("{oops")
    # a reduced report: its tensors stored beside it
    res = run_case(M.d_tail_dropped, CaseParams(1, 2, 2, 17, seed=3), "cpu")
    inp = make_inputs(res.params)
    reduced, _ = write_report(build_report(res, plugins=["tests.mutants:d_tail_dropped"], env={}),
                              tmp_path / "reports", tensors={k: getattr(inp, k) for k in BACKWARD_ARGS})
    doc = json.loads(reduced.read_text())
    doc["expected_failure"] = {"reason": "tensor-backed"}
    reduced.write_text(json.dumps(doc))
    r = _pytest(tmp_path, "--mhc-plugin", "tests.mutants:stream0_only", "--mhc-plugin", "tests.mutants:dbias_res_twice",
                "--mhc-plugin", "tests.mutants:d_tail_dropped")
    got = outcomes(r.stdout)
    # each report fails on its own backend, and only there: golden passes the same case; a
    # plugin's backend (a planted bug) replays its own reports only
    failed = {k for k, (outcome, _) in got.items() if outcome == "FAILED"}
    assert failed == {node(unfixed, "stream0_only"), "reports/broken/bad.json::invalid-report"}, r.stdout
    assert got[node(unfixed, "golden")] == ("PASSED", None)
    assert got[node(marked, "golden")] == ("PASSED", None)
    assert got[node(marked, "dbias_res_twice")] == ("XFAIL", "bug 7")
    assert got[node(reduced, "d_tail_dropped")] == ("XFAIL", "tensor-backed")
    assert got[node(reduced, "golden")] == ("PASSED", None)
    assert not any(k.startswith(f"reports/{p.parent.name}/") and k.endswith(f"::{m}") for k in got
                   for p in (unfixed, marked, reduced) for m in ("stream0_only", "dbias_res_twice", "d_tail_dropped")
                   if m != p.parent.name), r.stdout
    assert not [k for k, (outcome, _) in got.items() if outcome in ("XPASS", "ERROR")], r.stdout
    rid = json.loads(unfixed.read_text())["id"]
    lines = r.stdout.splitlines()
    assert any(re.fullmatch(rf"report {rid} fails on stream0_only \(cpu\): tolerance: dx: worst error/bound "
                            r"[0-9.e+]+ at \[0, 0, 1, \d\] \(out 0, truth .*\)", line) for line in lines), r.stdout
    assert any(re.fullmatch(r"report bad\.json fails on None \(cpu\): .*/reports/broken/bad\.json: line 1: "
                            r"not valid JSON: .*", line) for line in lines), r.stdout
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
    assert outcomes(r.stdout) == {node(path, "golden"): ("FAILED", "[XPASS(strict)] bug 7")}, r.stdout
    assert r.returncode == 1
