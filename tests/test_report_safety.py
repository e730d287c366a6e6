"""Reports are data: loading, replaying or collecting a hostile report runs nothing it names,
and every problem is one line (exit 2 from the CLI), never a traceback."""
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from conftest import ROOT
from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.cli import main
from fuzz.reports import ReportError, build_report, load_report, write_report

EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
def backend():
    pathlib.Path({marker!r}).write_text("called")
"""


def _report(backend="golden", plugins=(), **params) -> dict:
    p = dict(B=1, S=2, n=2, D=3, seed=5)
    p.update(params)
    res = CaseResult(backend, CaseParams(**{k: v for k, v in p.items() if k in ("B", "S", "n", "D", "seed")}),
                     "cpu", "fail", "tolerance", [], "planted")
    rep = build_report(res, env={})
    rep.update(params={**rep["params"], **p}, plugins=list(plugins))
    return rep


def _write(folder, name, rep_or_bytes):
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / name
    if isinstance(rep_or_bytes, bytes):
        f.write_bytes(rep_or_bytes)
    else:
        f.write_text(json.dumps(rep_or_bytes))
    return f


def hostile_reports(root, marker):
    """{label: path} of reports that try to run code or to exhaust the harness."""
    (root.parent / "evil_plugin.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return {
        "sys-exit": _write(root / "exits", "a.json", dict(_report("exits", ["sys:exit"]),
                                                          expected_failure={"reason": "planted"})),
        "os-abort": _write(root / "aborts", "b.json", _report("aborts", ["os:abort"])),
        "cwd-module": _write(root / "evil", "c.json", _report("evil", ["evil_plugin:backend"])),
        "huge-sizes": _write(root / "golden", "d.json", _report(B=10**12, S=10**12)),
        "deep-nesting": _write(root / "golden", "e.json", b'{"schema": ' + b"[" * 200000 + b"]" * 200000 + b"}"),
        "non-utf8": _write(root / "golden", "f.json", b'{"schema": 1, "id": "\xff\xfe\x80"}'),
        "shell-in-plugin": _write(root / "golden", "g.json", _report(plugins=["x; touch /tmp/pwned"])),
        "huge-digits": _write(root / "golden", "h.json", json.dumps(_report()).replace('"B": 1', '"B": ' + "9" * 9000)
                              .encode()),
    }


@pytest.mark.parametrize("label, message", [
    ("sys-exit", "backend 'exits' is not loaded"),
    ("os-abort", "backend 'aborts' is not loaded"),
    ("cwd-module", "backend 'evil' is not loaded"),
    ("huge-sizes", "case parameter B=1000000000000 is larger than"),
    ("deep-nesting", "JSON nested too deeply"),
    ("non-utf8", "not UTF-8 text"),
    ("shell-in-plugin", "plugins must be a list of module:attr names"),
    ("huge-digits", "not valid JSON"),
])
def test_hostile_report_replays_nothing_one_line_exit_2(tmp_path, monkeypatch, capsys, label, message):
    marker = tmp_path / "marker"
    path = hostile_reports(tmp_path / "reports", marker)[label]
    monkeypatch.chdir(tmp_path)                     # evil_plugin.py is importable from here
    rc = main(["replay", str(path), "--in-process", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 2 and not marker.exists(), (out, err)
    assert message in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1
    if label in ("sys-exit", "os-abort", "cwd-module"):
        assert load_report(path)["plugins"]         # well-formed data: only its backend is not loaded
    else:
        with pytest.raises(ReportError, match=message):
            load_report(path)


def test_missing_backend_line_is_the_command_to_run(tmp_path, capsys):
    path = _write(tmp_path / "r" / "stream0_only", "x.json", _report("stream0_only", ["tests.mutants:stream0_only"]))
    assert main(["replay", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"run: mhc-fuzz replay {path} --plugin tests.mutants:stream0_only")


def test_a_registered_backend_replays_whatever_plugins_the_report_names(tmp_path, monkeypatch, capsys):
    """golden is built in: the report's plugins are ignored, the case runs and passes."""
    marker = tmp_path / "marker"
    (tmp_path / "evil_plugin.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "r" / "golden", "x.json", _report("golden", ["sys:exit", "os:abort",
                                                                          "evil_plugin:backend"]))
    assert main(["replay", str(path), "--in-process", "--device", "cpu"]) == 0
    assert "PASS" in capsys.readouterr().out and not marker.exists()


def test_case_too_big_for_memory_is_exit_2_before_anything_is_allocated(tmp_path, capsys):
    path = _write(tmp_path / "r" / "golden", "x.json", _report(B=4096, S=4096, n=4, D=8192))
    assert main(["replay", str(path), "--in-process", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "TiB" not in err and "GiB to check on cpu" in err, err


def test_report_keeps_only_the_plugin_its_backend_needs(tmp_path):
    import tests.mutants as M
    res = CaseResult("stream0_only", CaseParams(1, 1, 2, 3), "cpu", "fail", "tolerance", [], "x")
    rep = build_report(res, plugins=M.targets() + ["some_unimported_module:backend"], env={})
    # the other 22 mutants are imported here and named otherwise: dropped; one it cannot see is kept
    assert rep["plugins"] == ["tests.mutants:stream0_only", "some_unimported_module:backend"]
    path, _ = write_report(rep, tmp_path)
    assert load_report(path)["replay"] == (f"mhc-fuzz replay {path} --plugin tests.mutants:stream0_only "
                                           "--plugin some_unimported_module:backend")


INSTALLED = any(ep.value == "fuzz.pytest_plugin" for ep in entry_points(group="pytest11"))


def test_pytest_collection_of_hostile_reports_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    reports = tmp_path / "reports"
    hostile_reports(reports, marker)
    _write(reports / "golden", "ok.json", _report("golden", ["sys:exit"]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    load = [] if INSTALLED else ["-p", "fuzz.pytest_plugin"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", *load, "-p", "no:cacheprovider", "-p", "no:xdist",
                        "--rootdir", str(tmp_path), "--mhc-reports", str(reports), "--mhc-in-process",
                        "--mhc-device", "cpu", str(reports), "-rA"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert not marker.exists() and "INTERNALERROR" not in out and "Traceback" not in out, out
    assert r.returncode == 1, out                               # the broken files fail, nothing passes silently
    # skipped with the option that would load its backend: never passed, nor an expected failure
    assert "SKIPPED" in out and "load it with --mhc-plugin sys:exit" in out and "XFAIL" not in out
    assert "load it with --mhc-plugin evil_plugin:backend" in out
    for problem in ("JSON nested too deeply", "not UTF-8 text", "larger than", "module:attr names"):
        assert problem in out, problem
    assert "PASSED" in out and "ok.json::golden" in out          # the data of a hostile report still runs


def test_replaying_a_segfault_and_a_hang_is_a_verdict_not_the_end_of_the_harness(tmp_path, capsys):
    """Their reports, as the run that found them wrote them, replay in the worker process by
    default: the segfault is `crash`, the hang `timeout` after the limit it overran."""
    paths = []
    for backend, params, kind, seconds in (("segfaults", CaseParams(1, 2, 1, 1), "crash", 0.1),
                                           ("hangs", CaseParams(1, 1, 1, 2), "timeout", 1.0)):
        res = CaseResult(backend, params, "cpu", "fail", kind, [], "found by a run", seconds)
        paths.append(write_report(build_report(res, plugins=[f"tests.mutants:{backend}"], env={}), tmp_path)[0])
    assert load_report(paths[1])["case_timeout_s"] == 1.0
    rc = main(["replay", *map(str, paths), "--plugin", "tests.mutants:segfaults", "--plugin", "tests.mutants:hangs"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL (crash) worker killed by signal SIGSEGV" in out, out
    assert "FAIL (timeout) no result within the per-case timeout of 1 s" in out, out
