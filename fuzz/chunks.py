"""Cases too big for one float64 pass (the large tier: T*n*D >= 2^31 elements, whose x alone
is 4 GiB in bf16 and 16 GiB in float64): their inputs are built, and their truth, magnitudes
and verdicts made, token chunk by token chunk, so that a case fits one GPU.

Everything per token (x, dh_in, the saved activations, dx, the forward's outputs) is made and
compared one chunk of tokens at a time; the sums over tokens (dphi, dalpha, dbias, dgamma and
their magnitudes) are added up over the chunks in float64 and compared at the end. The inputs
are bit for bit those of fuzz.cases.make_inputs, and the verdicts those of one pass
(tests/test_chunks.py runs both on small cases cut into tiny chunks)."""
from __future__ import annotations

import torch

from fuzz import compare as cmp
from fuzz.cases import Inputs, _pick, laid_out, small_inputs, uniform
from fuzz.kinds import FailureKind
from fuzz.precision import TORCH_DTYPE, UNIT_ROUNDOFF
from fuzz.truth import magnitudes, truth
from impls.golden import mhc_forward
from impls.schema import BACKWARD_OUTPUTS, FORWARD_OUTPUTS, output_specs

THRESHOLD = 1 << 26          # cases with more elements than this (T*n*D) are made in chunks
CHUNK_ELEMENTS = 1 << 24     # elements of x per token chunk: one float64 copy of it is 128 MiB
PER_TOKEN = ("dx", "h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")   # outputs with axes (B, S, ...)


def needed(p) -> bool:
    return p.T * p.n * p.D > THRESHOLD


def token_ranges(T: int, per_token: int, elements: int | None = None) -> list:
    """[(t0, t1), ...] covering 0..T, each about `elements` elements of x (at least one token)."""
    step = max(1, (elements or CHUNK_ELEMENTS) // max(1, per_token))
    return [(t0, min(T, t0 + step)) for t0 in range(0, T, step)]


# ------------------------------------------------------------------ inputs
def make_inputs(p, device="cpu") -> Inputs:
    """fuzz.cases.make_inputs, with every float64 intermediate one token chunk at a time."""
    B, S, n, D, F, T, K = p.B, p.S, p.n, p.D, p.F, p.T, p.n * p.D
    dt = TORCH_DTYPE[p.x_dtype]
    big = torch.finfo(dt).max

    # the small tensors, exactly as make_inputs makes them (in their dtypes, expanded ones repeated)
    small = small_inputs(p, device)
    phi, alpha, bias, gamma = small["phi"], small["alpha"], small["bias"], small["gamma"]

    outliers = _pick(p.seed, "outliers", p.outliers, T * K, device) if p.outliers else None
    zero = _pick(p.seed, "zero_tokens", p.zero_tokens, T, device) if p.zero_tokens else None
    x = torch.empty(T, n, D, dtype=dt, device=device)
    dh_in = torch.empty(T, D, dtype=dt, device=device)
    inv_rms = torch.empty(T, dtype=torch.float32, device=device)
    h_mix = torch.empty(T, F, dtype=torch.float32, device=device)
    h_pre = torch.empty(T, n, dtype=torch.float32, device=device)
    h_post = torch.empty(T, n, dtype=torch.float32, device=device)
    g64 = None if gamma is None else gamma.double()
    phi64, alpha64, bias64 = phi.double(), alpha.double(), bias.double()
    for t0, t1 in token_ranges(T, K):
        c = t1 - t0
        xc = uniform(p.seed, "x", (c, n, D), device, start=t0 * K) * 10.0 ** p.x_scale
        if outliers is not None:
            flat = xc.reshape(-1)
            mine = outliers[(outliers >= t0 * K) & (outliers < t1 * K)] - t0 * K
            flat[mine] = flat[mine] * p.outlier_factor
        dc = uniform(p.seed, "dh_in", (c, D), device, start=t0 * D) * 10.0 ** p.grad_scale
        if zero is not None:
            mine = zero[(zero >= t0) & (zero < t1)] - t0
            xc[mine] = 0.0
            dc[mine] = 0.0
        x[t0:t1] = xc.clamp(-big, big).to(dt)
        dh_in[t0:t1] = dc.clamp(-big, big).to(dt)
        with torch.no_grad():
            _, hpo, _, inv, mix, hpr = mhc_forward(x[t0:t1].double().unsqueeze(0), phi64, alpha64, bias64, g64)
        inv_rms[t0:t1], h_mix[t0:t1], h_pre[t0:t1], h_post[t0:t1] = inv[0], mix[0], hpr[0], hpo[0]
        del xc, dc
    return laid_out(p, dict(small, x=x.view(B, S, n, D), dh_in=dh_in.view(B, S, D), inv_rms=inv_rms.view(B, S),
                            h_mix=h_mix.view(B, S, F), h_pre=h_pre.view(B, S, n), h_post=h_post.view(B, S, n)))


# ------------------------------------------------------------------ verdicts
def _tokens(t):
    """t [B, S, ...] as [T, ...] (a view for every layout the cases use)."""
    return None if t is None else t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _slice(flat: dict, inp: Inputs, t0: int, t1: int) -> Inputs:
    """The case restricted to tokens t0..t1, as a case of B=1, S=t1-t0."""
    per = {k: v[t0:t1].unsqueeze(0) for k, v in flat.items()}
    return Inputs(inp.params, per["x"], inp.phi, inp.alpha, inp.bias, inp.gamma, per["inv_rms"], per["h_mix"],
                  per["h_pre"], per["h_post"], per["dh_in"], per["dh_post"], per["dh_res"])


def judge(outputs, inp: Inputs, direction: str, tols, caps, device) -> tuple[list, str]:
    """fuzz.check._judge for a case judged token chunk by token chunk: (verdicts, failure kind)."""
    p = inp.params
    names = BACKWARD_OUTPUTS if direction == "backward" else FORWARD_OUTPUTS
    specs = output_specs(p.B, p.S, p.n, p.D, p.x_dtype, direction)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(names):
        got = len(outputs) if isinstance(outputs, (tuple, list)) else type(outputs).__name__
        return ([cmp.contract_verdict(direction, f"{direction} returned {got}, expected {len(names)} tensors")],
                FailureKind.CONTRACT)
    outs = dict(zip(names, outputs))
    problems = {k: cmp.contract_problem(k, outs[k], *specs[k], device) for k in names}
    judged = [k for k in names if not problems[k]]
    u_acc = UNIT_ROUNDOFF["fp32"]
    dims = p.dims()

    def verdict(name, out, ref, mag):
        rule = tols.rule(name, p.x_dtype)
        bound = rule.bound(ref, mag, dims, u_acc, UNIT_ROUNDOFF[caps.gemm_precision_of(name, p.x_dtype)])
        return cmp.compare(name, out, ref, bound, specs[name][1])

    flat = {k: _tokens(getattr(inp, k)) for k in ("x", "inv_rms", "h_mix", "h_pre", "h_post", "dh_in",
                                                  "dh_post", "dh_res")}
    flat_out = {k: _tokens(outs[k]) for k in judged if k in PER_TOKEN}
    pieces = {k: [] for k in flat_out}
    sums = {}
    for t0, t1 in token_ranges(p.T, p.n * p.D):
        sub = _slice(flat, inp, t0, t1)
        ref, mags = truth(sub), magnitudes(sub)
        for k in flat_out:
            pieces[k].append((t0, verdict(k, flat_out[k][t0:t1].unsqueeze(0), ref[k], mags[k])))
        for k in judged:
            if k not in PER_TOKEN:
                r, m = sums.get(k, (0.0, 0.0))
                sums[k] = (r + ref[k], m + mags[k])
        del sub, ref, mags
    found = {k: _merge(k, parts, p.S) for k, parts in pieces.items()}
    found.update({k: verdict(k, outs[k], *sums[k]) for k in sums})
    verdicts, kind = [], ""
    for k in names:
        if problems[k]:
            verdicts.append(cmp.contract_verdict(k, problems[k]))
            kind = FailureKind.CONTRACT
            continue
        v = found[k]
        verdicts.append(v)
        if not v.passed and not kind:
            kind = FailureKind.NONFINITE if v.nonfinite_mismatches else FailureKind.TOLERANCE
    if kind != FailureKind.CONTRACT and any(v.nonfinite_mismatches for v in verdicts):
        kind = FailureKind.NONFINITE
    return verdicts, kind


def _merge(name: str, parts: list, S: int) -> cmp.Verdict:
    """One verdict from the verdicts of token chunks [(first token, verdict of [1, c, ...])]."""
    def where(t0, v):
        if not v.worst_index:
            return ()
        t = t0 + v.worst_index[1]
        return (t // S, t % S, *v.worst_index[2:])

    mismatched = [(t0, v) for t0, v in parts if v.nonfinite_mismatches]
    t0, at = mismatched[0] if mismatched else max(parts, key=lambda tv: tv[1].worst_ratio)
    worst = max(v.worst_ratio for _, v in parts)
    return cmp.Verdict(name, all(v.passed for _, v in parts), max(v.max_abs_err for _, v in parts),
                       at.bound_at_worst, worst, where(t0, at), sum(v.nonfinite_mismatches for _, v in parts),
                       at.out_at_worst, at.truth_at_worst,
                       zero_ratio=max(v.zero_ratio for _, v in parts),
                       zero_fails=any(v.zero_fails for _, v in parts), flip_fails=any(v.flip_fails for _, v in parts))
