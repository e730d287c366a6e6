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

import itertools
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
    return compare_many([(component, out, truth, tol, out_dtype)])[0]


def compare_many(items) -> list:
    """Verdicts for several components, [(component, out, truth, tol, out_dtype)], all on one
    device, in order: each is what compare() says of it alone. The components are laid end to
    end and judged in one pass, with per-component reductions, and every number the verdicts
    need is read back in one synchronisation: a call's five to six components cost one fixed
    set of launches instead of one set each (on a GPU the launches, not the arithmetic, are
    what a case waits for)."""
    verdicts = [Verdict(component, True, 0.0, 0.0, 0.0, (), 0) for component, *_ in items]
    judged = [i for i, (_, out, _, _, _) in enumerate(items) if out.numel()]     # an empty output passes
    if judged:
        rows = _numbers([items[i] for i in judged]).tolist()
        for i, row in zip(judged, rows):
            verdicts[i] = _verdict(items[i][0], tuple(items[i][1].shape), row)
    return verdicts


def _numbers(items) -> torch.Tensor:
    """The numbers of the verdicts of (non-empty) components: one float64 row per component,
    read by _verdict. Indices below 2^53 are exact as float64."""
    device = items[0][1].device
    sizes = [out.numel() for _, out, _, _, _ in items]
    o = torch.cat([out.detach().reshape(-1).to(torch.float64) for _, out, _, _, _ in items])
    t = torch.cat([truth.to(device).broadcast_to(out.shape).reshape(-1) for _, out, truth, _, _ in items])
    tol = torch.cat([tl.to(device).broadcast_to(out.shape).reshape(-1) for _, out, _, tl, _ in items])
    # the truth rounded to the output dtype (Inf past its overflow), and that dtype's overflow
    # threshold: values from top + half an ulp of the top binade (2^emax * u: 65520 in fp16)
    # round to Inf
    expected, to_inf, start = [], [], 0
    for dtype, group in itertools.groupby(zip(items, sizes), key=lambda item: item[0][4]):
        n = sum(size for _, size in group)
        top = torch.finfo(dtype).max
        expected.append(t[start:start + n].to(dtype).to(torch.float64))
        to_inf.append(torch.full((n,), top + 2.0 ** math.floor(math.log2(top)) * UNIT_ROUNDOFF[NAME_OF[dtype]],
                                 dtype=torch.float64, device=device))
        start += n
    expected, to_inf = torch.cat(expected), torch.cat(to_inf)
    fin_o, fin_t = torch.isfinite(o), torch.isfinite(t)
    allowed = _allowed_classes(t, fin_t, torch.nan_to_num(tol, nan=0.0), to_inf)
    mismatch = ~_in_class(o, fin_o, allowed)

    both = fin_o & fin_t
    err = torch.where(both, (o - t).abs(), torch.zeros_like(t))
    safe_tol = tol.clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(both, err / safe_tol, torch.zeros_like(t))
    # tol == 0 (exact zero truth with zero magnitude) and err == 0 is a ratio of 0
    ratio = torch.where(err == 0, torch.zeros_like(ratio), ratio)
    zero, flip, flip_mismatch = _would_fail(t, expected, fin_t, allowed, safe_tol)

    # per component, one max over the rows of what is maximised: values and first indices
    # (torch.max's rules: NaN is the maximum, the first of equal maxima is the one given);
    # the first index of a 0/1 row is its first 1, where it has one
    rows = torch.stack([ratio, mismatch.to(torch.float64), err, zero, (~allowed[0]).to(torch.float64), flip,
                        flip_mismatch.to(torch.float64)])
    offsets = list(itertools.accumulate(sizes, initial=0))        # component j: offsets[j] .. offsets[j+1]
    tops = [rows[:, a:b].max(dim=1) for a, b in zip(offsets, offsets[1:])]
    top = torch.stack([v for v, _ in tops])                    # [k, 7]
    at = torch.stack([i for _, i in tops])                     # [k, 7]: column 0 worst ratio, 1 first mismatch
    bounds = torch.tensor(offsets, device=device)
    below = torch.nn.functional.pad(mismatch.cumsum(0), (1, 0))    # mismatches before each offset
    worst, bad = at[:, 0] + bounds[:-1], at[:, 1] + bounds[:-1]    # offsets into the whole
    columns = [below[bounds[1:]] - below[bounds[:-1]], at[:, 0], at[:, 1], top[:, 0], tol[worst], o[worst], o[bad],
               t[worst], t[bad], top[:, 2], top[:, 3], top[:, 4], top[:, 5], top[:, 6]]
    return torch.stack([c.to(torch.float64) for c in columns], 1)


def _verdict(component: str, shape: tuple, numbers: list) -> Verdict:
    n_mismatch, worst_flat, bad_flat, worst, bound, out_w, out_bad, truth_w, truth_bad, max_err = numbers[:10]
    zero_ratio, zero_mismatch, flip_ratio, flip_mismatch = numbers[10:]
    n_mismatch = int(n_mismatch)
    at = int(bad_flat) if n_mismatch else int(worst_flat)
    if n_mismatch:
        out_w, truth_w = out_bad, truth_bad
    return Verdict(component, worst <= 1.0 and n_mismatch == 0, max_err, bound, worst, _unravel(at, shape),
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
    rules above (without running them), per element: the zero output's ratio, the flipped
    output's ratio, and whether the flipped output's class is wrong (an all-zero output's is
    wrong where a finite output is not allowed)."""
    fin_e = torch.isfinite(expected)
    zero = torch.where(fin_t & (t != 0), t.abs() / safe_tol, torch.zeros_like(t))
    flip = torch.where(fin_t & fin_e, (expected + t).abs() / safe_tol, torch.zeros_like(t))
    return zero, flip, ~_in_class(-expected, fin_e, allowed)


def contract_verdict(component: str, problem: str) -> Verdict:
    return Verdict(component, False, float("nan"), float("nan"), float("inf"), (), 0, problem=problem)
