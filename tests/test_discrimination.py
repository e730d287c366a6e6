"""Each verdict says whether the case could tell: an all-zero output and the sign-flipped truth
would both have failed. The run's summary gives the share per component, flags a component
no case could tell, and the search climbs toward cases that can (fuzz/discrimination.py)."""
import json

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
