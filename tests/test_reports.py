"""Reports: dedupe by signature keeps the smallest case; writes are atomic under concurrency."""
import json
import multiprocessing as mp

import pytest

from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.compare import Verdict
from fuzz.kinds import FailureKind
from fuzz.reports import (ReportError, _locked, build_report, case_size, iter_reports, load_report,
                          sweep_reports_dir, tensors_path, write_report)


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
    assert [load_report(p)["signature"] for p in (a, b, c)] == ["bk|tolerance|dx", "bk|tolerance|dphi,dx",
                                                               "other|tolerance|dx"]
    assert (a.parent.name, b.parent.name, c.parent.name) == ("bk", "bk", "other")
    assert sorted(iter_reports(tmp_path)) == sorted([a, b, c])


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


def _tensors():
    import torch
    return {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "gamma": None,
            "dh_in": torch.tensor([1.5, -2.0, 0.25], dtype=torch.bfloat16)}


def test_a_reduced_case_s_tensors_are_stored_beside_its_report_under_their_hash(tmp_path):
    import hashlib

    import torch
    from safetensors.torch import load_file
    path, written = write_report(build_report(_result(8), env={}), tmp_path, tensors=_tensors())
    report = load_report(path)
    blob = tensors_path(path, report)
    assert written and blob.parent == path.parent
    assert blob.name == f"{report['id']}-{hashlib.sha1(blob.read_bytes()).hexdigest()[:10]}.safetensors"
    got, sent = load_file(blob), _tensors()
    assert sorted(got) == ["dh_in", "x"]                      # None (no gamma) is not stored
    assert all(got[k].dtype == sent[k].dtype and torch.equal(got[k], sent[k]) for k in got)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, blob.name])


def test_a_tensor_write_killed_before_its_rename_leaves_a_hidden_temporary_the_sweep_removes(tmp_path):
    """A smaller case replacing a tensor-backed report, its writer SIGKILLed just before the
    rename of its tensors: the old report and tensors stand, the one file left beside them is a
    hidden temporary named for the new tensors, and the sweep removes it."""
    import os
    import signal

    import torch
    folder = tmp_path / "bk"
    path, _ = write_report(build_report(_result(64), env={}), tmp_path, tensors=_tensors())
    before = sorted(folder.iterdir())
    smaller = build_report(_result(8), env={})
    pid = os.fork()
    if pid == 0:                              # the child: no return into pytest from here
        try:
            real_replace = os.replace

            def killed(src, dst, *args, **kwargs):
                if str(dst).endswith(".safetensors"):
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst, *args, **kwargs)
            os.replace = killed
            write_report(smaller, tmp_path, tensors={"x": torch.zeros(2, 3)})
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = [p.name for p in folder.iterdir() if p not in before]
    assert left.startswith(f".{smaller['id']}-") and ".safetensors." in left and left.endswith(".tmp"), left
    assert load_report(path)["params"]["D"] == 64 and tensors_path(path, load_report(path)) in before
    assert sweep_reports_dir(tmp_path) == 1 and sorted(folder.iterdir()) == before


@pytest.mark.parametrize("failure", ["fsync", "rename after the temporary is gone"])
def test_a_failed_tensor_write_raises_its_own_error_and_leaves_nothing(tmp_path, monkeypatch, failure):
    """A full disk at the fsync, or a rename that fails after its source is gone (a retried
    rename on a network file system): the write's OSError comes out, and no file is left."""
    import errno
    import os

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def gone_then_failed(src, dst, *args, **kwargs):
        os.unlink(src)
        no_space()
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        monkeypatch.setattr(os, "replace", gone_then_failed)
    with pytest.raises(OSError) as err:
        write_report(build_report(_result(8), env={}), tmp_path, tensors=_tensors())
    assert err.value.errno == errno.ENOSPC
    assert list((tmp_path / "bk").iterdir()) == []


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


def test_case_size_counts_elements_first_then_every_departure_from_the_defaults():
    from dataclasses import replace
    base = CaseParams(1, 3, 2, 5)
    assert case_size(base) == (30, 3, 5, 2, 0)
    assert case_size(CaseParams(2, 3, 4, 5)) == (120, 6, 5, 4, 0)
    changes = dict(x_scale=-1.5, grad_scale=2.0, phi_scale=-1.0, gamma_scale=0.5, bias_shift=-4.0, zero_tokens=1,
                   outliers=2, layout="strided", x_dtype="fp32", use_gamma=False, alpha=(1.0, 0.5, -1.0))
    distance = dict(x_scale=1.5, grad_scale=2.0, phi_scale=1.0, gamma_scale=0.5, bias_shift=4.0, zero_tokens=1,
                    outliers=2, layout=1, x_dtype=1, use_gamma=1, alpha=2)
    for k, v in changes.items():
        assert case_size(replace(base, **{k: v})) == (30, 3, 5, 2, distance[k]), k
    assert case_size(replace(base, **changes))[4] == sum(distance.values())
    # a case with fewer elements is smaller whatever its values
    assert case_size(replace(CaseParams(1, 2, 2, 5), **changes)) < case_size(base)


def test_report_fields(tmp_path):
    import datetime as dt
    import hashlib
    from fuzz.reports import SCHEMA, report_id
    res = _result(8, comps=("dphi", "dx"))
    rep = build_report(res, detected_after_s=1.5, plugins=["pkg.mod:a", "pkg.mod:b"], env={"e": 1})
    sig = "bk|tolerance|dphi,dx"
    assert report_id(sig) == hashlib.sha1(sig.encode()).hexdigest()[:12]
    assert {k: v for k, v in rep.items() if k != "found_at"} == {
        "schema": SCHEMA, "id": report_id(sig), "backend": "bk", "signature": sig, "kind": "tolerance",
        "failing_components": ["dphi", "dx"], "message": "bad", "params": res.params.to_dict(), "device": "cpu",
        "verdicts": [v.to_dict() for v in res.verdicts], "worst_ratio": 10.0, "detected_after_s": 1.5,
        "environment": {"e": 1}, "plugins": ["pkg.mod:a", "pkg.mod:b"],
        "replay": "mhc-fuzz replay {path} --plugin pkg.mod:a --plugin pkg.mod:b", "case_timeout_s": None,
        "history": [], "expected_failure": None}
    found = dt.datetime.fromisoformat(rep["found_at"])
    assert found.tzinfo is not None and abs(dt.datetime.now(dt.timezone.utc) - found) < dt.timedelta(minutes=5)
    path, written = write_report(rep, tmp_path)
    assert written and path == tmp_path / "bk" / f"{report_id(sig)}.json"
    assert load_report(path)["replay"] == f"mhc-fuzz replay {path} --plugin pkg.mod:a --plugin pkg.mod:b"
    assert build_report(res, env={})["replay"] == "mhc-fuzz replay {path}"


def test_environment_names_the_versions():
    import platform
    import subprocess

    import torch
    from conftest import ROOT
    from fuzz.reports import environment
    env = environment("cpu")
    assert (env["python"], env["torch"], env["device"], env["host"]) == (platform.python_version(),
                                                                         torch.__version__, "cpu", platform.node())
    for mod in ("triton", "tilelang"):
        try:
            version = __import__(mod).__version__
        except Exception:
            version = None
        assert env[mod] == version, mod
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert env["git_commit"] == (head or None)
    assert "gpu" not in env and build_report(_result(8))["environment"]["device"] == "cpu"


def test_a_case_of_the_same_size_does_not_replace_the_report(tmp_path):
    first = build_report(_result(8), env={"run": 1})
    p, _ = write_report(first, tmp_path)
    again = build_report(_result(8), env={"run": 2})
    assert write_report(again, tmp_path) == (p, False)
    assert load_report(p)["environment"] == {"run": 1}


def test_a_damaged_report_is_replaced(tmp_path):
    p, _ = write_report(build_report(_result(8), env={}), tmp_path)
    p.write_text('{"schema": ')
    assert write_report(build_report(_result(64), env={}), tmp_path) == (p, True)
    assert load_report(p)["params"]["D"] == 64


def test_a_failed_write_leaves_the_old_report_and_no_temporary(tmp_path, monkeypatch):
    import os
    p, _ = write_report(build_report(_result(64), env={}), tmp_path)
    before = p.read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_report(build_report(_result(8), env={}), tmp_path)
    assert p.read_text() == before and sorted(p.parent.iterdir()) == [p]


def _edited_report(tmp_path, edit) -> tuple:
    """A written report, then `edit(doc)` applied to its JSON and written back: (path, doc)."""
    p, _ = write_report(build_report(_result(8), env={}), tmp_path)
    doc = json.loads(p.read_text())
    edit(doc)
    p.write_text(json.dumps(doc))
    return p, doc


def _as_schema1(doc: dict):
    """A report as schema 1 wrote it: without the fields schema 2 added."""
    from fuzz.reports import ADDED_IN_SCHEMA
    doc["schema"] = 1
    for k in ADDED_IN_SCHEMA[2]["report"]:
        doc.pop(k, None)
    for k in ADDED_IN_SCHEMA[2]["params"]:
        doc["params"].pop(k, None)


def test_a_schema_1_report_loads_as_the_default_context(tmp_path):
    """Reports written before the call's context existed still load, and mean the plain call."""
    p, _ = write_report(build_report(_result(8), env={}), tmp_path)
    doc = json.loads(p.read_text())
    _as_schema1(doc)
    p.write_text(json.dumps(doc))
    rep = load_report(p)
    assert rep["schema"] == 1 and "history" not in rep
    assert CaseParams.from_dict(rep["params"]) == _result(8).params
    assert CaseParams.from_dict(rep["params"]).context() == {}


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.update(schema=3), "schema 3 is not supported (expected 1 or 2)"),
    (lambda d: d.update(schema=True), "schema True is not supported (expected 1 or 2)"),
    (lambda d: d.update(schema=2.0), "schema 2.0 is not supported (expected 1 or 2)"),
    (lambda d: (_as_schema1(d), d.update(history=[])), "history: added in schema 2, but the report is schema 1"),
    (lambda d: (_as_schema1(d), d["params"].update(calls=2, stream="default")),
     "params.stream, params.calls: added in schema 2, but the report is schema 1"),
    (lambda d: d.update(history={}), "history must be a list of at most 64 earlier calls"),
    (lambda d: d.update(kind="history-dependent", history=[{"backend": "bk", "params": dict(
        {"B": 1, "S": 1, "n": 1, "D": 1}, **{f"unknown_parameter_{i}": i for i in range(20)})}]),
     "history[0]: params: " + ("unknown case parameter(s): " + str(sorted(f"unknown_parameter_{i}" for i in range(20))))[:200]),
    (lambda d: d.update(history=[{"backend": "bk", "params": {"B": 1, "S": 1, "n": 1, "D": 1}}] * 65),
     "history must be a list of at most 64 earlier calls"),
    (lambda d: d.update(history=[{"backend": "bk"}]),
     "history[0] must be an object with exactly the keys backend and params"),
    (lambda d: d.update(history=[{"backend": "bk", "params": {}, "x": 1}]),
     "history[0] must be an object with exactly the keys backend and params"),
    (lambda d: d.update(history=[{"backend": "os.system('x')", "params": {}}]),
     "history[0]: backend must be a backend name, got \"os.system('x')\""),
    (lambda d: d.update(history=[{"backend": "bk", "params": []}]), "history[0]: params must be an object"),
    (lambda d: d.update(history=[{"backend": "bk", "params": {"B": 1, "S": 1, "n": 1, "D": 0}}]),
     "history[0]: params: case parameter D must be a positive int, got 0"),
    (lambda d: d.update(history=[{"backend": "bk", "params": {"B": 1, "S": 1, "n": 1, "D": 1, "first_call": True}}]),
     "history[0]: params: an earlier call cannot be a first call"),
    (lambda d: d.update(history=[{"backend": "bk", "params": {"B": 1, "S": 1, "n": 1, "D": 1}}]),
     "history: a history-dependent report has its earlier calls, and only such a report has any "
     "(kind tolerance, 1 earlier calls)"),
    (lambda d: d.update(kind="history-dependent"),
     "history: a history-dependent report has its earlier calls, and only such a report has any "
     "(kind history-dependent, 0 earlier calls)"),
    (lambda d: d["params"].update(grad_mode="fast"),
     "params: grad_mode must be one of ('enabled', 'no_grad', 'inference_mode', 'autograd'), got 'fast'"),
    (lambda d: d["params"].update(calls=True), "params: calls must be 1 or 2 and first_call a bool, got True, False"),
    (lambda d: d["params"].update(first_call=1), "params: calls must be 1 or 2 and first_call a bool, got 1, 1"),
    (lambda d: d["params"].update(arg_layouts={"x": "offset"}),
     "params: arg_layouts: x cannot be 'offset' (allowed: none)"),
    (lambda d: d["params"].update(arg_layouts={"phi": 3}),
     "params: arg_layouts must map input names to names, got {'phi': 3}"),
    (lambda d: d["params"].update(arg_layouts=[["phi", "offset"]]),
     "params: arg_layouts must map input names to names, got [['phi', 'offset']]"),
    (lambda d: d["params"].update(arg_dtypes={"h_mix": "bf16"}),
     "params: arg_dtypes: 'h_mix': 'bf16': inputs ('phi', 'alpha', 'bias', 'gamma', 'dh_post', 'dh_res') may be "
     "one of ('bf16', 'fp16', 'fp32')"),
    (lambda d: d.pop("replay"), "missing key 'replay'"),
    (lambda d: d.update(expected_failure="bug 3"), "expected_failure must be null or an object with a 'reason' string"),
    (lambda d: d.update(expected_failure={"why": "x"}), "expected_failure must be null or an object with a 'reason' "
                                                        "string"),
    (lambda d: d.update(expected_failure={"reason": 3}), "expected_failure must be null or an object with a "
                                                         "'reason' string"),
    (lambda d: d["params"].update(x_dtype="int4"), "params: x_dtype must be bf16, fp16 or fp32, got 'int4'"),
    (lambda d: d["params"].update(colour=1), "params: unknown case parameter(s): ['colour']"),
    (lambda d: d.update(id=3), "id must be a string"),
    (lambda d: d.update(signature=None), "signature must be a string"),
    (lambda d: d.update(replay=["mhc-fuzz"]), "replay must be a string"),
    (lambda d: d.update(backend="os.system('x')"), "backend must be a backend name, got \"os.system('x')\""),
    (lambda d: d.update(backend="b" * 101), f"backend must be a backend name, got '{'b' * 56}..."),
    (lambda d: d.update(kind="wrong"), "kind 'wrong' is not a failure kind (" + ", ".join(k.value for k in FailureKind) + ")"),
    (lambda d: d.update(device="tpu"), "device must be cpu or cuda, got 'tpu'"),
    (lambda d: d.update(params=[1]), "params must be an object"),
    (lambda d: d["params"].update({f"unknown_parameter_{i}": i for i in range(20)}),
     "params: " + ("unknown case parameter(s): " + str(sorted(f"unknown_parameter_{i}" for i in range(20))))[:200]),
    (lambda d: d.update(plugins="tests.mutants:x"), "plugins must be a list of module:attr names"),
    (lambda d: d.update(plugins=["os.system('x')"]), "plugins must be a list of module:attr names"),
    (lambda d: d.update(plugins=["a.b:c"] * 65), "plugins must be a list of module:attr names"),
    (lambda d: d.update(case_timeout_s=0), "case_timeout_s must be null or a number of seconds up to a day"),
    (lambda d: d.update(case_timeout_s=-5), "case_timeout_s must be null or a number of seconds up to a day"),
    (lambda d: d.update(case_timeout_s=24 * 3600 + 1), "case_timeout_s must be null or a number of seconds up to a day"),
    (lambda d: d.update(case_timeout_s=True), "case_timeout_s must be null or a number of seconds up to a day"),
    (lambda d: d.update(case_timeout_s="60"), "case_timeout_s must be null or a number of seconds up to a day"),
    (lambda d: d.update(tensors=7), "tensors must be the name of a .safetensors file beside the report"),
    (lambda d: d.update(tensors="../up.safetensors"), "tensors must be the name of a .safetensors file beside the report"),
    (lambda d: d.update(tensors="t.pt"), "tensors must be the name of a .safetensors file beside the report"),
    (lambda d: d.update(tensors="gone.safetensors"),
     "its tensors file gone.safetensors is missing (it is stored beside the report)"),
])
def test_report_problems_are_one_exact_line(tmp_path, edit, problem):
    p, _ = _edited_report(tmp_path, edit)
    with pytest.raises(ReportError) as err:
        load_report(p)
    assert str(err.value) == f"{p}: {problem}"


@pytest.mark.parametrize("edit", [
    lambda d: d.update(device="cuda"),
    lambda d: d.update(plugins=["a.b:c"] * 64),
    lambda d: d.update(plugins=None),
    lambda d: d.update(case_timeout_s=0.5),
    lambda d: d.update(case_timeout_s=1),
    lambda d: d.update(case_timeout_s=24 * 3600),
    lambda d: d.update(case_timeout_s=None),
    lambda d: d.update(expected_failure={"reason": "bug 3"}),
    lambda d: d.update(backend="my-kernel.v2"),
    lambda d: d.update(kind="history-dependent",
                       history=[{"backend": "bk", "params": {"B": 1, "S": 1, "n": 1, "D": 1}}] * 64),
])
def test_reports_at_the_edge_of_each_rule_load(tmp_path, edit):
    p, doc = _edited_report(tmp_path, edit)
    assert load_report(p) == doc


def test_a_report_whose_tensors_are_beside_it_loads(tmp_path):
    p, _ = _edited_report(tmp_path, lambda d: d.update(tensors="case-1.safetensors"))
    (p.parent / "case-1.safetensors").write_bytes(b"")
    assert load_report(p)["tensors"] == "case-1.safetensors"


def test_json_python_cannot_convert_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "r.json"
    f.write_text('{"schema": ' + "9" * 5000 + "}")
    with pytest.raises(ReportError) as err:
        load_report(f)
    try:
        int("9" * 5000)
        pytest.skip("this Python converts integers of any length")
    except ValueError as exc:
        why = str(exc).splitlines()[0][:120]
    assert str(err.value) == f"{f}: not valid JSON: {why}" and len(why) == 120


def test_unreadable_and_non_json_reports(tmp_path):
    with pytest.raises(ReportError) as err:
        load_report(tmp_path / "absent.json")
    assert str(err.value) == f"{tmp_path / 'absent.json'}: cannot read: No such file or directory"
    f = tmp_path / "r.json"
    f.write_text('\n{"a": 1,,}')
    with pytest.raises(ReportError) as err:
        load_report(f)
    assert str(err.value) == f"{f}: line 2: not valid JSON: Expecting property name enclosed in double quotes"
    f.write_text('"text"')
    with pytest.raises(ReportError) as err:
        load_report(str(f))
    assert str(err.value) == f"{f}: a report must be a JSON object"


def test_reports_are_listed_sorted_one_folder_deep(tmp_path):
    for backend, D in (("b", 8), ("a", 8), ("a", 16)):
        write_report(build_report(_result(D, backend=backend, comps=("dx",) if D == 8 else ("dphi",)), env={}),
                     tmp_path)
    (tmp_path / "a" / "notes.txt").write_text("")
    (tmp_path / "top.json").write_text("{}")
    files = iter_reports(tmp_path)
    assert files == sorted(files) and [f.parent.name for f in files] == ["a", "a", "b"]
    assert iter_reports(str(tmp_path)) == files and iter_reports(tmp_path / "absent") == []


def test_report_files_are_readable_stable_text(tmp_path):
    """Reports are reviewed and diffed: 2-space indent, fields in the order of build_report, one
    trailing newline; written into a reports folder that need not exist yet."""
    p, _ = write_report(build_report(_result(8), env={}), tmp_path / "new" / "reports")
    text = p.read_text()
    assert text.startswith('{\n  "schema": 2,\n  "id": "') and text.endswith("\n}\n")
    assert list(json.loads(text)) == list(build_report(_result(8), env={}))


def test_the_sweep_counts_every_stale_file(tmp_path):
    folder = tmp_path / "bk"
    folder.mkdir()
    for name in (".a.json.1.tmp", ".a.json.2.tmp", ".b.json.3.tmp", "keep.json", ".hidden"):
        (folder / name).write_text("")
    assert sweep_reports_dir(tmp_path) == 3
    assert sorted(p.name for p in folder.iterdir()) == [".hidden", "keep.json"]


def test_environment_records_the_checkout_whatever_the_working_directory(tmp_path, monkeypatch):
    import subprocess

    from conftest import ROOT
    from fuzz.reports import environment
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    monkeypatch.chdir(tmp_path)                                  # not a git checkout
    assert environment("cpu")["git_commit"] == (head or None)


def test_environment_names_the_gpu_of_cuda_runs_only(monkeypatch):
    import sys

    import torch
    from fuzz.reports import environment
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU 80GB")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    from importlib import metadata
    real_version = metadata.version

    def version(name):                                             # tilelang not installed
        if name == "tilelang":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)
    monkeypatch.setitem(sys.modules, "tilelang", None)
    monkeypatch.setattr(metadata, "version", version)              # ... is recorded as None
    env = environment("cuda")
    assert env["gpu"] == "Test GPU 80GB" and env["cuda"] == "12.8"
    assert env["tilelang"] is None
    assert not {"gpu", "cuda"} & set(environment("cpu"))


def test_short_keeps_sixty_characters_and_cuts_longer_ones_to_sixty():
    from fuzz.reports import _short
    assert _short("x" * 58) == "'" + "x" * 58 + "'"                 # repr of 60 characters
    assert _short("x" * 59) == "'" + "x" * 56 + "..."               # 61: cut to 57 and "..."
    assert len(_short("x" * 500)) == 60


@pytest.mark.parametrize("name, ok", [("a", True), ("b" * 100, True), ("my-kernel.v2", True), ("x_1-2.y", True),
                                      ("", False), ("b" * 101, False), ("a b", False), ("a/b", False)])
def test_backend_names_a_report_may_hold(tmp_path, name, ok):
    p, _ = _edited_report(tmp_path, lambda d: d.update(backend=name))
    if ok:
        assert load_report(p)["backend"] == name
    else:
        with pytest.raises(ReportError, match="backend must be a backend name"):
            load_report(p)


def test_a_report_file_may_be_up_to_its_size_limit(tmp_path):
    from fuzz.reports import MAX_REPORT_BYTES
    f = tmp_path / "r.json"
    f.write_text(" " * (MAX_REPORT_BYTES - 2) + "{}")                # exactly the limit: read whole
    with pytest.raises(ReportError) as err:
        load_report(f)
    assert str(err.value) == f"{f}: missing key 'schema'"
    f.write_text(" " * (MAX_REPORT_BYTES - 1) + "{}")                # one byte more
    with pytest.raises(ReportError) as err:
        load_report(f)
    assert str(err.value) == f"{f}: more than {MAX_REPORT_BYTES >> 20} MiB: not a report"


def test_a_timeout_report_keeps_its_timeout_to_a_tenth_and_its_history():
    res = _result(8)
    res.kind, res.seconds = FailureKind.TIMEOUT, 3.14159
    res.history = [{"backend": "bk", "params": CaseParams(1, 1, 1, 2).to_dict()}]
    rep = build_report(res, env={})
    assert rep["case_timeout_s"] == 3.1 and rep["history"] == res.history and rep["history"][0] is not res.history[0]
    assert build_report(_result(8), env={})["case_timeout_s"] is None


def test_every_departure_from_the_defaults_adds_to_the_size():
    base = case_size(CaseParams(1, 2, 2, 4))
    more = case_size(CaseParams(1, 2, 2, 4, arg_layouts=(("phi", "offset"), ("bias", "strided")),
                                arg_dtypes=(("phi", "bf16"),), calls=2, grad_mode="no_grad"))
    assert more[:4] == base[:4] and more[4] == base[4] + 5


def test_environment_names_the_loaded_module_s_own_version(monkeypatch):
    import sys
    import types
    from fuzz.reports import environment
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="9.9-loaded"))
    monkeypatch.setitem(sys.modules, "tilelang", types.SimpleNamespace())      # no __version__
    env = environment("cpu")
    assert env["triton"] == "9.9-loaded" and env["tilelang"] is None


def test_plugins_providing_keeps_what_may_have_provided_the_backend():
    import tests.mutants as mutants
    from fuzz.reports import plugins_providing, replay_command
    import tests.mutants.context  # noqa: F401  (tests.mutants.context.FirstCallWrong is named first_call_wrong)
    nested = "tests.mutants:stream0_only.capabilities"            # an object without a name: kept
    got = plugins_providing("stream0_only", ["tests.mutants:stream0_only", "tests.mutants:raises",
                                             "tests.mutants:context.FirstCallWrong",
                                             "tests.mutants:no_such_thing", "tests.mutants:ALL", nested,
                                             "not.imported.module:x", "tests.mutants:stream0_only"])
    assert got == ["tests.mutants:stream0_only", "tests.mutants:no_such_thing", "tests.mutants:ALL", nested,
                   "not.imported.module:x"]
    assert mutants.raises.name == "raises"
    assert replay_command("r.json", ["a.b:c"]) == "mhc-fuzz replay r.json --plugin a.b:c"


def test_a_replacing_report_that_shares_the_tensors_file_keeps_it(tmp_path):
    big = _result(8)
    big.params = CaseParams(1, 2, 2, 8, seed=1, calls=2)
    small = _result(8)
    small.params = CaseParams(1, 2, 2, 8, seed=1)
    t = _tensors()
    p, _ = write_report(build_report(big, env={}), tmp_path, tensors=t)
    first = load_report(p)["tensors"]
    p2, written = write_report(build_report(small, env={}), tmp_path, tensors=t)
    assert written and p2 == p and load_report(p)["tensors"] == first and (p.parent / first).is_file()
