"""Golden against the float64 truth: the manual backward's formulas, and its fp32 accuracy."""
import torch
from hypothesis import given, settings, strategies as st

from fuzz.cases import CaseParams, make_inputs
from fuzz.check import run_case
from fuzz.strategies import Limits, cases
from fuzz.truth import BACKWARD, truth
from impls.golden import mhc_pre_backward_manual
from impls.golden_backend import backend as golden
from impls.registry import Capabilities


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 5), n=st.integers(1, 8), D=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), use_gamma=st.booleans())
def test_manual_backward_formulas_equal_autograd_in_float64(B, S, n, D, seed, use_gamma):
    """The eleven steps are the exact derivative: in float64 they agree with autograd to ~1e-12."""
    p = CaseParams(B, S, n, D, "fp32", seed=seed, use_gamma=use_gamma)
    inp = make_inputs(p)
    ref = truth(inp)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    # saved activations from the float64 forward itself, so no fp32 rounding enters
    got = mhc_pre_backward_manual(d(inp.x), d(inp.phi), d(inp.alpha), d(inp.bias), ref["inv_rms"],
                                  ref["h_mix"], ref["h_pre"], ref["h_post"], d(inp.dh_in),
                                  d(inp.dh_post), d(inp.dh_res), d(inp.gamma))
    for name, g in zip(BACKWARD, got):
        scale = ref[name].abs().max().clamp_min(1e-300)
        assert torch.allclose(g, ref[name], rtol=1e-9, atol=1e-12 * float(scale)), name


@settings(max_examples=150, deadline=None)
@given(p=cases(Capabilities(), Limits(max_elements=1 << 13, max_tokens=64, max_D=300)))
def test_golden_within_fp32_bounds_of_truth(p):
    res = run_case(golden, p, "cpu")
    assert res.status == "pass", res.message
    assert res.worst_ratio() < 1.0


def test_golden_tiny_shapes():
    for n in range(1, 9):
        res = run_case(golden, CaseParams(1, 1, n, 1, "bf16", seed=n), "cpu")
        assert res.status == "pass", res.message
