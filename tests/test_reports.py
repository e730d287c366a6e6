"""Reports: dedupe by signature keeps the smallest case; writes are atomic under concurrency."""
import json
import multiprocessing as mp

import pytest

from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.compare import Verdict
from fuzz.reports import (ReportError, _locked, build_report, iter_reports, load_report, sweep_reports_dir,
                          write_report)


def _result(D, backend="bk", comps=("dx",)):
    v = [Verdict(c, False, 1.0, 0.1, 10.0, (0,), 0) for c in comps]
    return CaseResult(backend, CaseParams(1, 2, 4, D, seed=D), "cpu", "fail", "tolerance", v, "bad")


def test_smallest_case_wins(tmp_path):
    env = {"test": True}
    p1, w1 = write_report(build_report(_result(64), env=env), tmp_path)
    p2, w2 = write_report(build_report(_result(8), env=env), tmp_path)
    p3, w3 = write_report(build_report(_result(32), env=env), tmp_path)
    assert p1 == p2 == p3 and (w1, w2, w3) == (True, True, False)
    rep = load_report(p1)
    assert rep["params"]["D"] == 8
    assert rep["replay"] == f"mhc-fuzz replay {p1}"


def test_different_signatures_get_different_files(tmp_path):
    env = {}
    a, _ = write_report(build_report(_result(8, comps=("dx",)), env=env), tmp_path)
    b, _ = write_report(build_report(_result(8, comps=("dx", "dphi")), env=env), tmp_path)
    c, _ = write_report(build_report(_result(8, backend="other"), env=env), tmp_path)
    assert len({a, b, c}) == 3
    assert len(iter_reports(tmp_path)) == 3


def test_expected_failure_marker_survives_a_smaller_case(tmp_path):
    p, _ = write_report(build_report(_result(64), env={}), tmp_path)
    doc = json.loads(p.read_text())
    doc["expected_failure"] = {"reason": "bug 12, fix pending"}
    p.write_text(json.dumps(doc))
    write_report(build_report(_result(4), env={}), tmp_path)
    doc = load_report(p)
    assert doc["params"]["D"] == 4 and doc["expected_failure"]["reason"] == "bug 12, fix pending"


def _writer(args):
    folder, D = args
    write_report(build_report(_result(D), env={}), folder)


def test_concurrent_writers_keep_one_complete_smallest_report(tmp_path):
    sizes = list(range(200, 0, -3))
    with mp.get_context("spawn").Pool(8) as pool:
        pool.map(_writer, [(str(tmp_path), D) for D in sizes])
    files = list((tmp_path / "bk").iterdir())
    assert len(files) == 1, files                      # no temp files left behind
    assert load_report(files[0])["params"]["D"] == min(sizes)


def test_temp_files_of_killed_writers_are_swept(tmp_path):
    """A writer killed between creating its temporary file and renaming it (SIGKILL) leaves the
    temporary behind: the next write into the folder, or a run's sweep, removes it."""
    folder = tmp_path / "bk"
    folder.mkdir()
    stale = [folder / ".0123abcd.json.k1ll3d.tmp", folder / ".fedc.json.x.tmp"]
    for f in stale:
        f.write_text('{"half": ')
    p, _ = write_report(build_report(_result(8), env={}), tmp_path)
    assert sorted(folder.iterdir()) == [p]
    stale[0].write_text("{")
    other = tmp_path / "other"
    other.mkdir()
    (other / ".a.json.b.tmp").write_text("")
    assert sweep_reports_dir(tmp_path) == 2
    assert sorted(tmp_path.rglob("*.tmp")) == [] and load_report(p)["params"]["D"] == 8
    assert sweep_reports_dir(tmp_path / "absent") == 0


def test_sweep_waits_for_a_live_writer(tmp_path):
    """A temporary file exists only while its writer holds the folder's lock, so the sweep,
    which takes the lock, never deletes one that is still being written."""
    import threading
    import time
    folder = tmp_path / "bk"
    folder.mkdir()
    tmp = folder / ".r.json.live.tmp"
    with _locked(folder):
        tmp.write_text("{}")
        sweeper = threading.Thread(target=sweep_reports_dir, args=(tmp_path,))
        sweeper.start()
        time.sleep(0.3)
        assert sweeper.is_alive() and tmp.exists()
        tmp.rename(folder / "r.json")
    sweeper.join(10)
    assert not sweeper.is_alive() and (folder / "r.json").exists()


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"schema": 1}', "missing key"),
])
def test_malformed_reports_name_file_and_problem(tmp_path, text, problem):
    f = tmp_path / "r.json"
    f.write_text(text)
    with pytest.raises(ReportError) as err:
        load_report(f)
    assert str(f) in str(err.value) and problem in str(err.value)


def test_report_with_bad_params(tmp_path):
    p, _ = write_report(build_report(_result(8), env={}), tmp_path)
    doc = json.loads(p.read_text())
    doc["params"]["n"] = -1
    p.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="params: case parameter n"):
        load_report(p)



def _write_killed_at(step: int, report: dict, reports_dir) -> bool:
    """Fork a writer of `report` that SIGKILLs itself at the step-th line of Python it runs once it
    has begun to change the file system (its first open for writing, rename or removal): one kill
    point between each two of its file operations. True if it was killed, False if it finished."""
    import os
    import signal
    import sys
    pid = os.fork()
    if pid == 0:                              # the child: no return into pytest from here
        try:
            lines = 0
            changing = False
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

            def audit(event, args):
                nonlocal changing
                if event in ("os.rename", "os.remove", "os.truncate") or (event == "open" and args[2] & writes):
                    changing = True

            def trace(frame, event, arg):
                nonlocal lines
                if event == "line" and changing:
                    lines += 1
                    if lines == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                return trace
            sys.addaudithook(audit)
            sys.settrace(trace)
            write_report(report, reports_dir)
            sys.settrace(None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_writer_killed_at_any_point_leaves_the_old_report_or_the_new_one(tmp_path):
    """A writer SIGKILLed at each point of replacing a report in turn (deterministic: the kill
    comes from the writer's own line trace, not a timer): the file holds the old complete report
    or the new one, never a part of either; its debris is hidden temporary files the sweep removes."""
    old = build_report(_result(64), env={})
    new = build_report(_result(8), env={})
    path, _ = write_report(old, tmp_path)
    old_text = path.read_text()
    seen_temp = seen_new = 0
    step = 1
    while _write_killed_at(step, new, tmp_path):
        others = [p.name for p in path.parent.iterdir() if p != path]
        assert all(n.startswith(f".{path.name}.") and n.endswith(".tmp") for n in others), (step, others)
        try:
            D = load_report(path)["params"]["D"]
        except ReportError as exc:
            raise AssertionError(f"writer killed at step {step} left an incomplete report: {exc}") from None
        assert D in (64, 8), D
        seen_temp += bool(others)
        seen_new += D == 8
        assert sweep_reports_dir(tmp_path) == len(others)
        path.write_text(old_text)                # back to the state before the write
        step += 1
        assert step < 500, "the writer never finished"
    assert seen_temp, "no kill fell between creating the temporary file and renaming it"
    assert seen_new, "no kill fell after the rename"
    assert load_report(path)["params"]["D"] == 8 and sorted(path.parent.iterdir()) == [path]
