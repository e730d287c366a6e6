"""Hypothesis strategies for fuzz cases, composed from small pieces.

Every piece shrinks towards the simple case: small shapes, bf16, unit scales, no
special values, contiguous memory. `cases(caps, limits)` only draws inputs inside a
backend's declared capabilities; `unsupported_cases(caps)` draws inputs just outside
them, which the backend must refuse."""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzz.cases import LAYOUTS, CaseParams
from fuzz.geometry import large_shapes
from impls.registry import Capabilities
from impls.schema import X_DTYPES

# D values real kernels get wrong: around block sizes, odd, and the production sizes.
_BLOCKS = (16, 32, 64, 128, 256, 512, 1024)
INTERESTING_D = sorted({1, 3, 7, 33, 100} | {b + d for b in _BLOCKS for d in (-1, 1)} | set(_BLOCKS)
                       | {2560, 4096, 5120, 7168})


@dataclass(frozen=True)
class Limits:
    """Size limits of a profile: how big a case may get (memory and time on this device)."""
    max_elements: int = 1 << 16      # T*n*D
    max_tokens: int = 4096
    max_D: int = 8192
    large: bool = False              # the large tier: shapes from fuzz/geometry.py, not drawn freely


def n_values(caps: Capabilities):
    allowed = caps.n_values or tuple(range(1, 9))
    # prefer 4, the production value, then small ones (shrinks to the first listed)
    ordered = sorted(allowed, key=lambda v: (v != 4, v))
    return st.sampled_from(ordered)


def d_values(caps: Capabilities, limits: Limits):
    m = caps.d_multiple
    top = min(limits.max_D, caps.d_max or limits.max_D)
    interesting = [d for d in INTERESTING_D if d % m == 0 and d <= top]
    small = st.integers(1, max(1, min(top, 64) // m)).map(lambda k: k * m)
    anywhere = st.integers(1, max(1, top // m)).map(lambda k: k * m)
    parts = [small, anywhere] + ([st.sampled_from(interesting)] if interesting else [])
    return st.one_of(*parts)


def token_counts(limits: Limits, max_tokens_cap: int | None):
    top = min(limits.max_tokens, max_tokens_cap or limits.max_tokens)
    return st.one_of(st.integers(1, min(top, 8)), st.integers(1, top),
                     st.sampled_from([t for t in (1, 127, 128, 129, 255, 256, 1024, 4096, 65536) if t <= top]))


@st.composite
def shapes(draw, caps: Capabilities, limits: Limits):
    """(B, S, n, D) inside the capabilities and the size limits."""
    n = draw(n_values(caps))
    D = draw(d_values(caps, limits))
    T = draw(token_counts(limits, caps.max_tokens))
    T = max(1, min(T, limits.max_elements // (n * D)))
    B = draw(st.sampled_from([1, 2, 3]).filter(lambda b: b <= T))
    return B, max(1, T // B), n, D


def log_scales(lo=-4.0, hi=4.0):
    """log10 of a tensor's magnitude, shrinking to 0 (unit scale)."""
    return st.one_of(st.just(0.0), st.integers(int(lo * 2), int(hi * 2)).map(lambda k: k / 2))


alphas = st.tuples(*[st.one_of(st.just(1.0), st.sampled_from([0.5, -1.0, 2.0, -0.01, 4.0, 0.0]))] * 3)
bias_shifts = st.one_of(st.just(0.0), st.sampled_from([4.0, -4.0, 12.0, -12.0, 30.0, -30.0]))


@st.composite
def cases(draw, caps: Capabilities, limits: Limits = Limits(), seeds=st.integers(0, 2**31 - 1)):
    large = large_shapes(caps, limits) if limits.large else []
    if large:       # index and grid limits crossed (fuzz/geometry.py); shrinks to the first listed
        B, S, n, D, x_dtype = draw(st.sampled_from(large))
    else:
        B, S, n, D = draw(shapes(caps, limits))
        x_dtype = draw(st.sampled_from(sorted(caps.x_dtypes, key=lambda d: d != "bf16")))
    T = B * S
    x_scale = draw(log_scales())
    outlier_factor = 64.0
    if x_dtype == "fp16":   # keep x*outliers finite in fp16 (65504): x_scale + log10(64) < 4.8
        x_scale = min(x_scale, 3.0)
    return CaseParams(
        B=B, S=S, n=n, D=D, x_dtype=x_dtype, seed=draw(seeds),
        x_scale=x_scale, phi_scale=draw(st.one_of(st.just(0.0), st.sampled_from([-2.0, -1.0, 1.0, 2.0]))),
        grad_scale=draw(log_scales()), gamma_scale=draw(st.one_of(st.just(0.0), st.sampled_from([-4.0, -2.0, 1.0]))),
        use_gamma=draw(st.booleans().map(lambda b: not b)), alpha=draw(alphas), bias_shift=draw(bias_shifts),
        # never every token: an all-zero x makes dphi, dgamma, dalpha, h_in, h_mix zero, and a
        # case whose truth is zero passes an output that was never computed
        zero_tokens=0 if T < 2 else draw(st.one_of(st.just(0), st.integers(1, T // 2))),
        outliers=draw(st.one_of(st.just(0), st.integers(1, 4))), outlier_factor=outlier_factor,
        layout=draw(st.sampled_from(LAYOUTS)),
    )


def outside_limits(caps: Capabilities) -> list:
    """One small case (as CaseParams fields, no seed) just outside each declared limit,
    labelled with the limit it breaks. Empty when the backend declares no limits."""
    base = dict(B=1, S=2, n=(caps.n_values or (4,))[0], D=caps.d_multiple * 2, x_dtype=caps.x_dtypes[0])
    out = []
    if caps.n_values is not None:
        out += [("n", dict(base, n=v)) for v in range(1, 9) if v not in caps.n_values]
    if caps.d_multiple > 1:
        out += [("D multiple", dict(base, D=caps.d_multiple + r)) for r in range(1, caps.d_multiple)]
    if caps.d_max is not None:
        n_small = min(base["n"], 2) if caps.n_values is None else base["n"]
        out.append(("D max", dict(base, D=caps.d_max + caps.d_multiple, n=n_small)))
    out += [("x dtype", dict(base, x_dtype=d)) for d in X_DTYPES if d not in caps.x_dtypes]
    if caps.max_tokens is not None and caps.max_tokens < 1 << 20:
        out.append(("max tokens", dict(base, S=caps.max_tokens + 1, D=caps.d_multiple)))
    return out


def unsupported_cases(caps: Capabilities, device: str, seeds=st.integers(0, 2**31 - 1)):
    """Small cases just outside one declared limit (None if the backend declares none)."""
    options = [fields for _, fields in outside_limits(caps)]
    if not options:
        return None
    return st.builds(lambda d, seed: CaseParams(**d, seed=seed), st.sampled_from(options), seeds)
