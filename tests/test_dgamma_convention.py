"""dgamma without gamma: the SPEC's convention is the gradient of the implicit all-ones gamma
(golden's); a backend may declare zeros or None instead and is judged on its declaration."""
import math

import pytest
import torch

from fuzz.cases import CaseParams
from fuzz.check import run_case
from impls.golden import mhc_pre_backward_manual
from impls.registry import BackendContractError, Capabilities


class Convention:
    """Golden's math, with dgamma for a call without gamma as `returns` says."""

    def __init__(self, declared, returns, even_with_gamma=False):
        self.name = f"declares_{declared}_returns_{returns}"
        self.capabilities = Capabilities(deterministic=True, dgamma_without_gamma=declared)
        self.returns, self.even_with_gamma = returns, even_with_gamma

    def backward(self, *args):
        dx, dphi, dalpha, dbias, dgamma = mhc_pre_backward_manual(*args)
        convention_applies = args[-1] is None or self.even_with_gamma
        if convention_applies and self.returns == "zeros":
            dgamma = torch.zeros_like(dgamma)
        elif convention_applies and self.returns == "none":
            dgamma = None
        elif convention_applies and self.returns == "short":
            dgamma = torch.zeros(1)
        return dx, dphi, dalpha, dbias, dgamma


WITHOUT, WITH = CaseParams(1, 3, 2, 5, seed=4, use_gamma=False), CaseParams(1, 3, 2, 5, seed=4)


@pytest.mark.parametrize("declared, returns, status, kind", [
    ("grad", "grad", "pass", ""),
    ("grad", "zeros", "fail", "tolerance"),          # an implementation returning zeros, undeclared: flagged
    ("zeros", "zeros", "pass", ""),
    ("zeros", "grad", "fail", "tolerance"),          # declared zeros: must be exactly zero
    ("none", "none", "pass", ""),                    # None, and the determinism check copes with it
    ("none", "zeros", "fail", "contract"),
    ("grad", "none", "fail", "contract"),
])
def test_judged_on_its_declaration(declared, returns, status, kind):
    res = run_case(Convention(declared, returns), WITHOUT, "cpu")
    assert (res.status, res.kind) == (status, kind), res.message
    if status == "fail":
        assert res.failing_components() == ["dgamma"]


@pytest.mark.parametrize("declared", ["zeros", "none"])
def test_with_gamma_dgamma_is_the_gradient_whatever_the_declaration(declared):
    assert run_case(Convention(declared, declared), WITH, "cpu").status == "pass"
    res = run_case(Convention(declared, declared, even_with_gamma=True), WITH, "cpu")
    assert res.failed and res.failing_components() == ["dgamma"], res.message


def test_unknown_convention_is_refused():
    with pytest.raises(BackendContractError, match="dgamma_without_gamma"):
        Capabilities(dgamma_without_gamma="ones")


def _dgamma_verdict(declared, returns):
    res = run_case(Convention(declared, returns), WITHOUT, "cpu")
    (v,) = [v for v in res.verdicts if v.component == "dgamma"]
    return v


def _fields(v):
    return (v.component, v.passed, v.max_abs_err, v.bound_at_worst, v.worst_ratio, v.worst_index,
            v.nonfinite_mismatches, v.problem)


def test_a_declared_none_that_returns_none_passes_with_nothing_measured():
    assert _fields(_dgamma_verdict("none", "none")) == ("dgamma", True, 0.0, 0.0, 0.0, (), 0, "")


@pytest.mark.parametrize("declared, returns, problem", [
    ("none", "zeros", "dgamma: declared dgamma_without_gamma='none', but returned Tensor for a call without "
                      "gamma, not None"),
    ("zeros", "short", "dgamma: shape (1,), expected (2, 5)"),
])
def test_a_convention_broken_is_a_contract_verdict_that_says_how(declared, returns, problem):
    v = _dgamma_verdict(declared, returns)
    assert (v.component, v.passed, v.problem, v.worst_ratio, v.worst_index) == ("dgamma", False, problem, math.inf,
                                                                                  ())


def test_declared_zeros_are_held_to_a_zero_bound():
    """The gradient where zeros were declared: every nonzero element is out of a bound of 0, and
    the ratio is the error over float64's smallest normal (finite, so the search can climb)."""
    v = _dgamma_verdict("zeros", "grad")
    tiny = torch.finfo(torch.float64).tiny
    assert not v.passed and v.bound_at_worst == 0.0 and v.truth_at_worst == 0.0 and v.problem == ""
    assert v.worst_ratio == v.max_abs_err / tiny and math.isfinite(v.worst_ratio)
    assert abs(v.out_at_worst) == v.max_abs_err > 0
