"""Onboarding: an out-of-tree package installed into a fresh venv is discovered through its
entry point, and `mhc-fuzz onboard` passes it; broken or lying backends fail the card."""
import json
import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT
from fuzz.reports import iter_reports, load_report
from verbatim import run_line

ENV = dict(os.environ, COLUMNS="200", TRITON_INTERPRET="1")


def test_example_package_in_a_venv_is_discovered_and_onboarded(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the new venv sees this environment's packages (torch, mhc-fuzz) without downloading them
    parent = sysconfig.get_paths()["purelib"]
    with open(os.path.join(site, "_parent_env.pth"), "w") as fh:
        fh.write(f"import site; site.addsitedir({parent!r}); site.addsitedir({str(ROOT)!r})\n")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        ROOT / "examples" / "minimal_backend"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([py, "-m", "fuzz.cli", "backends"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "blocked_torch" in r.stdout and "entry point" in r.stdout, r.stdout + r.stderr
    card = tmp_path / "card.json"
    r = subprocess.run([py, "-m", "fuzz.cli", "onboard", "--backend", "blocked_torch", "--device", "cpu",
                        "--budget", "15s", "--reports", tmp_path / "rep", "--json", card],
                       capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(card.read_text())
    assert doc["passed"] and {c["check"] for c in doc["checks"]} >= {
        "contract", "available", "refuses unsupported inputs", "shape sweep within tolerance", "short fuzz",
        "inputs left unchanged", "no writes outside its buffers", "determinism as declared", "speed"}


def _onboard(tmp_path, target, **env):
    card = tmp_path / "card.json"
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "onboard", target, "--device", "cpu", "--budget", "5s",
                        "--reports", tmp_path / "rep", "--json", card], cwd=ROOT, capture_output=True, text=True,
                       env=dict(ENV, PYTHONPATH=str(ROOT), **env), timeout=600)
    return r, json.loads(card.read_text()) if card.exists() else None


def test_onboard_fails_a_buggy_backend_with_the_right_lines(tmp_path):
    r, doc = _onboard(tmp_path, "tests.mutants:accepts_unsupported")
    assert r.returncode == 1
    failed = {c["check"] for c in doc["checks"] if not c["ok"]}
    assert "refuses unsupported inputs" in failed and "stays within its claims" in failed
    # the short fuzz's report replays as written, from the repository root in a fresh shell
    rep = load_report(iter_reports(tmp_path / "rep")[0])
    r = run_line(rep["replay"], tmp_path)
    assert r.returncode == 1 and f"FAIL ({rep['kind']})" in r.stdout, r.stdout + r.stderr


def test_onboard_of_a_broken_target_fails_on_the_contract(tmp_path):
    r, doc = _onboard(tmp_path, "no_such_module_q:backend")
    assert r.returncode == 1 and not doc["checks"][0]["ok"] and "cannot import" in doc["checks"][0]["detail"]


@pytest.mark.parametrize("fail", [False, True])
def test_onboard_runs_the_warm_up_first_and_shows_it(tmp_path, fail):
    r, doc = _onboard(tmp_path, "tests.warm_up_probe:backend", MHC_WARM_UP_MARK=str(tmp_path / "mark"),
                      MHC_WARM_UP_FAIL="1" if fail else "0")
    checks = {c["check"]: c for c in doc["checks"]}
    if fail:      # a warm-up that raises fails the card (and the probe's cases, unprepared, fail too)
        assert r.returncode == 1 and not checks["warm-up"]["ok"]
        assert "RuntimeError: toolchain missing" in checks["warm-up"]["detail"]
    else:         # its cases ran after it: the sweep, which needs the warm-up's file, passes
        assert r.returncode == 0, r.stdout + r.stderr
        assert checks["warm-up"]["ok"] and "prepared 3" in checks["warm-up"]["detail"]
        assert checks["shape sweep within tolerance"]["ok"]
