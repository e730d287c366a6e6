"""Onboarding: an out-of-tree package installed into a fresh venv is discovered through its
entry point, and `mhc-fuzz onboard` passes it (by name, or by module:attr while installed);
broken or lying backends fail the card; `pytest --mhc-onboard` makes the card test items of a
backend's own suite; the Triton example onboards on the CPU under the interpreter."""
import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT
from fuzz.onboard import CHECKS
from fuzz.reports import iter_reports, load_report
from verbatim import run_line
from inproc import cli

ENV = dict(os.environ, COLUMNS="200", TRITON_INTERPRET="1")


def _venv_with_minimal_example(tmp_path):
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
    return py


@pytest.mark.slow     # builds a venv and pip-installs the example: minutes on 2 cores
def test_example_package_in_a_venv_is_discovered_and_onboarded_by_target(tmp_path):
    py = _venv_with_minimal_example(tmp_path)
    r = subprocess.run([py, "-m", "fuzz.cli", "backends"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "blocked_torch" in r.stdout and "entry point" in r.stdout, r.stdout + r.stderr
    # installed, and named by module:attr too: the entry point and the target are one backend
    card = tmp_path / "card.json"
    r = subprocess.run([py, "-m", "fuzz.cli", "onboard", "mhc_example_backend:backend", "--device", "cpu",
                        "--budget", "5s", "--reports", tmp_path / "rep", "--json", card],
                       capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(card.read_text())
    assert doc["backend"] == "blocked_torch" and doc["passed"]
    assert [c["check"] for c in doc["checks"]] == [c for c in CHECKS if c != "warm-up"]


def _onboard(tmp_path, target, **env):
    card = tmp_path / "card.json"
    args = ["onboard", target, "--device", "cpu", "--budget", "5s", "--reports", tmp_path / "rep", "--json", card]
    if env:      # read by the backend in its worker process: a process of its own, started with them
        r = subprocess.run([sys.executable, "-m", "fuzz.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                           text=True, env=dict(ENV, PYTHONPATH=str(ROOT), **env), timeout=600)
    else:
        r = cli(*args)
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


@pytest.mark.parametrize("fail", [pytest.param(False, marks=pytest.mark.slow), True])
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


def _probe_installed(tmp_path):
    """A distribution whose entry point registers tests.onboard_probe:narrow as narrow_probe."""
    site = tmp_path / "site"
    dist = site / "narrow_probe-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: narrow-probe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mhc_fuzz.backends]\nnarrow_probe = tests.onboard_probe:narrow\n")
    return site


def _pytest_onboard(repo, pythonpath, *specs, python=sys.executable, env=None):
    """Run pytest in `repo` (a backend author's repository) with the card's items added."""
    env = dict(env or ENV)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    installed = subprocess.run([python, "-c", "from importlib.metadata import entry_points; print(any("
                                "e.value == 'fuzz.pytest_onboard' for e in entry_points(group='pytest11')))"],
                               env=env, capture_output=True, text=True).stdout.strip() == "True"
    args = [python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(repo),
            *([] if installed else ["-p", "fuzz.pytest_onboard"]), "--mhc-onboard-budget", "5m",
            "--mhc-onboard-max-cases", "3",          # a fixed amount of work: the verdict does not depend on speed
            "--mhc-onboard-device", "cpu", "--mhc-onboard-markdown", str(repo / "card.md")]
    for spec in specs:
        args += ["--mhc-onboard", spec]
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)


def _own_suite(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "test_own.py").write_text("def test_own_kernel_unit():\n    assert 1 + 1 == 2\n")
    return repo


def test_pytest_mhc_onboard_makes_each_check_a_test_item(tmp_path):
    repo = _own_suite(tmp_path)
    r = _pytest_onboard(repo, [ROOT, _probe_installed(tmp_path)], "narrow_probe", "tests.onboard_probe:narrow",
                        "tests.onboard_probe:dbias_twice")
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "PASSED test_own.py::test_own_kernel_unit" in out
    slug = {c: c.replace(" ", "-") for c in CHECKS}
    for spec in ("narrow_probe", "tests.onboard_probe:narrow"):      # the name and the target: same card
        for check in CHECKS:
            want = "SKIPPED" if check == "warm-up" else "PASSED"
            if want == "PASSED":
                assert f"PASSED mhc-onboard[{spec}]::{slug[check]}" in out, out
    assert "the backend has no warm_up()" in out
    failed = set(re.findall(r"FAILED mhc-onboard\[tests.onboard_probe:dbias_twice\]::(\S+)", out))
    assert failed == {"shape-sweep-within-tolerance", "short-fuzz"}, out
    assert "tolerance (dbias)" in out and "replay: mhc-fuzz replay" in out and "--plugin tests.onboard_probe:dbias_twice" in out
    cards = {spec: out.split(f"mhc-fuzz onboarding card: {spec} ")[1] for spec in ("narrow_probe", "tests.onboard_probe:narrow")}
    checks = {spec: re.findall(r"^  (PASS|FAIL)  (.+)$", text.split("onboarding passed")[0], re.M)
              for spec, text in cards.items()}
    assert checks["narrow_probe"] == checks["tests.onboard_probe:narrow"] and len(checks["narrow_probe"]) == 10
    page = (repo / "card-tests.onboard_probe_dbias_twice.md").read_text()
    assert "**FAILED**" in page and "| short fuzz | **FAIL** |" in page and "- replay: `mhc-fuzz replay" in page


@pytest.mark.slow     # every Triton kernel under the interpreter
def test_triton_example_onboards_on_the_cpu_under_the_interpreter(tmp_path):
    card, page = tmp_path / "card.json", tmp_path / "card.md"
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "onboard", "mhc_triton_example:backend", "--device", "cpu",
                        "--budget", "2s", "--reports", tmp_path / "rep", "--json", card, "--markdown", page],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(ENV, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "examples" / "triton_backend")])))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(card.read_text())
    assert doc["backend"] == "triton_example" and doc["passed"]
    assert {k: doc["declared"][k] for k in ("x_dtypes", "n_values", "d_multiple", "deterministic", "gemm_precision")} \
        == {"x_dtypes": "bf16", "n_values": "4, 6, 8", "d_multiple": "16", "deterministic": "yes",
            "gemm_precision": "dx=tf32, default=fp32"}
    checks = {c["check"]: c["detail"] for c in doc["checks"]}
    assert re.match(r"[4-9] out-of-capability inputs refused", checks["refuses unsupported inputs"])
    assert re.match(r"(\d+)/\1 cases pass", checks["shape sweep within tolerance"])
    assert checks["speed"].startswith("not measured on the CPU") and doc["speed"] == {"measured": False,
                                                                                        "why": checks["speed"]}
    text = page.read_text()
    assert "| shape sweep within tolerance | PASS |" in text and "| gemm_precision | dx=tf32, default=fp32 |" in text


@pytest.mark.slow
def test_pytest_mhc_onboard_in_a_venv_with_the_installed_example(tmp_path):
    py = _venv_with_minimal_example(tmp_path)
    repo = _own_suite(tmp_path)
    r = _pytest_onboard(repo, [], "blocked_torch", python=py)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED test_own.py::test_own_kernel_unit" in r.stdout
    assert len(re.findall(r"PASSED mhc-onboard\[blocked_torch\]::", r.stdout)) == len(CHECKS) - 1
    assert "onboarding report card: blocked_torch (cpu)" in r.stdout and (repo / "card.md").exists()
