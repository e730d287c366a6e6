"""The comparison core: a backend's outputs against the float64 truth, one verdict per component.

A component fails when |out - truth| > tol anywhere, or when an element's class (finite, +Inf,
-Inf, NaN) is one no value within the bound rounds to: any value in [truth - tol, truth + tol]
may be what a correct kernel computed, and the output dtype rounds it to Inf past its overflow
threshold (an fp16 dx whose truth exceeds 65504 by more than its bound must be +Inf; one whose
bound reaches below -65520 may also be -Inf). NaN is right only where the truth is NaN.

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
    want = torch.device(expected_device)     # with an index: that device exactly (cuda:1 is not cuda:0)
    if out.device.type != want.type or (want.index is not None and out.device.index != want.index):
        return f"{name}: on {out.device}, expected {want}"
    return ""


def compare(component: str, out: torch.Tensor, truth: torch.Tensor, tol: torch.Tensor,
            out_dtype: torch.dtype) -> Verdict:
    """Verdict for one component. truth and tol are float64 tensors of out's shape."""
    o = out.detach().to(torch.float64)
    t = truth.to(o.device)
    tol = tol.to(o.device)
    expected = t.to(out_dtype).to(torch.float64)          # the truth rounded: Inf past the overflow
    fin_o, fin_t = torch.isfinite(o), torch.isfinite(t)
    # values from top + half an ulp of the top binade (2^emax * u: 65520 in fp16) round to Inf
    top = torch.finfo(out_dtype).max
    to_inf = top + 2.0 ** math.floor(math.log2(top)) * UNIT_ROUNDOFF[NAME_OF[out_dtype]]
    allowed = _allowed_classes(t, fin_t, torch.nan_to_num(tol, nan=0.0), to_inf)
    mismatch = ~_in_class(o, fin_o, allowed)

    both = fin_o & fin_t
    err = torch.where(both, (o - t).abs(), torch.zeros_like(t))
    safe_tol = tol.clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(both, err / safe_tol, torch.zeros_like(t))
    # tol == 0 (exact zero truth with zero magnitude) and err == 0 is a ratio of 0
    ratio = torch.where(err == 0, torch.zeros_like(ratio), ratio)
    if not o.numel():
        return Verdict(component, True, 0.0, 0.0, 0.0, (), 0)
    # every number the verdict needs, gathered on the device and read back in one
    # synchronisation (a case judges about a dozen components: a read per number would cost
    # more than the arithmetic on a GPU). Indices below 2^53 are exact as float64.
    flat_o, flat_t = o.reshape(-1), t.reshape(-1)
    worst_at = torch.argmax(ratio.reshape(-1)).reshape(1)
    first_bad = torch.argmax(mismatch.reshape(-1).to(torch.uint8)).reshape(1)   # first True, if any
    picks = torch.cat([worst_at, first_bad])
    zero, flip = _would_fail(t, expected, fin_t, allowed, safe_tol)
    numbers = torch.cat([
        mismatch.sum().reshape(1).double(), picks.double(),
        ratio.reshape(-1).index_select(0, worst_at), tol.reshape(-1).index_select(0, worst_at),
        flat_o.index_select(0, picks), flat_t.index_select(0, picks), err.max().reshape(1), zero, flip]).tolist()
    n_mismatch, worst_flat, bad_flat, worst, bound, out_w, out_bad, truth_w, truth_bad, max_err = numbers[:10]
    zero_ratio, zero_mismatch, flip_ratio, flip_mismatch = numbers[10:]
    n_mismatch = int(n_mismatch)
    at = int(bad_flat) if n_mismatch else int(worst_flat)
    if n_mismatch:
        out_w, truth_w = out_bad, truth_bad
    idx = _unravel(at, tuple(o.shape))
    return Verdict(component, worst <= 1.0 and n_mismatch == 0, max_err, bound, worst, idx,
                   n_mismatch, out_w, truth_w, zero_ratio=zero_ratio,
                   zero_fails=zero_ratio > 1.0 or zero_mismatch > 0,
                   flip_fails=flip_ratio > 1.0 or flip_mismatch > 0)


def _unravel(flat: int, shape: tuple) -> tuple:
    idx = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        idx.append(i)
    return tuple(reversed(idx))


def _allowed_classes(t, fin_t, tol, to_inf) -> tuple:
    """Per element, which classes of output a correct kernel may give: (finite, +Inf, -Inf, NaN)."""
    lo, hi = t - tol, t + tol
    return (fin_t & (lo < to_inf) & (hi > -to_inf),
            (t == math.inf) | (fin_t & (hi >= to_inf)),
            (t == -math.inf) | (fin_t & (lo <= -to_inf)),
            torch.isnan(t))


def _in_class(o, fin_o, allowed) -> torch.Tensor:
    finite, pos, neg, nan = allowed
    return torch.where(fin_o, finite, torch.where(o == math.inf, pos, torch.where(o == -math.inf, neg, nan)))


def _would_fail(t, expected, fin_t, allowed, safe_tol) -> tuple:
    """What an all-zero output and the sign-flipped rounded truth -expected would get, by the
    rules above (without running them): two float64 tensors on the device, (worst ratio,
    any class mismatch) each, read back with the rest of the verdict."""
    fin_e = torch.isfinite(expected)
    zero = torch.where(fin_t & (t != 0), t.abs() / safe_tol, torch.zeros_like(t))
    flip = torch.where(fin_t & fin_e, (expected + t).abs() / safe_tol, torch.zeros_like(t))
    return (torch.stack([zero.max(), (~allowed[0]).any().double()]),
            torch.stack([flip.max(), (~_in_class(-expected, fin_e, allowed)).any().double()]))


def contract_verdict(component: str, problem: str) -> Verdict:
    return Verdict(component, False, float("nan"), float("nan"), float("inf"), (), 0, problem=problem)
