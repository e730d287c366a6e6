"""The command line end to end: run, summaries, replay, exit codes, bad input, kills."""
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT
from verbatim import run_line
from inproc import cli
from fuzz.reports import iter_reports, load_report, sweep_reports_dir

ENV = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", TRITON_INTERPRET="1")




def test_run_golden_on_cpu_writes_summaries(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / "reports" / "golden" / ".0badc0de.json.k1ll3d.tmp"   # debris of a killed run
    stale.parent.mkdir(parents=True)
    stale.write_text('{"schema": ')
    r = cli("run", "--backend", "golden", "--budget", "300s", "--max-cases", "12", "--profile", "ci", "--out", out,
            "--reports", tmp_path / "reports", "--db", tmp_path / "db")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not stale.exists() and "removed 1 unfinished report file(s)" in r.stdout
    assert "no CUDA device: running on the CPU" in r.stdout or "cuda" in r.stdout
    doc = json.loads((out / "summary.json").read_text())
    (golden,) = doc["backends"]
    assert golden["cases"] == 12 and golden["failed"] == 0 and not doc["failed"]
    assert set(golden["worst_ratio"]) >= {"dx", "dphi", "dalpha", "dbias", "dgamma"}
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.find("testsuite").get("failures") == "0"
    assert "| golden |" in (out / "summary.md").read_text()


def test_run_finds_mutant_then_replay_fails_until_fixed(tmp_path):
    reports = tmp_path / "reports"
    # a fixed amount of work (the bug shows within a few dozen cases), not a time
    r = cli("run", "--backend", "stream0_only", "--plugin", "tests.mutants:stream0_only", "--budget", "600s",
            "--max-cases", "200", "--profile", "ci", "--out", tmp_path / "out",
            "--reports", reports, "--db", "none", "--stop-on-first-failure", "--shrink-budget", "5s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL stream0_only" in r.stdout
    # the run stops after the chunk that found the bug; its shrinking may meet the same bug as
    # another failure kind (a NaN where the zeroed dx meets an infinite truth): one report each
    paths = iter_reports(reports)
    reps = {p: load_report(p) for p in paths}
    assert paths and all(rep["failing_components"] == ["dx"] for rep in reps.values()), reps
    path = next((p for p, rep in reps.items() if rep["kind"] == "tolerance"), paths[0])
    rep = reps[path]
    junit = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert junit.find("testsuite").get("failures") == str(len(paths))
    # the one-line replay command in the report runs as written (a fresh shell at the repository
    # root, the installed command), loads only the plugin of its backend, and still fails
    assert rep["plugins"] == ["tests.mutants:stream0_only"]
    assert f"- replay: `{rep['replay']}`" in (tmp_path / "out" / "summary.md").read_text()   # the same line
    r2 = run_line(rep["replay"], tmp_path)
    assert r2.returncode == 1 and "FAIL (tolerance)" in r2.stdout and "dx" in r2.stdout, r2.stdout + r2.stderr
    # "fixed": the same case against the correct implementation passes
    r3 = cli("replay", path, "--backend", "golden")
    assert r3.returncode == 0, r3.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--budget", "ten minutes"], "--budget 'ten minutes'"),
    (["run", "--budget", "0s"], "must be more than zero"),
    (["run", "--backend", "nope", "--budget", "1s"], "--backend nope: no such backend"),
    (["run", "--plugin", "no_such_module_zz:x", "--budget", "1s"], "cannot import 'no_such_module_zz'"),
    (["run", "--plugin", "nocolon", "--budget", "1s"], "must look like 'module:attr'"),
    (["run", "--profile", "weekly", "--budget", "1s"], "profile 'weekly'"),
    (["replay", "/nonexistent/r.json"], "cannot read"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_tolerances_file_and_unwritable_reports(tmp_path):
    bad = tmp_path / "tol.yaml"
    bad.write_text("version: 1\nlambda: -3\n")
    r = cli("run", "--budget", "1s", "--tolerances", bad)
    assert r.returncode == 2 and f"{bad}: lambda" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("run", "--budget", "1s", "--backend", "golden", "--reports", blocker / "sub")
    assert r.returncode == 2 and "--reports" in r.stderr and "not writable" in r.stderr


def test_malformed_report_replay_is_exit_2(tmp_path):
    f = tmp_path / "r.json"
    f.write_text('{"schema": 1, "id": "x"')
    r = cli("replay", f)
    assert r.returncode == 2 and str(f) in r.stderr and "not valid JSON" in r.stderr


def test_debug_shows_traceback():
    r = cli("--debug", "run", "--budget", "nonsense")
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_run_leaves_only_complete_reports(tmp_path, sig):
    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "run", "--backend", "d_tail_dropped,dbias_res_twice",
                             "--plugin", "tests.mutants:d_tail_dropped", "--plugin", "tests.mutants:dbias_res_twice",
                             "--budget", "120s", "--profile", "ci", "--out", tmp_path / "out", "--reports", reports,
                             "--db", "none", "--no-isolate", "--device", "cpu"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a runner started in the background ignores SIGINT, and its children
                            # inherit that: give the run Ctrl-C's default behaviour
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not iter_reports(reports) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.wait(60)
    files = iter_reports(reports)
    assert files, "nothing was found before the kill"
    for f in files:
        load_report(f)                  # every file is complete, valid JSON with all keys
    leftovers = [p for p in reports.rglob("*") if p.is_file() and p.suffix != ".json"]
    if sig == signal.SIGKILL:   # may die between creating a temporary file and renaming it
        assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers), leftovers
        assert sweep_reports_dir(reports) == len(leftovers)     # what the next run does first
        leftovers = [p for p in reports.rglob("*") if p.is_file() and p.suffix != ".json"]
        assert [load_report(f) for f in iter_reports(reports)]
    assert not leftovers
    if sig != signal.SIGKILL:     # Ctrl-C and SIGTERM end like a short run: partial summary, exit 130
        assert proc.returncode == 130, proc.stdout.read()
        doc = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert doc["interrupted"] and doc["backends"][0]["cases"] > 0


@pytest.mark.skipif(__import__("shutil").which("compute-sanitizer") is not None,
                    reason="compute-sanitizer is installed: the GPU replay is exercised on the GPU machine")
def test_sanitize_without_compute_sanitizer_is_a_clear_error(tmp_path):
    r = cli("replay", tmp_path / "r.json", "--sanitize")
    assert r.returncode == 2 and "compute-sanitizer is not on PATH" in r.stderr


def test_worker_that_cannot_start_is_a_harness_error(tmp_path):
    r = cli("run", "--plugin", "tests.worker_killer:backend", "--backend", "worker_killer", "--budget", "20s",
            "--device", "cpu", "--reports", tmp_path / "rep", "--out", tmp_path / "out", "--db", "none")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "worker_killer: fuzz worker failed to start (worker exited with code 3)" in r.stderr


def _warm_up_run(tmp_path, *extra, fail=False):
    env = dict(ENV, MHC_WARM_UP_MARK=str(tmp_path / "mark"), MHC_WARM_UP_FAIL="1" if fail else "0")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "run", "--plugin", "tests.warm_up_probe:backend",
                        "--backend", "warm_up_probe", "--budget", "300s", "--max-cases", "3", "--profile", "ci",
                        "--device", "cpu",
                        "--out", out, "--reports", tmp_path / "reports", "--db", "none", *extra],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    doc = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return r, doc, out


def test_warm_up_runs_once_before_the_cases_and_is_reported(tmp_path):
    r, doc, out = _warm_up_run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (probe,) = doc["backends"]
    assert probe["cases"] == 3 and probe["failed"] == 0          # every case saw the warm-up's file
    st = doc["warm_up"]["warm_up_probe"]
    assert st["prepared"] == 3 and isinstance(st["seconds"], float)
    assert f"warm-up warm_up_probe: {st['seconds']:.1f} s (prepared 3)" in r.stdout.splitlines()
    assert "warm_up_probe: warm-up before the budget, seconds" in (out / "summary.md").read_text()


def test_without_warm_up_the_cases_run_unprepared(tmp_path):
    r, doc, _ = _warm_up_run(tmp_path, "--no-warm-up")
    assert r.returncode == 1 and doc["failed"] and "warm_up" not in doc
    assert "case ran before the warm-up" in json.dumps(doc["backends"][0]["findings"])


def test_a_failing_warm_up_is_reported_and_the_run_goes_on(tmp_path):
    r, doc, _ = _warm_up_run(tmp_path, fail=True)
    assert "warm-up of warm_up_probe failed" in r.stdout and "toolchain missing" in r.stdout
    assert doc["warm_up"]["warm_up_probe"]["error"] == "RuntimeError: toolchain missing"
    assert doc["backends"][0]["cases"] == 3                      # the run went on (and its cases failed)


def test_sharded_run_warms_up_once_in_the_parent(tmp_path):
    r, doc, _ = _warm_up_run(tmp_path, "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("warm-up warm_up_probe") == 1
    assert doc["warm_up"]["warm_up_probe"]["prepared"] == 3
    assert doc["backends"][0]["cases"] == 6 and not doc["failed"]     # 3 per shard, each prepared


@pytest.mark.parametrize("earlier_command", [False, True])
def test_a_python_program_s_command_has_its_whole_budget(tmp_path, monkeypatch, earlier_command):
    """main([...]) called by a Python program an hour after it started, as its first command or
    a later one: the budget counts from that call, not from the process's start."""
    import fuzz
    from fuzz.cli import main
    monkeypatch.setattr(main, "called", earlier_command, raising=False)
    monkeypatch.setattr(fuzz, "STARTED", time.monotonic() - 3600)
    r = cli("run", "--backend", "golden", "--budget", "60s", "--max-cases", "3", "--profile", "ci", "--device", "cpu",
            "--no-isolate", "--db", "none", "--out", tmp_path / "out", "--reports", tmp_path / "rep")
    assert r.returncode == 0, r.stdout + r.stderr
    (golden,) = json.loads((tmp_path / "out" / "summary.json").read_text())["backends"]
    assert golden["cases"] == 3
