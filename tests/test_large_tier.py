"""The large tier on the GPU: a case just past 2^31 elements runs through every check, judged
in token chunks, and fits the GPU with room to spare (bench/bench_large.py prints the same
numbers for more shapes)."""
import sys

import pytest
import torch

from conftest import ROOT, requires_cuda
from fuzz.cases import CaseParams
from fuzz.geometry import INDEX_LIMIT, large_shapes
from fuzz.kinds import FailureKind
from fuzz.profiles import get_profile
from impls.registry import default_registry

sys.path.insert(0, str(ROOT / "bench"))


@requires_cuda
@pytest.mark.slow
@pytest.mark.parametrize("name", ["triton", "tilelang"])
def test_a_case_past_2_31_elements_fits_and_is_judged(name):
    from bench_large import measure
    from fuzz.check import backend_can_run
    b = default_registry().get(name)
    why = backend_can_run(b, "cuda")
    if why:
        pytest.skip(why)
    B, S, n, D, dt = large_shapes(b.capabilities, get_profile("large").cuda)[0]
    assert B * S * n * D > INDEX_LIMIT
    row = measure(b, CaseParams(B, S, n, D, dt, seed=1))
    print(row)
    total = torch.cuda.get_device_properties(0).total_memory / (1 << 30)
    assert row["peak_reserved_gib"] < 0.75 * total, row
    assert row["kind"] not in (FailureKind.CRASH, FailureKind.EXCEPTION), row


@requires_cuda
@pytest.mark.slow
def test_the_int32_offset_wrap_is_killed_by_the_first_large_case():
    import tests.mutants as M
    from fuzz.check import run_case
    mutant = M.int32_offset_wrap
    if mutant.unavailable_reason():
        pytest.skip(mutant.unavailable_reason())
    B, S, n, D, dt = large_shapes(mutant.capabilities, get_profile("large").cuda)[0]
    res = run_case(mutant, CaseParams(B, S, n, D, dt, seed=1), "cuda")
    assert res.kind == FailureKind.UNWRITTEN and "dx:" in res.message, res.message
