"""The comparison core: a backend's outputs against the float64 truth, one verdict per component.

A component fails when |out - truth| > tol anywhere, or when the finite/non-finite pattern
differs from the truth's after rounding to the output dtype (NaN or Inf where the rounded
truth is finite, and the reverse: an fp16 dx whose truth exceeds 65504 must be Inf).

A verdict also says whether the case could tell a wrong output from a right one: whether an
all-zero output, and the truth with its sign flipped, would have failed too. A case whose
truth is zero, or tiny next to its bound, passes an output that was never computed."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from fuzz.precision import NAME_OF, UNIT_ROUNDOFF


@dataclass
class Verdict:
    component: str
    passed: bool
    max_abs_err: float          # over elements where both are finite
    bound_at_worst: float       # tol at the element with the worst ratio
    worst_ratio: float          # max |out - truth| / tol (the search climbs on this)
    worst_index: tuple          # index of that element
    nonfinite_mismatches: int
    out_at_worst: float = float("nan")
    truth_at_worst: float = float("nan")
    problem: str = ""           # contract problems: wrong shape, dtype, device
    zero_ratio: float = 0.0     # max |truth| / tol: the worst ratio an all-zero output would get
    zero_fails: bool = False    # an all-zero output would have failed this component
    flip_fails: bool = False    # the truth with its sign flipped (rounded to the output) would have failed

    @property
    def discriminates(self) -> bool:
        """The case could tell: both an all-zero and a sign-flipped output would have failed."""
        return self.zero_fails and self.flip_fails

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        d = dict(d)
        d["worst_index"] = tuple(d.get("worst_index", ()))
        return cls(**d)


def contract_problem(name: str, out, expected_shape, expected_dtype, expected_device) -> str:
    if not isinstance(out, torch.Tensor):
        return f"{name}: expected a tensor, got {type(out).__name__}"
    if tuple(out.shape) != tuple(expected_shape):
        return f"{name}: shape {tuple(out.shape)}, expected {tuple(expected_shape)}"
    if out.dtype != expected_dtype:
        return f"{name}: dtype {out.dtype}, expected {expected_dtype}"
    if out.device.type != torch.device(expected_device).type:
        return f"{name}: on {out.device}, expected {expected_device}"
    return ""


def compare(component: str, out: torch.Tensor, truth: torch.Tensor, tol: torch.Tensor,
            out_dtype: torch.dtype) -> Verdict:
    """Verdict for one component. truth and tol are float64 tensors of out's shape."""
    o = out.detach().to(torch.float64)
    t = truth.to(o.device)
    tol = tol.to(o.device)
    expected = t.to(out_dtype).to(torch.float64)          # overflow of the stored type is Inf
    fin_o, fin_e = torch.isfinite(o), torch.isfinite(expected)
    # near the overflow threshold either a finite value or Inf is a correct rounding: values from
    # top + half an ulp of the top binade (2^emax * u: 65520 in fp16) round to Inf
    top = torch.finfo(out_dtype).max
    to_inf = top + 2.0 ** math.floor(math.log2(top)) * UNIT_ROUNDOFF[NAME_OF[out_dtype]]
    ambiguous = (t.abs() - tol < to_inf) & (t.abs() + tol >= to_inf)
    both_nonfinite = ~fin_o & ~fin_e
    same_special = both_nonfinite & ((o == expected) | (torch.isnan(o) & torch.isnan(expected)))
    mismatch = ((fin_o != fin_e) & ~ambiguous) | (both_nonfinite & ~same_special)
    n_mismatch = int(mismatch.sum())

    fin_t = torch.isfinite(t)
    both = fin_o & fin_t
    err = torch.where(both, (o - t).abs(), torch.zeros_like(t))
    safe_tol = tol.clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(both, err / safe_tol, torch.zeros_like(t))
    # tol == 0 (exact zero truth with zero magnitude) and err == 0 is a ratio of 0
    ratio = torch.where(err == 0, torch.zeros_like(ratio), ratio)
    if o.numel():
        flat = int(torch.argmax(ratio))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), o.shape))
        worst = float(ratio.reshape(-1)[flat])
        bound = float(tol.reshape(-1)[flat])
        out_w, truth_w = float(o.reshape(-1)[flat]), float(t.reshape(-1)[flat])
        max_err = float(err.max())
    else:
        idx, worst, bound, out_w, truth_w, max_err = (), 0.0, 0.0, float("nan"), float("nan"), 0.0
    if n_mismatch:
        bad = torch.nonzero(mismatch)[0]
        idx = tuple(int(i) for i in bad)
        out_w, truth_w = float(o[idx]), float(t[idx])
    zero_ratio, zero_fails, flip_fails = _would_fail(t, expected, fin_t, fin_e, ambiguous, safe_tol)
    return Verdict(component, worst <= 1.0 and n_mismatch == 0, max_err, bound, worst, idx,
                   n_mismatch, out_w, truth_w, zero_ratio=zero_ratio, zero_fails=zero_fails,
                   flip_fails=flip_fails)


def _would_fail(t, expected, fin_t, fin_e, ambiguous, safe_tol) -> tuple:
    """(zero_ratio, zero_fails, flip_fails): the verdict an all-zero output and the sign-flipped
    rounded truth -expected would get, by the rules of compare() (without running it twice).
    Zero is finite: it mismatches wherever the rounded truth is not (outside the overflow band).
    -expected is non-finite exactly where expected is: it mismatches where expected is +-Inf."""
    if not t.numel():
        return 0.0, False, False
    zero = torch.where(fin_t & (t != 0), t.abs() / safe_tol, torch.zeros_like(t))
    flip = torch.where(fin_t & fin_e, (expected + t).abs() / safe_tol, torch.zeros_like(t))
    zero_ratio, zero_mismatch, flip_ratio, flip_mismatch = torch.stack([   # one synchronisation
        zero.max(), (~fin_e & ~ambiguous).any().double(), flip.max(), torch.isinf(expected).any().double()]).tolist()
    return zero_ratio, zero_ratio > 1.0 or zero_mismatch > 0, flip_ratio > 1.0 or flip_mismatch > 0


def contract_verdict(component: str, problem: str) -> Verdict:
    return Verdict(component, False, float("nan"), float("nan"), float("inf"), (), 0, problem=problem)
