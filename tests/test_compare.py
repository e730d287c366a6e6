"""The verdict on both sides of every bound (docs/ERROR-BOUNDS.md, 'check the bound from both sides')."""
import math

import pytest
import torch

from fuzz import tolerances
from fuzz.cases import CaseParams, make_inputs
from fuzz.check import _judge
from fuzz.compare import compare
from fuzz.precision import UNIT_ROUNDOFF
from fuzz.truth import magnitudes, truth
from impls.golden_backend import backend as golden

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
