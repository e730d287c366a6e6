"""replay --sanitize TOOL runs the replay under each compute-sanitizer tool it is given, without
the caching allocator and the memory fill, timed; the fixed sample it replays nightly."""
import json
import os
import shutil
import stat

import pytest

from conftest import requires_cuda
from fuzz.cases import CaseParams
from fuzz.sample import copy_reports, sample_cases, write_sample
from impls.tilelang_mhc import backend as tilelang
from inproc import cli

FAKE = """#!/bin/sh
# stands in for compute-sanitizer: records its tool and environment, finds errors with racecheck
echo "$2 $PYTORCH_NO_CUDA_MEMORY_CACHING $MHC_FUZZ_POISON $*" >> "$FAKE_LOG"
[ "$2" = racecheck ] && exit 3
exit 0
"""


def _sample(tmp_path, backend="golden"):
    return write_sample(backend, [CaseParams(1, 3, 2, 8, "bf16", seed=4)], tmp_path / "sample", "cpu")[0]


def test_an_unknown_tool_is_a_usage_error(tmp_path):
    r = cli("replay", tmp_path / "r.json", "--sanitize", "leakcheck")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.fixture
def fake_sanitizer(tmp_path):
    fake = tmp_path / "bin" / "compute-sanitizer"
    fake.parent.mkdir()
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    return log, {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log)}


def test_all_runs_every_tool_without_caching_allocator_or_fill(tmp_path, fake_sanitizer):
    log, env = fake_sanitizer
    report = _sample(tmp_path)
    r = cli("replay", report, "--device", "cpu", "--sanitize", "all", env=env)
    lines = log.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["memcheck", "initcheck", "racecheck", "synccheck"]
    assert all(ln.split()[1:3] == ["1", "off"] and "--error-exitcode 3" in ln and str(report) in ln for ln in lines)
    assert r.returncode == 1 and "racecheck reported errors" in r.stdout
    assert "wall time: no sanitizer" in r.stdout and "synccheck" in r.stdout.split("wall time:")[1]


def test_one_tool_that_finds_nothing_exits_0(tmp_path, fake_sanitizer):
    log, env = fake_sanitizer
    r = cli("replay", _sample(tmp_path), "--device", "cpu", "--sanitize", "initcheck", env=env)
    assert r.returncode == 0 and log.read_text().split()[0] == "initcheck", r.stdout + r.stderr
    assert "no sanitizer" not in r.stdout


def test_tools_named_with_commas_run_in_that_order(tmp_path, fake_sanitizer):
    log, env = fake_sanitizer
    r = cli("replay", _sample(tmp_path), "--device", "cpu", "--sanitize", "synccheck,memcheck", env=env)
    assert r.returncode == 0 and [ln.split()[0] for ln in log.read_text().splitlines()] == ["synccheck", "memcheck"], \
        (r.stdout + r.stderr, log.read_text())
    assert "no sanitizer" not in r.stdout
    r = cli("replay", _sample(tmp_path), "--sanitize", "memcheck,leakcheck")
    assert r.returncode == 2 and "invalid choice: 'leakcheck'" in r.stderr


def test_the_sample_is_fixed_and_inside_the_capabilities(tmp_path):
    a, b = sample_cases(tilelang.capabilities, 5), sample_cases(tilelang.capabilities, 5)
    assert a == b and len(set(a)) == 5
    for p in a:
        assert tilelang.capabilities.refusal(device="cuda", x_dtype=p.x_dtype, n=p.n, D=p.D, T=p.T) is None
        assert p.T * p.n * p.D <= 1 << 16


def test_only_reports_small_enough_for_a_sanitizer_join_the_sample(tmp_path, capsys):
    reports = tmp_path / "reports"
    small = write_sample("triton", [CaseParams(1, 3, 2, 8, "bf16")], reports, "cuda")[0]
    big = write_sample("triton", [CaseParams(1, 74899, 4, 7168, "bf16")], reports, "cuda")[0]
    (tmp_path / "out" / "triton").mkdir(parents=True)
    copy_reports("triton", reports, tmp_path / "out", 1 << 22)
    assert sorted(p.name for p in (tmp_path / "out" / "triton").iterdir()) == [small.name]
    assert f"skipped {big}" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "triton" / small.name).read_text())["kind"] == "sample"


@requires_cuda
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="needs compute-sanitizer")
def test_initcheck_finds_the_uninitialised_scratch_read_and_not_golden(tmp_path):
    p = CaseParams(1, 4, 2, 16, "bf16", seed=1)
    mutant = write_sample("uninitialized_scratch_read", [p], tmp_path, "cuda")[0]
    control = write_sample("golden", [p], tmp_path, "cuda")[0]
    r = cli("replay", mutant, "--plugin", "tests.mutants:uninitialized_scratch_read", "--sanitize", "initcheck")
    assert r.returncode == 1 and "initcheck reported errors" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    r = cli("replay", control, "--sanitize", "initcheck")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
