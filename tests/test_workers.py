"""Several workers: shards' statistics add up (a whole sharded run: tests/test_run_pipeline.py);
a shared example database lets a second run replay the first run's failure first."""
import json
import shutil
import socket
import subprocess
import time

import pytest

from inproc import cli



def _shard_stats(cases, worst, findings):
    """A shard's statistics as its JSON file carries them: findings {signature: (case T, hits)}."""
    from fuzz.cases import CaseParams
    from fuzz.check import CaseResult
    from fuzz.engine import BackendStats, Finding
    s = BackendStats("b", "cuda", 10.0, cases=cases, passed=cases - len(findings), failed=len(findings),
                     seconds=10.0, worst={"dx": worst}, worst_case={"dx": {"seed": cases}}, ratios={"dx": [worst]})
    for sig, (T, hits) in findings.items():
        kind, comps = sig.split("|")[1:]
        res = CaseResult("b", CaseParams(1, T, 4, 16), "cuda", "fail", kind,
                         [__import__("fuzz.compare", fromlist=["x"]).contract_verdict(comps, "x")])
        s.findings[sig] = Finding(res, None, float(T), hits)
    return BackendStats.from_dict(json.loads(json.dumps(s.to_dict(samples=True))))   # through JSON


def test_merge_adds_counts_and_keeps_the_smallest_case_per_signature():
    a = _shard_stats(10, 0.5, {"b|tolerance|dx": (8, 3)})
    b = _shard_stats(30, 2.0, {"b|tolerance|dx": (2, 5), "b|crash|": (4, 1)})
    m = a.merge(b)
    assert m.cases == 40 and m.failed == 3 and m.workers == 2
    assert m.worst["dx"] == 2.0 and m.worst_case["dx"] == {"seed": 30} and sorted(m.ratios["dx"]) == [0.5, 2.0]
    assert set(m.findings) == {"b|tolerance|dx", "b|crash|"}
    dx = m.findings["b|tolerance|dx"]
    assert dx.result.params.S == 2 and dx.hits == 8      # the smaller case, every shard's hits
    assert m.cases_per_second() == 4.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server is not installed (CI installs Debian's redis-server)")
    pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def _fuzz_run(tmp_path, tag, db, seed):
    out = tmp_path / tag
    r = cli("run", "--device", "cpu", "--backend", "rare_bug", "--plugin", "tests.mutants:rare_bug",
            "--budget", "600s", "--max-cases", "400", "--profile", "ci", "--seed", seed, "--db", db,
            "--reports", tmp_path / f"rep-{tag}", "--out", out, "--stop-on-first-failure", "--no-isolate")
    assert r.returncode == 1, r.stdout + r.stderr
    (b,) = json.loads((out / "summary.json").read_text())["backends"]
    return b


@pytest.mark.slow     # the directory database test covers the replay-first path in the CI
def test_shared_redis_database_replays_failure_first(tmp_path, redis_url):
    """Two runs in separate processes with different seeds share one Redis example database:
    the first has to search for the bug, the second replays the saved failure as its first case."""
    first = _fuzz_run(tmp_path, "first", redis_url, seed=1)
    assert first["findings"] and first["first_failure_case"] > 1
    import redis
    assert redis.Redis.from_url(redis_url).dbsize() > 0
    second = _fuzz_run(tmp_path, "second", redis_url, seed=2)
    assert second["findings"] and second["first_failure_case"] == 1


def test_without_shared_database_the_search_starts_over(tmp_path):
    """The directory-database test below with --db none: the second run finds the bug again
    only by searching for it, as the first did (with a database it is the second run's first case)."""
    first = _fuzz_run(tmp_path, "a", "none", seed=1)
    second = _fuzz_run(tmp_path, "b", "none", seed=2)
    assert first["findings"] and second["findings"]
    assert first["first_failure_case"] > 1 and second["first_failure_case"] > 1


def test_directory_database_replays_yesterdays_failure_first(tmp_path):
    db = str(tmp_path / "db")
    first = _fuzz_run(tmp_path, "day1", db, seed=1)
    assert first["first_failure_case"] > 1
    second = _fuzz_run(tmp_path, "day2", db, seed=2)
    assert second["first_failure_case"] == 1


def test_auto_runs_two_shards_per_gpu_each_with_its_share_of_the_memory(monkeypatch):
    from fuzz import shards
    monkeypatch.setattr(shards, "gpu_count", lambda: 3)
    assert shards.worker_count("auto", "cuda") == 6
    assert shards.worker_count("auto", "cuda", large=True) == 3     # the large tier: a GPU's memory each
    per_gpu = shards.shards_per_gpu(6, 3)
    assert [shards.gpu_env(i, per_gpu) for i in (0, 4)] == [
        {"CUDA_VISIBLE_DEVICES": "0", "MHC_FUZZ_GPU_SHARE": "2"}, {"CUDA_VISIBLE_DEVICES": "1", "MHC_FUZZ_GPU_SHARE": "2"}]
    uneven = shards.shards_per_gpu(5, 2)                # shards 0, 2, 4 on GPU 0; 1, 3 on GPU 1
    assert uneven == {0: 3, 1: 2} and shards._spread(uneven) == "3 on GPU 0, 2 on GPU 1"
    assert shards.gpu_env(3, uneven)["MHC_FUZZ_GPU_SHARE"] == "2"
    assert shards.gpu_env(0, {}) == {}                  # on the CPU: no GPU to pin


def test_a_process_of_a_shared_gpu_holds_its_share_of_the_memory_once(monkeypatch):
    import torch
    from fuzz import executor
    asked = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: asked.append(f))
    monkeypatch.setenv("MHC_FUZZ_GPU_SHARE", "4")
    monkeypatch.setattr(executor, "_SHARED", False)
    executor.share_gpu_memory("cpu")
    assert asked == []
    executor.share_gpu_memory("cuda")
    executor.share_gpu_memory("cuda")
    assert asked == [0.25]
    monkeypatch.setattr(executor, "_SHARED", False)
    monkeypatch.setenv("MHC_FUZZ_GPU_SHARE", "1")      # alone on its GPU: no limit
    executor.share_gpu_memory("cuda")
    assert asked == [0.25]
