"""The verdict on both sides of every bound (docs/ERROR-BOUNDS.md, 'check the bound from both sides')."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import tolerances
from fuzz.cases import CaseParams, make_inputs
from fuzz.check import _judge
from fuzz.compare import Verdict, compare, compare_many, contract_problem, contract_verdict
from fuzz.precision import UNIT_ROUNDOFF
from fuzz.truth import magnitudes, truth
from impls.golden_backend import backend as golden
from conftest import requires_cuda

TOLS = tolerances.load()
U32, UBF = UNIT_ROUNDOFF["fp32"], UNIT_ROUNDOFF["bf16"]


@pytest.fixture(scope="module")
def case():
    p = CaseParams(2, 8, 4, 64, "bf16", seed=3)
    inp = make_inputs(p)
    return p, inp, truth(inp), magnitudes(inp)


def dx_bound(p, ref, mags):
    return TOLS.rule("dx", "bf16").bound(ref["dx"], mags["dx"], p.dims(), U32, U32)


def bf16_ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |t| (8 significand bits)."""
    e = torch.floor(torch.log2(t.abs().clamp_min(1e-30)))
    return torch.pow(2.0, e - 7)


def test_correctly_rounded_dx_passes(case):
    p, _, ref, mags = case
    v = compare("dx", ref["dx"].to(torch.bfloat16), ref["dx"], dx_bound(p, ref, mags), torch.bfloat16)
    assert v.passed and v.worst_ratio <= 1 / 3 + 1e-6   # half an ulp of 1.5 allowed


def test_dx_one_bf16_ulp_off_passes(case):
    p, _, ref, mags = case
    rounded = ref["dx"].to(torch.bfloat16).double()
    off = (rounded + bf16_ulp(rounded)).to(torch.bfloat16)     # the next bf16 number up
    v = compare("dx", off, ref["dx"], dx_bound(p, ref, mags), torch.bfloat16)
    assert v.passed, v


def test_dx_three_ulps_of_its_magnitude_fails(case):
    p, _, ref, mags = case
    wrong = ref["dx"] + 3 * bf16_ulp(mags["dx"])
    v = compare("dx", wrong.to(torch.bfloat16), ref["dx"], dx_bound(p, ref, mags), torch.bfloat16)
    assert not v.passed and v.worst_ratio > 1.5


def test_dx_error_of_a_quarter_on_unit_scale_fails(case):
    """The original project's 'acceptable' 0.25 is rejected on unit-scale dx."""
    p, _, ref, mags = case
    scale = ref["dx"].abs().max()
    assert 0.1 < scale < 10
    wrong = ref["dx"].clone()
    wrong.view(-1)[5] += 0.25
    v = compare("dx", wrong.to(torch.bfloat16), ref["dx"], dx_bound(p, ref, mags), torch.bfloat16)
    assert not v.passed and v.worst_ratio > 10
    assert v.worst_index == tuple(int(i) for i in torch.unravel_index(torch.tensor(5), wrong.shape))


def test_fp32_other_summation_order_passes(case):
    """dphi summed over tokens in reverse order, in fp32: a different but correct kernel."""
    p, inp, ref, mags = case
    dphi = golden.backward(*inp.backward_args())[1]
    per_token = {"x", "inv_rms", "h_mix", "h_pre", "h_post", "dh_in", "dh_post", "dh_res"}
    xs = [golden.backward(*[getattr(inp, k)[:, s:s + 1] if k in per_token else getattr(inp, k)
                            for k in inp.BACKWARD_ARGS])[1] for s in reversed(range(p.S))]
    rev = xs[0]
    for part in xs[1:]:
        rev = rev + part
    assert not torch.equal(rev, dphi) or p.S == 1
    bound = TOLS.rule("dphi", "bf16").bound(ref["dphi"], mags["dphi"], p.dims(), U32, U32)
    assert compare("dphi", rev, ref["dphi"], bound, torch.float32).passed


def test_dphi_error_of_a_few_ulps_of_magnitude_fails(case):
    p, _, ref, mags = case
    bound = TOLS.rule("dphi", "bf16").bound(ref["dphi"], mags["dphi"], p.dims(), U32, U32)
    wrong = ref["dphi"] + 2e-3 * mags["dphi"]     # a bf16-accumulated dphi errs like this
    assert not compare("dphi", wrong.float(), ref["dphi"], bound, torch.float32).passed


def test_nan_where_truth_is_finite_fails(case):
    p, _, ref, mags = case
    out = ref["dx"].clone()
    out.view(-1)[0] = float("nan")
    v = compare("dx", out.to(torch.bfloat16), ref["dx"], dx_bound(p, ref, mags), torch.bfloat16)
    assert not v.passed and v.nonfinite_mismatches == 1 and v.worst_index == (0, 0, 0, 0)


def test_fp16_overflow_must_be_inf():
    truth_t = torch.tensor([1e5, -1e6, 1.0], dtype=torch.float64)
    tol = torch.full_like(truth_t, 1e-3)
    good = torch.tensor([math.inf, -math.inf, 1.0], dtype=torch.float16)
    assert compare("dx", good, truth_t, tol, torch.float16).passed
    finite = torch.tensor([65504.0, -65504.0, 1.0], dtype=torch.float16)
    v = compare("dx", finite, truth_t, tol, torch.float16)
    assert not v.passed and v.nonfinite_mismatches == 2


def test_inf_where_truth_is_finite_fails():
    truth_t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = torch.tensor([1.0, math.inf])
    v = compare("dphi", out, truth_t, torch.full_like(truth_t, 1e-6), torch.float32)
    assert not v.passed and v.nonfinite_mismatches == 1


def test_wrong_shape_is_a_contract_failure(case):
    p, inp, ref, mags = case
    outs = list(golden.backward(*inp.backward_args()))
    outs[4] = outs[4][:1]
    verdicts, kind = _judge(outs, p, "cpu", "backward", ref, mags, TOLS, golden.capabilities)
    assert kind == "contract"
    assert any("dgamma: shape" in v.problem for v in verdicts)


def test_tf32_declaration_widens_only_by_the_gemm_term(case):
    p, _, ref, mags = case
    rule = TOLS.rule("dx", "bf16")
    b32 = rule.bound(ref["dx"], mags["dx"], p.dims(), U32, U32)
    btf = rule.bound(ref["dx"], mags["dx"], p.dims(), U32, UNIT_ROUNDOFF["tf32"])
    extra = btf - b32
    expected = rule.gemm_operands * (UNIT_ROUNDOFF["tf32"] - U32) * mags["dx"]
    assert torch.allclose(extra, expected, rtol=1e-9, atol=1e-30)


@pytest.mark.parametrize("declared, passes", [
    ("fp32", False), ("tf32", True), ({"dphi": "tf32"}, True), ({"dphi:bf16": "tf32"}, True),
    ({"dx": "tf32", "default": "fp32"}, False), ({"dphi:fp16": "tf32"}, False)])
def test_gemm_precision_is_judged_per_output(case, declared, passes):
    """dphi off by twice TF32's operand rounding of its terms: inside the bound only when the
    declaration gives dphi (for this x dtype) TF32 operands; a TF32 dx says nothing about dphi."""
    from impls.registry import Capabilities
    p, inp, ref, mags = case
    outs = list(golden.backward(*inp.backward_args()))
    outs[1] = (ref["dphi"] + 2 * UNIT_ROUNDOFF["tf32"] * mags["dphi"]).to(torch.float32)
    verdicts, kind = _judge(outs, p, "cpu", "backward", ref, mags, TOLS, Capabilities(gemm_precision=declared))
    dphi = next(v for v in verdicts if v.component == "dphi")
    assert dphi.passed is passes
    assert all(v.passed for v in verdicts if v.component != "dphi")


# ---------------------------------------------------------------- compare() on hand-made values
F64 = torch.float64


def _t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _verdict(out, truth, tol, dtype=torch.float32):
    return compare("c", _t(out, dtype), _t(truth), _t(tol), dtype)


def test_verdict_names_the_worst_ratio_not_the_largest_error():
    v = _verdict([1.0625, -2.25, 0.5, 4.5], [1.0, -2.0, 0.5, 4.0], [0.125, 0.125, 0.25, 1.0])
    # errors 1/16, 1/4, 0, 1/2 against bounds 1/8, 1/8, 1/4, 1: ratios 1/2, 2, 0, 1/2
    expected = Verdict("c", False, 0.5, 0.125, 2.0, (1,), 0, -2.25, -2.0)
    fields = ("component", "passed", "max_abs_err", "bound_at_worst", "worst_ratio", "worst_index",
              "nonfinite_mismatches", "out_at_worst", "truth_at_worst", "problem")
    assert [getattr(v, f) for f in fields] == [getattr(expected, f) for f in fields]


def test_an_error_equal_to_its_bound_passes_and_just_above_fails():
    v = _verdict([1.125, -3.0], [1.0, -2.0], [0.125, 2.0])
    assert v.passed and (v.worst_ratio, v.worst_index, v.max_abs_err) == (1.0, (0,), 1.0)
    v = _verdict([1.125 + 2.0 ** -20], [1.0], [0.125])
    assert not v.passed and v.worst_ratio > 1.0
    v = _verdict([0.5, 3.0], [0.5, 2.0], [0.25, 0.25])           # an error of exactly 1
    assert not v.passed and (v.worst_ratio, v.worst_index, v.max_abs_err) == (4.0, (1,), 1.0)


def test_zero_bound_allows_only_the_exact_value():
    v = _verdict([0.0, 1.0], [0.0, 1.0], [0.0, 0.0])
    assert v.passed and v.worst_ratio == 0.0 and v.max_abs_err == 0.0
    v = _verdict([0.0, 2.0 ** -100], [0.0, 0.0], [0.0, 0.0])
    assert not v.passed and v.worst_ratio > 1e200 and v.worst_index == (1,)


def test_worst_index_is_the_full_index_and_values_are_taken_there():
    truth, out = torch.zeros(2, 3, dtype=F64), torch.zeros(2, 3)
    out[1, 2], out[0, 1] = 0.5, -0.125
    v = compare("c", out, truth, torch.full((2, 3), 0.25, dtype=F64), torch.float32)
    assert (v.worst_index, v.worst_ratio, v.out_at_worst, v.truth_at_worst, v.bound_at_worst) == ((1, 2), 2.0, 0.5,
                                                                                                  0.0, 0.25)


def test_empty_output_passes():
    v = compare("c", torch.zeros(0, 3), torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.float32)
    assert v.component == "c" and v.passed and (v.worst_index, v.worst_ratio, v.max_abs_err, v.nonfinite_mismatches) == ((), 0.0, 0.0, 0)
    assert v.bound_at_worst == 0.0 and math.isnan(v.out_at_worst) and math.isnan(v.truth_at_worst)


def test_special_values_must_match_the_truth_exactly():
    nan, inf = math.nan, math.inf
    v = _verdict([nan, inf, -inf, 1.0], [nan, inf, -inf, 1.0], [0.1] * 4)
    assert v.passed and v.nonfinite_mismatches == 0 and v.worst_ratio == 0.0
    # -Inf for Inf, NaN for Inf, Inf for NaN, a number for NaN; the first mismatch is the one shown
    v = _verdict([1.0, -inf, nan, inf, 3.0], [1.0, inf, inf, nan, nan], [0.1] * 5)
    assert not v.passed and v.nonfinite_mismatches == 4
    assert (v.worst_index, v.out_at_worst, v.truth_at_worst) == ((1,), -inf, inf)
    assert v.max_abs_err == 0.0          # errors are measured where both are finite only


def test_a_mismatch_fails_even_when_every_finite_error_is_inside():
    v = _verdict([1.0, 2.0, math.nan], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert not v.passed and v.worst_ratio == 0.0 and v.nonfinite_mismatches == 1 and v.worst_index == (2,)


@pytest.mark.parametrize("truth, tol, out, passes", [
    (65519.0, 2.0, math.inf, True),      # [65517, 65521] straddles 65520, where fp16 starts rounding to Inf
    (65519.0, 0.5, math.inf, False),     # all of [65518.5, 65519.5] rounds to 65504: Inf is wrong
    (65515.0, 10.0, math.inf, True),     # [65505, 65525] straddles 65520
    (65521.0, 0.5, 65504.0, False),      # all of it rounds to Inf: a finite 65504 is wrong
    (65521.0, 20.0, 65504.0, True),      # straddles; 65504 is within 20 of the truth
    (-65519.0, 2.0, -math.inf, True),    # the same on the negative side
    (65519.0, 1.0, math.inf, True),      # [65518, 65520]: 65520 itself rounds to Inf
    (-65519.0, 1.0, -math.inf, True),    # [-65520, -65518]: -65520 rounds to -Inf
    # the bound reaches past the other threshold too (heavy cancellation: a bound far above
    # |truth|, as seen on a GPU: fp16 dx, truth 100923, bound 1.77e6, out -Inf): every class
    # but NaN is a correct rounding of some value within it
    (100923.0, 1.77e6, -math.inf, True),
    (100923.0, 1.77e6, math.inf, True),
    (100923.0, 1.77e6, -60000.0, True),
    (100923.0, 1.77e6, math.nan, False),
    (100923.0, 1.0e5, -math.inf, False),   # [923, 200923] never reaches -65520
    (65519.0, 2.0, math.nan, False),       # NaN is no rounding of a value near the threshold
    (-65519.0, 2.0, math.inf, False),      # nor is the Inf of the other sign
])
def test_at_the_overflow_threshold_either_rounding_is_correct(truth, tol, out, passes):
    v = compare("dx", _t([out], torch.float16), _t([truth]), _t([tol]), torch.float16)
    assert v.passed is passes, v


def test_a_nan_bound_gives_the_class_rule_no_slack():
    """A NaN bound (a magnitude that overflowed) counts as 0 for which classes are allowed: 65519
    then rounds to a finite fp16, and Inf is a mismatch; a bound of 1 would have reached 65520."""
    v = compare("dx", _t([math.inf], torch.float16), _t([65519.0]), _t([math.nan]), torch.float16)
    assert not v.passed and v.nonfinite_mismatches == 1 and v.worst_index == (0,)
    assert compare("dx", _t([math.inf], torch.float16), _t([65519.0]), _t([1.0]), torch.float16).passed


def test_a_truth_interval_from_the_threshold_up_is_all_inf():
    """[65520, 65522] rounds to Inf everywhere: a finite value is a NaN/Inf mismatch (and far off)."""
    v = compare("dx", _t([65504.0], torch.float16), _t([65521.0]), _t([1.0]), torch.float16)
    assert not v.passed and v.nonfinite_mismatches == 1
    v = compare("dx", _t([-65504.0], torch.float16), _t([-65521.0]), _t([1.0]), torch.float16)
    assert not v.passed and v.nonfinite_mismatches == 1      # [-65522, -65520]: all -Inf


def test_contract_problems_name_output_and_expectation():
    x = torch.zeros(2, 3)
    assert contract_problem("dx", [1], (2, 3), torch.float32, "cpu") == "dx: expected a tensor, got list"
    assert contract_problem("dx", x, (3, 2), torch.float32, "cpu") == "dx: shape (2, 3), expected (3, 2)"
    assert contract_problem("dx", x, (2, 3), torch.bfloat16, "cpu") == \
        "dx: dtype torch.float32, expected torch.bfloat16"
    assert contract_problem("dx", x, (2, 3), torch.float32, "cuda") == "dx: on cpu, expected cuda"
    assert contract_problem("dx", x, [2, 3], torch.float32, "cpu") == ""
    v = contract_verdict("dgamma", "dgamma: shape (1,), expected (4, 8)")
    assert (v.component, v.passed, v.worst_ratio, v.worst_index, v.nonfinite_mismatches, v.problem) == \
        ("dgamma", False, math.inf, (), 0, "dgamma: shape (1,), expected (4, 8)")
    assert math.isnan(v.max_abs_err) and math.isnan(v.bound_at_worst)


def test_verdicts_round_trip_through_json():
    import json
    v = Verdict("dx", False, 0.5, 0.125, 4.0, (1, 0, 2, 3), 2, -1.5, 2.0, "")
    d = json.loads(json.dumps(v.to_dict()))
    assert d["worst_index"] == [1, 0, 2, 3] and Verdict.from_dict(d) == v
    assert Verdict.from_dict({k: val for k, val in d.items() if k != "worst_index"}).worst_index == ()


# ---------------------------------------------------------------- several components in one pass
_SPECIAL = [0.0, -0.0, math.inf, -math.inf, math.nan, 65504.0, 65519.0, 65520.0, -65530.0, 1e300, 3.4e38, 1e-40]
_values = st.one_of(st.sampled_from(_SPECIAL), st.floats(-1e6, 1e6))
_dtypes = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])


@st.composite
def _components(draw):
    """(component, out, truth, tol, out_dtype) lists: shapes empty to 2-D, values with NaN, Inf,
    ties and the fp16 overflow threshold, bounds with zeros and NaN."""
    items = []
    for j in range(draw(st.integers(1, 6))):
        shape = draw(st.sampled_from([(0,), (1,), (3,), (2, 5), (7,)]))
        n, dtype = math.prod(shape), draw(_dtypes)
        truth = _t(draw(st.lists(_values, min_size=n, max_size=n))).reshape(shape)
        out = _t(draw(st.lists(_values, min_size=n, max_size=n))).reshape(shape)
        out = draw(st.sampled_from([out, truth, truth + 1e-3 * out])).to(dtype)
        tol = _t(draw(st.lists(st.sampled_from([0.0, 1e-3, 1.0, 1e5, math.nan]), min_size=n, max_size=n)))
        items.append((f"c{j}", out, truth, tol.reshape(shape), dtype))
    return items


def _same(a: Verdict, b: Verdict) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] or (isinstance(da[k], float) and math.isnan(da[k]) and math.isnan(db[k])) for k in da)


def _on(items, device):
    return [(c, o.to(device), t.to(device), tol.to(device), dt) for c, o, t, tol, dt in items]


@settings(max_examples=150, deadline=None)
@given(_components())
def test_components_judged_together_get_the_verdicts_they_get_alone(items):
    """compare_many lays components end to end and reduces per component: no value, NaN, tie or
    dtype of one component may leak into another's verdict."""
    together = compare_many(items)
    alone = [compare(*item) for item in items]
    assert all(_same(a, b) for a, b in zip(together, alone)), (together, alone)


@requires_cuda
@settings(max_examples=60, deadline=None)
@given(_components())
def test_on_the_gpu_components_get_the_verdicts_the_cpu_gives(items):
    """The same rules on CUDA (its reductions' NaN and tie rules included)."""
    on_gpu = compare_many(_on(items, "cuda"))
    on_cpu = compare_many(items)
    assert all(_same(a, b) for a, b in zip(on_gpu, on_cpu)), (on_gpu, on_cpu)


def test_ties_and_nan_pick_the_first_of_each_component():
    """Worst index: the first of equal worst ratios, the first NaN ratio where there is one (a NaN
    bound), and a component's first element where its only mismatch-free values tie at zero."""
    items = [("a", _t([1.5, 1.5, 1.5], torch.float32), _t([1.0, 1.0, 1.0]), _t([0.25, 0.5, 0.25]), torch.float32),
             ("b", _t([2.0, 3.0, 2.0], torch.float32), _t([1.0, 1.0, 1.0]), _t([1.0, math.nan, math.nan]), torch.float32),
             ("c", _t([1.0, 1.0], torch.float32), _t([1.0, 1.0]), _t([1.0, 1.0]), torch.float32)]
    a, b, c = compare_many(items)
    assert (a.worst_index, a.worst_ratio) == ((0,), 2.0)
    assert b.worst_index == (1,) and math.isnan(b.worst_ratio) and not b.passed
    assert (c.worst_index, c.worst_ratio, c.passed) == ((0,), 0.0, True)


def test_the_bound_named_is_the_one_at_the_worst_ratio_also_beside_a_mismatch():
    """A verdict with a NaN/Inf mismatch points at the first mismatch (its index, output and
    truth), and still names the worst ratio and the bound where that ratio is."""
    v = _verdict([1.0, math.nan, 5.0], [1.0, 2.0, 3.0], [0.5, 0.25, 0.125])
    assert (v.worst_index, v.truth_at_worst, v.nonfinite_mismatches) == ((1,), 2.0, 1)
    assert math.isnan(v.out_at_worst)
    assert (v.worst_ratio, v.bound_at_worst) == (16.0, 0.125)
