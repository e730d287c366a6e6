"""The call contexts that need a GPU: the caller's side stream with pending writes, and inputs
on cuda:1 while cuda:0 is current (two GPUs). Run them with `pytest -m gpu -p no:xdist`
(under xdist each worker sees one GPU only, and the two-GPU tests skip)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, requires_cuda
from fuzz.cases import GRAD_MODES, CaseParams
from fuzz.check import backend_can_run, run_case
from fuzz.compare import contract_problem
from fuzz.kinds import FailureKind
from impls.golden_backend import GoldenBackend
from impls.registry import default_registry
import tests.mutants as M

pytestmark = [pytest.mark.gpu, requires_cuda]
requires_2_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                     reason="needs 2 GPUs (inputs on cuda:1 while cuda:0 is current)")

CONTEXTS = [dict(stream=s, grad_mode=g) for s in ("default", "side") for g in GRAD_MODES]
OTHER_DEVICE = [dict(placement="other", stream=s, grad_mode=g) for s in ("default", "side") for g in ("enabled", "autograd")]


def _ids(c):
    return ",".join(f"{k}={v}" for k, v in c.items())


@pytest.mark.parametrize("context", CONTEXTS, ids=_ids)
def test_golden_passes_in_every_context(context):
    res = run_case(GoldenBackend(), CaseParams(2, 33, 4, 64, seed=3, calls=2, **context), "cuda")
    assert res.status == "pass", res.message


@requires_2_gpus
@pytest.mark.parametrize("context", OTHER_DEVICE, ids=_ids)
def test_golden_passes_with_inputs_on_another_device(context):
    res = run_case(GoldenBackend(), CaseParams(2, 33, 4, 64, seed=3, **context), "cuda")
    assert res.status == "pass", res.message


def test_a_backend_on_its_own_stream_reads_unwritten_inputs():
    res = run_case(M.ignores_caller_stream, CaseParams(2, 65, 4, 256, seed=1, stream="side"), "cuda")
    assert res.kind == FailureKind.NONFINITE, res.message


@requires_2_gpus
def test_a_launch_on_the_current_device_is_a_contract_failure():
    res = run_case(M.current_device_launch, CaseParams(1, 8, 4, 64, seed=1, placement="other"), "cuda")
    assert res.kind == FailureKind.CONTRACT and "cuda:0" in res.message and "cuda:1" in res.message, res.message
    assert run_case(M.current_device_launch, CaseParams(1, 8, 4, 64, seed=1), "cuda").status == "pass"
    on0 = torch.zeros(3, device="cuda:0")
    assert contract_problem("dalpha", on0, (3,), torch.float32, "cuda:1").startswith("dalpha: on cuda:0")
    assert contract_problem("dalpha", on0, (3,), torch.float32, "cuda:0") == ""


@pytest.mark.parametrize("backend", ["triton", "tilelang"])
@pytest.mark.parametrize("context", CONTEXTS + [dict(placement="other")], ids=_ids)
def test_real_backends_in_every_context(backend, context):
    if context.get("placement") == "other" and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (inputs on cuda:1 while cuda:0 is current)")
    b = default_registry(entry_points=False).get(backend)
    why = backend_can_run(b, "cuda")
    if why:
        pytest.skip(f"{backend}: {why}")
    for p in (CaseParams(2, 65, 4, 256, seed=5, calls=2, **context),
              CaseParams(1, 130, 4, 2560, seed=6, arg_layouts=(("dh_res", "transposed"), ("phi", "expanded")),
                         arg_dtypes=(("gamma", "bf16"),), **context)):
        res = run_case(b, p, "cuda")
        assert res.status == "pass", f"{p.short()}: {res.kind}: {res.message}"


def test_context_mutants_are_killed_on_the_gpu(tmp_path):
    names = [cls.name for cls in M.CONTEXT]
    out = tmp_path / "kill.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "mutants", "--device", "cuda", "--budget", "30s",
                        "--only", ",".join(names), "--reports", tmp_path / "reports", "--json", out],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    print(r.stdout[-6000:])
    rows = {row["mutant"]: row for row in json.loads(out.read_text())["mutants"]}
    for name in names:
        row = rows[name]
        if row["skipped"]:
            assert name == "current_device_launch" and torch.cuda.device_count() < 2, row
            continue
        assert row["killed"] and row["expected_kind_found"], row
    assert r.returncode == 0
