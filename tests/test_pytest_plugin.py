"""Reports under reports/ run as regression tests: pass, fail, strict xfail, invalid file."""
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points

from conftest import ROOT
from fuzz.cases import CaseParams
from fuzz.check import run_case
from fuzz.reports import build_report, write_report
import tests.mutants as M


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
    r = _pytest(tmp_path)
    got = outcomes(r.stdout)
    # each report fails on its own backend, and only there: golden passes the same case
    failed = {k for k, (outcome, _) in got.items() if outcome == "FAILED"}
    assert failed == {node(unfixed, "stream0_only"), "reports/broken/bad.json::invalid-report"}, r.stdout
    assert got[node(unfixed, "golden")] == ("PASSED", None)
    assert got[node(marked, "golden")] == ("PASSED", None)
    assert got[node(marked, "dbias_res_twice")] == ("XFAIL", "bug 7")
    assert not [k for k, (outcome, _) in got.items() if outcome in ("XPASS", "ERROR")], r.stdout
    rid = json.loads(unfixed.read_text())["id"]
    lines = r.stdout.splitlines()
    assert any(re.fullmatch(rf"report {rid} fails on stream0_only \(cpu\): tolerance: dx: worst error/bound "
                            r"[0-9.e+]+ at \[0, 0, 1, \d\] \(out 0, truth .*\)", line) for line in lines), r.stdout
    assert any(re.fullmatch(r"report bad\.json fails on None \(cpu\): .*/reports/broken/bad\.json: line 1: "
                            r"not valid JSON: .*", line) for line in lines), r.stdout
    assert r.returncode == 1


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
