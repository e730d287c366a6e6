"""Large cases are made and judged token chunk by token chunk (fuzz/chunks.py): the inputs
must be bit for bit those of the one-pass code, and the verdicts the same. Checked on small
cases cut into chunks of a few tokens."""
import math

import pytest
import torch

from fuzz import chunks
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams, Inputs, make_inputs
from fuzz.check import _judge
from fuzz.truth import magnitudes, truth
from impls.golden_backend import backend as golden
import tests.mutants as M

CASES = [
    CaseParams(2, 7, 4, 33, "bf16", seed=5, zero_tokens=3, outliers=4, layout="strided"),
    CaseParams(1, 13, 3, 16, "fp16", seed=9, x_scale=2.0, grad_scale=-1.5, layout="transposed", use_gamma=False),
    CaseParams(3, 5, 1, 40, "fp32", seed=2, bias_shift=-12.0, alpha=(0.5, -1.0, 2.0), layout="offset"),
    CaseParams(1, 9, 2, 24, "bf16", seed=0, zero_tokens=1, outliers=2, outlier_factor=64.0),
]
TOLS = tolmod.load()


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Every case counts as large, and a chunk is a few tokens (never a divisor of T)."""
    monkeypatch.setattr(chunks, "THRESHOLD", 0)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 200)


def _one_pass(p):
    saved = chunks.THRESHOLD
    chunks.THRESHOLD = 1 << 62
    try:
        return make_inputs(p)
    finally:
        chunks.THRESHOLD = saved


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.short())
def test_chunked_inputs_are_bit_identical(p, tiny_chunks):
    assert len(chunks.token_ranges(p.T, p.n * p.D)) > 2
    a, b = _one_pass(p), make_inputs(p)
    for k in Inputs.BACKWARD_ARGS:
        ta, tb = getattr(a, k), getattr(b, k)
        if ta is None:
            assert tb is None
            continue
        assert ta.dtype == tb.dtype and ta.shape == tb.shape and ta.stride() == tb.stride(), k
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[ta.element_size()]
        assert torch.equal(ta.view(bits), tb.view(bits)), k


def _same(v, w):
    assert (v.component, v.passed, v.worst_index, v.nonfinite_mismatches, v.zero_fails, v.flip_fails) == \
        (w.component, w.passed, w.worst_index, w.nonfinite_mismatches, w.zero_fails, w.flip_fails)
    # the float64 sums over tokens add up in another order: the truth moves by an ulp or so,
    # i.e. a ratio by at most ~1e-16 of how far zero is from the bound
    slack = 1e-13 * max(1.0, v.zero_ratio)
    for a, b in ((v.worst_ratio, w.worst_ratio), (v.zero_ratio, w.zero_ratio)):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=slack), (v.component, a, b)


@pytest.mark.parametrize("p, backend", [(CASES[0], golden), (CASES[1], golden), (CASES[2], golden),
                                        (CASES[0], M.stream0_only), (CASES[3], M.nan_without_eps)],
                         ids=lambda x: x.short() if isinstance(x, CaseParams) else x.name)
def test_chunked_verdicts_are_those_of_one_pass(p, backend, tiny_chunks):
    inp = _one_pass(p)
    ref, mags = truth(inp), magnitudes(inp)
    for direction, outputs in (("backward", backend.backward(*inp.backward_args())),
                               ("forward", golden.forward(*inp.forward_args()))):
        whole, kind = _judge(outputs, p, "cpu", direction, ref, mags, TOLS, backend.capabilities)
        parts, kind2 = chunks.judge(outputs, inp, direction, TOLS, backend.capabilities, "cpu")
        assert kind == kind2
        for v, w in zip(whole, parts):
            _same(v, w)


def test_chunked_judge_reports_contract_problems(tiny_chunks):
    p = CASES[0]
    inp = _one_pass(p)
    out = list(golden.backward(*inp.backward_args()))
    out[0] = out[0].float()
    verdicts, kind = chunks.judge(tuple(out), inp, "backward", TOLS, golden.capabilities, "cpu")
    assert kind == "contract" and "dtype" in verdicts[0].problem
    verdicts, kind = chunks.judge(tuple(out[:3]), inp, "backward", TOLS, golden.capabilities, "cpu")
    assert kind == "contract" and len(verdicts) == 1


def test_token_ranges_cover_every_token_once():
    for T, per, el in ((1, 5, 3), (10, 3, 7), (74899, 28672, 1 << 24)):
        r = chunks.token_ranges(T, per, el)
        assert r[0][0] == 0 and r[-1][1] == T and all(a[1] == b[0] for a, b in zip(r, r[1:]))


def test_a_chunked_case_runs_every_check(tiny_chunks):
    """run_case on a case judged in chunks: golden passes, a planted bug fails the same way."""
    from fuzz.check import run_case
    p = CASES[3]
    assert run_case(golden, p).status == "pass"
    res = run_case(M.stream0_only, p)
    chunks.THRESHOLD = 1 << 62
    whole = run_case(M.stream0_only, p)
    assert res.failed and res.signature() == whole.signature()
