"""Each verdict says whether the case could tell: an all-zero output and the sign-flipped truth
would both have failed. The run's summary gives the share per component, flags a component
no case could tell, and the search climbs toward cases that can (fuzz/discrimination.py)."""
import json

import pytest
import torch

from fuzz import discrimination, engine, summary
from fuzz.cases import CaseParams
from fuzz.check import CaseResult, run_case
from fuzz.compare import Verdict, compare
from impls.golden_backend import backend as golden


def _v(truth, tol, dtype=torch.float32):
    t = torch.tensor(truth, dtype=torch.float64)
    return compare("c", t.to(dtype), t, torch.full_like(t, tol), dtype)


def test_a_truth_far_outside_its_bound_discriminates():
    v = _v([3.0, -1.0, 0.0], 0.01)
    assert v.passed and v.zero_fails and v.flip_fails and v.discriminates and abs(v.zero_ratio - 300) < 1e-6


def test_a_zero_or_tiny_truth_does_not():
    assert not _v([0.0, 0.0], 0.01).discriminates
    tiny = _v([0.004, -0.003], 0.01)              # zero would pass; a flipped sign errs by 0.008 < 0.01
    assert not tiny.zero_fails and not tiny.flip_fails and not tiny.discriminates
    half = _v([0.007], 0.01)                      # zero passes, the flipped sign (0.014 off) does not
    assert not half.zero_fails and half.flip_fails and not half.discriminates


def test_a_truth_that_overflows_the_output_discriminates_by_its_inf():
    v = _v([1e6], 1.0, torch.float16)             # rounds to Inf in fp16: zero and -Inf both mismatch
    assert v.zero_fails and v.flip_fails


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("truth, tol, dtype", [
    ([1.0], 0.5, torch.float32),                  # a truth of exactly 1: zero errs by 2 bounds
    ([0.5, -0.25], 0.5, torch.float32),           # zero errs by exactly one bound (passes); flipped: 2
    ([0.25], 0.5, torch.float32),                 # the flipped sign errs by exactly one bound (passes)
    ([0.75], 0.5, torch.float32),                 # zero errs by 1.5 bounds
    ([INF, 1.0], 0.01, torch.float32),            # an infinite truth: zero mismatches; the ratio is 100
    ([NAN, 0.001], 0.01, torch.float32),          # a NaN truth: zero (a number) mismatches, though 0.1 bound
    ([-INF, NAN], 1.0, torch.float32),            # nothing finite: both mismatch, ratio 0
    ([65520.0], 70000.0, torch.float16),          # in the overflow band, within its bound: zero passes
    ([1e6, 1.0], 1.0, torch.float16),             # rounds to Inf: zero and -Inf both mismatch
    ([65520.0], 131100.0, torch.float16),         # rounds to Inf, but the bound reaches -65520: -Inf passes
    ([1.0 + 2.0 ** -12], 2.0003, torch.float16),  # rounds to 1: flipped, it errs by 2.000244 < 2.0003
    ([], 1.0, torch.float32),                     # nothing to tell by
])
def test_would_fail_is_what_compare_says_of_zero_and_of_the_flipped_truth(truth, tol, dtype):
    """zero_ratio/zero_fails/flip_fails are compare()'s verdicts on an all-zero output and on the
    sign-flipped rounded truth, computed without running it (fuzz/compare.py, _would_fail)."""
    t = torch.tensor(truth, dtype=torch.float64)
    tol_t = torch.full_like(t, tol)
    v = compare("c", t.to(dtype), t, tol_t, dtype)
    zero = compare("c", torch.zeros_like(t, dtype=dtype), t, tol_t, dtype)
    flipped = compare("c", -t.to(dtype), t, tol_t, dtype)
    assert (v.zero_ratio, v.zero_fails, v.flip_fails) == (zero.worst_ratio, not zero.passed, not flipped.passed)


@pytest.mark.parametrize("truth, tol, dtype, expected", [
    ([1.0], 0.5, torch.float32, (2.0, True, True)),
    ([0.5, -0.25], 0.5, torch.float32, (1.0, False, True)),
    ([0.25], 0.5, torch.float32, (0.5, False, False)),
    ([INF, 1.0], 0.01, torch.float32, (100.0, True, True)),
    ([NAN, 0.001], 0.01, torch.float32, (0.1, True, False)),
    ([65520.0], 70000.0, torch.float16, (65520.0 / 70000.0, False, True)),
    ([1.0 + 2.0 ** -12], 2.0003, torch.float16, ((1.0 + 2.0 ** -12) / 2.0003, False, False)),
    ([], 1.0, torch.float32, (0.0, False, False)),
])
def test_would_fail_known_answers(truth, tol, dtype, expected):
    t = torch.tensor(truth, dtype=torch.float64)
    v = compare("c", t.to(dtype), t, torch.full_like(t, tol), dtype)
    assert (v.zero_ratio, v.zero_fails, v.flip_fails) == pytest.approx(expected, rel=1e-12)


def test_old_verdicts_load_without_the_new_fields():
    d = _v([1.0], 0.1).to_dict()
    for k in ("zero_ratio", "zero_fails", "flip_fails"):
        d.pop(k)
    assert not Verdict.from_dict(d).discriminates


def _stats(results):
    st = engine.BackendStats("b", "cpu")
    for r in results:
        st.record(r)
        discrimination.observe(st, r)
    return st


def test_summary_gives_shares_and_flags_a_component_no_case_could_tell(tmp_path):
    good = run_case(golden, CaseParams(1, 4, 2, 8, "bf16", seed=1), check_determinism=False)
    blind = CaseResult.from_dict(good.to_dict())
    for v in blind.verdicts:
        if v.component == "dalpha":
            v.zero_fails = v.flip_fails = False
            v.zero_ratio = 0.0
    st = _stats([good, blind])
    shares = discrimination.shares(st)
    assert shares["dx"]["share"] == 1.0 and shares["dalpha"] == {"cases": 2, "discriminating": 1, "share": 0.5}
    assert discrimination.never(st) == []
    st2 = _stats([blind, blind])
    assert discrimination.never(st2) == ["dalpha"]
    doc = summary.summary_dict([st2], {"device": "cpu"})
    assert doc["backends"][0]["never_discriminated"] == ["dalpha"]
    json.dumps(doc)
    page = summary.write_page(tmp_path, [st2], {"device": "cpu"}).read_text()
    assert "Cases that could tell" in page and "0% **flagged**" in page


def test_the_search_score_is_the_weakest_component():
    good = run_case(golden, CaseParams(1, 4, 2, 8, "bf16", seed=1), check_determinism=False)
    st = engine.BackendStats("b", "cpu")
    assert discrimination.observe(st, good) == min(min(v.zero_ratio, discrimination.SCORE_CAP) for v in good.verdicts)
    refused = CaseResult("b", good.params, "cpu", "refused")
    assert discrimination.observe(st, refused) == 0.0
