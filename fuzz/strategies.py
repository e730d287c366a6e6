"""Hypothesis strategies for fuzz cases, composed from small pieces.

Every piece shrinks towards the simple case: small shapes, bf16, unit scales, no
special values, contiguous memory. `cases(caps, limits)` only draws inputs inside a
backend's declared capabilities; `unsupported_cases(caps)` draws inputs just outside
them, which the backend must refuse."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from hypothesis import strategies as st

from fuzz.cases import ARG_LAYOUTS, GRAD_MODES, LAYOUTS, CaseParams
from fuzz.geometry import large_shapes
from impls.registry import Capabilities
from impls.schema import DTYPES, SMALL_ARGS, X_DTYPES

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


@dataclass(frozen=True)
class ContextSpace:
    """The execution contexts a run can give its cases: CUDA streams on a GPU, the other-device
    placement with two GPUs or more, a fresh process per case when the executor has one, one
    case in `fresh_one_in` or so."""
    cuda: bool = False
    gpus: int = 0
    fresh_workers: bool = False
    fresh_one_in: int = 64


# How rare a first call in a fresh process is: as rare as it is dear. On the CPU it costs a few
# cases' time; on a GPU its process pays CUDA's start and loads every kernel it calls: 2.7 s
# (golden), 5.1 s (Triton), 4.4 s (TileLang) on an H200, against 40-50 ms for a case in the
# warm worker. One in 64 there took 11-36% of a run; one in 512 keeps it near a tenth.
FRESH_ONE_IN = {"cpu": 64, "cuda": 512}


def context_space(device: str, executor=None) -> ContextSpace:
    """What this run can give: streams on CUDA, another device with 2 GPUs or more (seen by this
    process, as by its workers), fresh worker processes when the executor has them."""
    gpus = 0
    if device == "cuda":
        import torch
        gpus = torch.cuda.device_count()
    return ContextSpace(cuda=device == "cuda", gpus=gpus, fresh_workers=hasattr(executor, "run_fresh"),
                        fresh_one_in=FRESH_ONE_IN["cuda" if device == "cuda" else "cpu"])


def _rarely(values, one_in: int):
    """values[0] most of the time (and when shrunk), each other value one time in `one_in` or so."""
    return st.sampled_from([values[0]] * (one_in - 1) * (len(values) - 1) + list(values[1:]))


def _one_choice(weighted) -> list:
    """The combinations of several fields' weighted values [(field, ((value, weight), ...)), ...] as
    one list for st.sampled_from: each combination repeated by the product of its weights, the
    simplest first (fewest fields off their first value), so that it shrinks towards the default.
    One choice instead of one per field: Hypothesis's mutator otherwise spends a case on each
    new permutation of the fields while the shape stays put (measured: the rare bug of two_bugs
    took twice the cases to find)."""
    names = [name for name, _ in weighted]
    combos = []
    for picked in itertools.product(*[list(enumerate(values)) for _, values in weighted]):
        off = sum(i > 0 for i, _ in picked)
        weight = math.prod(w for _, (_, w) in picked)
        combos.append((off, [i for i, _ in picked], dict(zip(names, (v for _, (v, _) in picked))), weight))
    combos.sort(key=lambda c: (c[0], c[1]))
    return [combo for _, _, combo, weight in combos for _ in range(weight)]


def contexts(space: ContextSpace):
    """The execution-context fields of a case (fuzz/context.py), shrinking to the default: grad
    mode not the default half the time, a repeated call one case in four and, where the run can
    give them, the side stream and the other device one case in four each (one choice), and a
    first call in a fresh process one case in space.fresh_one_in or so."""
    weighted = [("grad_mode", tuple((g, 3 if i == 0 else 1) for i, g in enumerate(GRAD_MODES))),
                ("calls", ((1, 3), (2, 1))),
                ("stream", (("default", 3), ("side", 1)) if space.cuda else (("default", 1),)),
                ("placement", (("current", 3), ("other", 1)) if space.cuda and space.gpus >= 2 else (("current", 1),))]
    first_call = _rarely((False, True), space.fresh_one_in) if space.fresh_workers else st.just(False)
    return st.tuples(st.sampled_from(_one_choice(weighted)), first_call).map(lambda c: dict(c[0], first_call=c[1]))


def _some(pairs):
    """None, one, or two or three of (input, value) `pairs` (one input at most once), sorted:
    each a choice of its own, shrinking to none."""
    if not pairs:
        return st.just(())
    parts = [st.just(()), st.sampled_from(pairs).map(lambda p: (p,))]
    if len({name for name, _ in pairs}) > 1:
        parts.append(st.lists(st.sampled_from(pairs), min_size=2, max_size=3, unique_by=lambda p: p[0])
                     .map(lambda v: tuple(sorted(v))))
    return st.one_of(*parts)


def arg_layouts(caps: Capabilities):
    """Some inputs other than x and dh_in in another layout the backend accepts (shrinks to none)."""
    return _some([(name, lay) for name, lays in ARG_LAYOUTS.items() for lay in lays if lay in caps.layouts_of(name)])


def arg_dtypes(caps: Capabilities):
    """Some small inputs in another dtype than fp32, where the backend declares it (shrinks to none)."""
    return _some([(name, dt) for name in SMALL_ARGS for dt in caps.dtypes_of(name, "bf16") if dt != "fp32"])


alphas = st.tuples(*[st.one_of(st.just(1.0), st.sampled_from([0.5, -1.0, 2.0, -0.01, 4.0, 0.0]))] * 3)
bias_shifts = st.one_of(st.just(0.0), st.sampled_from([4.0, -4.0, 12.0, -12.0, 30.0, -30.0]))


def cases(caps: Capabilities, limits: Limits = Limits(), seeds=st.integers(0, 2**31 - 1),
          space: ContextSpace = ContextSpace()):
    """Cases inside `caps` and `limits`, in the contexts `space` can give. The pieces that do not
    depend on an earlier draw are built once here, not at every draw (building a strategy costs
    Hypothesis more than drawing from it)."""
    large = large_shapes(caps, limits) if limits.large else []
    large_st = st.sampled_from(large) if large else None
    shape_st = shapes(caps, limits)
    x_dtype_st = st.sampled_from(sorted(caps.x_dtypes, key=lambda d: d != "bf16"))
    phi_scale_st = st.one_of(st.just(0.0), st.sampled_from([-2.0, -1.0, 1.0, 2.0]))
    gamma_scale_st = st.one_of(st.just(0.0), st.sampled_from([-4.0, -2.0, 1.0]))
    use_gamma_st = st.just(True) if caps.gamma_required else st.booleans().map(lambda b: not b)
    outliers_st = st.one_of(st.just(0), st.integers(1, 4))
    layout_st = st.sampled_from([lay for lay in LAYOUTS if lay in caps.layouts_of("x") and lay in caps.layouts_of("dh_in")])
    arg_layouts_st, arg_dtypes_st, context_st = arg_layouts(caps), arg_dtypes(caps), contexts(space)
    scales = log_scales()

    @st.composite
    def one_case(draw):
        if large:       # index and grid limits crossed (fuzz/geometry.py); shrinks to the first listed
            B, S, n, D, x_dtype = draw(large_st)
        else:
            B, S, n, D = draw(shape_st)
            x_dtype = draw(x_dtype_st)
        T = B * S
        x_scale = draw(scales)
        outlier_factor = 64.0
        if x_dtype == "fp16":   # keep x*outliers finite in fp16 (65504): x_scale + log10(64) < 4.8
            x_scale = min(x_scale, 3.0)
        return CaseParams(
            B=B, S=S, n=n, D=D, x_dtype=x_dtype, seed=draw(seeds),
            x_scale=x_scale, phi_scale=draw(phi_scale_st),
            grad_scale=draw(scales), gamma_scale=draw(gamma_scale_st),
            use_gamma=draw(use_gamma_st), alpha=draw(alphas), bias_shift=draw(bias_shifts),
            # never every token: an all-zero x makes dphi, dgamma, dalpha, h_in, h_mix zero, and a
            # case whose truth is zero passes an output that was never computed
            zero_tokens=0 if T < 2 else draw(st.one_of(st.just(0), st.integers(1, T // 2))),
            outliers=draw(outliers_st), outlier_factor=outlier_factor,
            layout=draw(layout_st),
            arg_layouts=draw(arg_layouts_st), arg_dtypes=draw(arg_dtypes_st), **draw(context_st),
        )

    return one_case()


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
    if caps.gamma_required:
        out.append(("gamma", dict(base, use_gamma=False)))
    out += [(f"{name} dtype", dict(base, arg_dtypes=((name, dt),)))
            for name in caps.input_dtypes for dt in DTYPES if dt not in caps.dtypes_of(name, base["x_dtype"])]
    for name in caps.input_layouts:
        for lay in (LAYOUTS if name in ("x", "dh_in") else ARG_LAYOUTS.get(name, ())):
            fields = dict(base, layout=lay) if name in ("x", "dh_in") else dict(base, arg_layouts=((name, lay),))
            query = CaseParams(**fields).capability_query(caps.devices[0])
            if caps.refusal(**query):     # outside for real on this shape (not a layout that vanished)
                out.append((f"{name} layout", fields))
    return out


def unsupported_cases(caps: Capabilities, device: str, seeds=st.integers(0, 2**31 - 1)):
    """Small cases just outside one declared limit (None if the backend declares none)."""
    options = [fields for _, fields in outside_limits(caps)]
    if not options:
        return None
    return st.builds(lambda d, seed: CaseParams(**d, seed=seed), st.sampled_from(options), seeds)
