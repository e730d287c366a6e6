"""Known answers of docs/SPEC.md, worked out here by hand, independent of impls/golden.py.

The float64 truth (fuzz/truth.py), golden, the Triton backend and the generated cases all
run golden's one forward, so a wrong constant or formula there would be shared by the
reference and everything judged against it: no differential test can see it. These tests
hold them to values computed from the SPEC's formulas, written out again below on plain
Python scalars (nothing here imports golden):
- the forward in float64 with math.sqrt and math.exp (rsqrt and sigmoid are not rational);
- the backward's eleven steps, given the saved activations, in exact rational arithmetic
  (fractions.Fraction): every step is +, -, * or /, so the answer is exact.
Inputs are dyadic rationals, exact in float64 (and in fp32/bf16 where those are tested).
"""
import math
import re
from fractions import Fraction as Q
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fuzz.truth import truth

# The SPEC's constants (docs/SPEC.md, "Notation" and "Forward"), written here, not imported.
NORM_EPS = 1e-6          # eps: RMS-norm epsilon, norm_eps = 1e-6
HC_EPS = 1e-6            # hc_eps: floor added to h_pre
POST_SCALE = 2           # h_post = 2 * sigmoid(...)
SPEC = Path(__file__).resolve().parent.parent / "docs" / "SPEC.md"
F64 = torch.float64


def test_constants_are_the_ones_docs_spec_states():
    """If docs/SPEC.md changes a constant, the known answers below must change with it."""
    spec = SPEC.read_text()
    assert re.search(r"\| `eps` \| RMS-norm epsilon, `norm_eps = 1e-6` \|", spec)
    assert re.search(r"\| `hc_eps` \| floor added to `h_pre`, `1e-6` \|", spec)
    assert "h_pre   = sigmoid(alpha0 * t[:, :, 0:n]   + bias[0:n])   + hc_eps" in spec
    assert "h_post  = 2 * sigmoid(alpha1 * t[:, :, n:2n] + bias[n:2n])" in spec
    assert "s_post    = h_post / 2;      dh_post2 = dh_post * 2 * s_post * (1 - s_post)" in spec
    assert (NORM_EPS, HC_EPS, POST_SCALE) == (1e-6, 1e-6, 2)


# ----------------------------------------------------------------- the SPEC, by hand
def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def spec_forward(c) -> dict:
    """docs/SPEC.md "Forward", token by token, in float64. Returns nested lists per output."""
    n, D = c.n, c.D
    F = n * n + 2 * n
    gam = [1.0] * (n * D) if c.gamma is None else [g for row in c.gamma for g in row]
    out = {k: [] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")}
    for b, batch in enumerate(c.x):
        for k in out:
            out[k].append([])
        for s, tok in enumerate(batch):
            vec = [v for row in tok for v in row]                       # vecX, index i*D + d
            inv_rms = 1.0 / math.sqrt(sum(v * v for v in vec) / (n * D) + NORM_EPS)
            h_mix = [math.fsum(vec[k] * gam[k] * c.phi[f][k] for k in range(n * D)) for f in range(F)]
            t = [h * inv_rms for h in h_mix]
            a0, a1, a2 = c.alpha
            h_pre = [sigmoid(a0 * t[i] + c.bias[i]) + HC_EPS for i in range(n)]
            h_post = [POST_SCALE * sigmoid(a1 * t[n + i] + c.bias[n + i]) for i in range(n)]
            h_res = [[a2 * t[2 * n + i * n + j] + c.bias[2 * n + i * n + j] for j in range(n)] for i in range(n)]
            h_in = [math.fsum(h_pre[i] * tok[i][d] for i in range(n)) for d in range(D)]
            for k, v in dict(h_in=h_in, h_post=h_post, h_res=h_res, inv_rms=inv_rms, h_mix=h_mix,
                             h_pre=h_pre).items():
                out[k][b].append(v)
    return out


def spec_backward(c, saved) -> dict:
    """docs/SPEC.md "Backward", its eleven steps, exactly (Fractions), from the saved activations."""
    n, D = c.n, c.D
    F, K = n * n + 2 * n, n * D
    hc = Q(HC_EPS)
    a = [Q(v) for v in c.alpha]
    gam = [Q(1)] * K if c.gamma is None else [Q(g) for row in c.gamma for g in row]
    phi = [[Q(v) for v in row] for row in c.phi]
    dx, dphi = [], [[Q(0)] * K for _ in range(F)]
    dalpha, dbias, dgamma = [Q(0)] * 3, [Q(0)] * F, [Q(0)] * K
    for b, batch in enumerate(c.x):
        dx.append([])
        for s, tok in enumerate(batch):
            vec = [Q(v) for row in tok for v in row]
            dh_in = [Q(v) for v in c.dh_in[b][s]]
            dh_post = [Q(v) for v in c.dh_post[b][s]]
            dh_res = [Q(v) for row in c.dh_res[b][s] for v in row]          # flattened n*n
            inv_rms = Q(saved["inv_rms"][b][s])
            h_mix = [Q(v) for v in saved["h_mix"][b][s]]
            h_pre = [Q(v) for v in saved["h_pre"][b][s]]
            h_post = [Q(v) for v in saved["h_post"][b][s]]
            # 1. dh_pre = sum_D(dh_in * x)
            dh_pre = [sum(dh_in[d] * vec[i * D + d] for d in range(D)) for i in range(n)]
            # 2. the sigmoids' derivatives from their saved outputs
            s_pre = [h - hc for h in h_pre]
            dh_pre2 = [dh_pre[i] * s_pre[i] * (1 - s_pre[i]) for i in range(n)]
            s_post = [h / 2 for h in h_post]
            dh_post2 = [dh_post[i] * 2 * s_post[i] * (1 - s_post[i]) for i in range(n)]
            # 3.-4.
            g = [a[0] * v for v in dh_pre2] + [a[1] * v for v in dh_post2] + [a[2] * v for v in dh_res]
            dh_mix = [v * inv_rms for v in g]
            # 5. dvecX_mm = dh_mix @ phi; dphi += dh_mix^T (vecX * gamma)
            dvec_mm = [sum(dh_mix[f] * phi[f][k] for f in range(F)) for k in range(K)]
            for f in range(F):
                for k in range(K):
                    dphi[f][k] += dh_mix[f] * vec[k] * gam[k]
            # 6. dalpha, with t = h_mix * inv_rms
            t = [h * inv_rms for h in h_mix]
            dalpha[0] += sum(dh_pre2[i] * t[i] for i in range(n))
            dalpha[1] += sum(dh_post2[i] * t[n + i] for i in range(n))
            dalpha[2] += sum(dh_res[j] * t[2 * n + j] for j in range(n * n))
            # 7. dbias
            for f, v in enumerate(dh_pre2 + dh_post2 + dh_res):
                dbias[f] += v
            # 8. the inv_rms path
            dinv_rms = sum(g[f] * h_mix[f] for f in range(F))
            dvec_inv = [-dinv_rms * inv_rms ** 3 / (n * D) * vec[k] for k in range(K)]
            # 9. the h_in path
            dvec_hin = [h_pre[k // D] * dh_in[k % D] for k in range(K)]
            # 10. dx
            dxt = [dvec_mm[k] * gam[k] + dvec_inv[k] + dvec_hin[k] for k in range(K)]
            dx[b].append([dxt[i * D:(i + 1) * D] for i in range(n)])
            # 11. dgamma
            for k in range(K):
                dgamma[k] += vec[k] * dvec_mm[k]
    return dict(dx=dx, dphi=dphi, dalpha=dalpha, dbias=dbias,
                dgamma=[dgamma[i * D:(i + 1) * D] for i in range(n)])


# ----------------------------------------------------------------- the cases
def case(name, x, phi, alpha, bias, gamma, dh_in, dh_post, dh_res):
    n, D = len(x[0][0]), len(x[0][0][0])
    assert len(phi) == n * n + 2 * n and all(len(r) == n * D for r in phi)
    return SimpleNamespace(name=name, n=n, D=D, x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma,
                           dh_in=dh_in, dh_post=dh_post, dh_res=dh_res)


# n=1, D=1, one token, gamma=None: small enough to follow by hand (see the worked test below).
ONE = case("n1-D1", x=[[[[0.5]]]], phi=[[1.0], [-2.0], [0.5]], alpha=(1.5, -0.5, 2.0),
           bias=[0.25, -1.0, 0.125], gamma=None, dh_in=[[[0.75]]], dh_post=[[[-1.25]]],
           dh_res=[[[[0.5]]]])

CASES = [
    ONE,
    # n=2, D=1; one token; every alpha and bias distinct, so any swapped slice shows
    case("n2-D1", x=[[[[1.5], [-0.75]]]],
         phi=[[0.5, -0.25], [1.0, 0.75], [-1.5, 0.5], [0.25, 2.0], [-0.5, 1.25], [0.75, -1.0],
              [1.5, 0.125], [-0.375, -0.625]],
         alpha=(0.75, 1.25, -0.5), bias=[0.5, -0.25, 0.125, -0.75, 1.0, -1.5, 0.375, 0.0625],
         gamma=[[1.5], [0.5]], dh_in=[[[2.0]]], dh_post=[[[0.5, -1.5]]], dh_res=[[[[1.0, -0.5], [0.25, 2.0]]]]),
    # n=2, D=2; two tokens in one batch (sums over tokens), gamma given
    case("n2-D2", x=[[[[1.0, -0.5], [0.25, 2.0]], [[-1.5, 0.75], [0.5, -0.125]]]],
         phi=[[0.5, -0.25, 0.125, 1.0], [-1.0, 0.75, 0.5, -0.5], [0.25, 0.5, -0.75, 0.375],
              [1.25, -0.125, 0.25, -1.0], [-0.5, 1.5, -0.25, 0.625], [0.75, -0.875, 1.0, 0.25],
              [-0.25, 0.125, 0.5, -1.25], [1.0, 0.25, -0.5, 0.75]],
         alpha=(1.25, -0.75, 0.5), bias=[-0.5, 0.25, 0.75, -1.25, 0.0625, -0.375, 1.5, -0.125],
         gamma=[[1.25, 0.75], [0.5, 1.5]],
         dh_in=[[[0.5, -1.0], [1.5, 0.25]]], dh_post=[[[1.0, -0.5], [-2.0, 0.75]]],
         dh_res=[[[[0.5, -1.0], [0.25, 0.75]], [[-0.125, 1.5], [-0.5, 1.0]]]]),
    # n=2, D=3; two batches of one token, gamma=None; x ~ 2^-10, so mean(x^2) is of the order
    # of norm_eps and the epsilon changes inv_rms by a large factor; the pre bias near -12
    # makes sigmoid ~ 6e-6 there, so hc_eps is a sixth of h_pre
    case("n2-D3-eps", x=[[[[2.0 ** -10, -2.0 ** -11, 3 * 2.0 ** -12], [-2.0 ** -10, 2.0 ** -12, 2.0 ** -10]]],
                         [[[3 * 2.0 ** -11, 2.0 ** -10, -2.0 ** -12], [2.0 ** -11, -3 * 2.0 ** -11, 2.0 ** -10]]]],
         phi=[[0.5, -0.25, 1.0, 0.75, -0.5, 0.25], [-1.0, 0.5, 0.25, -0.75, 1.25, 0.5],
              [0.75, 1.0, -0.5, 0.25, 0.125, -1.0], [-0.25, 0.5, 0.75, 1.0, -1.25, 0.375],
              [1.0, -0.75, 0.5, -0.25, 0.5, 1.25], [0.25, 0.125, -1.0, 0.5, 0.75, -0.5],
              [-0.5, 1.0, 0.25, -0.125, 0.5, 0.75], [0.625, -0.5, 0.75, 1.0, -0.25, 0.5]],
         alpha=(2.0, 0.5, -1.5), bias=[-12.0, -11.5, 0.5, -0.25, 0.75, -0.5, 0.25, -1.0], gamma=None,
         dh_in=[[[1.0, -0.5, 0.25]], [[-0.75, 1.5, 0.5]]], dh_post=[[[0.5, -1.0]], [[1.25, 0.25]]],
         dh_res=[[[[1.0, 0.5], [-0.25, 0.75]]], [[[-1.0, 0.125], [0.5, -0.5]]]]),
]
IDS = [c.name for c in CASES]


def tensors(c, dtype=F64, x_dtype=None) -> SimpleNamespace:
    """The case's inputs as tensors (x and dh_in in x_dtype, the rest in dtype)."""
    xd = x_dtype or dtype
    return SimpleNamespace(x=torch.tensor(c.x, dtype=xd), phi=torch.tensor(c.phi, dtype=dtype),
                           alpha=torch.tensor(c.alpha, dtype=dtype), bias=torch.tensor(c.bias, dtype=dtype),
                           gamma=None if c.gamma is None else torch.tensor(c.gamma, dtype=dtype),
                           dh_in=torch.tensor(c.dh_in, dtype=xd), dh_post=torch.tensor(c.dh_post, dtype=dtype),
                           dh_res=torch.tensor(c.dh_res, dtype=dtype))


def saved_tensors(fwd: dict, dtype=F64) -> dict:
    return {k: torch.tensor(fwd[k], dtype=dtype) for k in ("inv_rms", "h_mix", "h_pre", "h_post")}


def backward_args(inp, saved):
    return (inp.x, inp.phi, inp.alpha, inp.bias, saved["inv_rms"], saved["h_mix"], saved["h_pre"],
            saved["h_post"], inp.dh_in, inp.dh_post, inp.dh_res, inp.gamma)


def assert_close(name, got: torch.Tensor, expected, rel: float):
    """Every element within rel * (largest |expected| of the output) of the known answer."""
    exp = torch.tensor(_floats(expected), dtype=F64)
    assert tuple(got.shape) == tuple(exp.shape), f"{name}: shape {tuple(got.shape)}, expected {tuple(exp.shape)}"
    scale = float(exp.abs().max())
    err = float((got.detach().to(F64) - exp).abs().max())
    assert err <= rel * scale, f"{name}: off by {err:.3g}, allowed {rel * scale:.3g}\n got {got}\n expected {exp}"


def _floats(v):
    return [_floats(e) for e in v] if isinstance(v, (list, tuple)) else float(v)


BACKWARD = ("dx", "dphi", "dalpha", "dbias", "dgamma")
FORWARD = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")


# ----------------------------------------------------------------- a case followed by hand
def test_the_n1_case_worked_step_by_step():
    """ONE, with every value of the SPEC's formulas written out (n=1, D=1, F=3, gamma=None),
    checks the two helpers above on the one case small enough to read."""
    x, (p0, p1, p2), (a0, a1, a2), (b0, b1, b2) = 0.5, (1.0, -2.0, 0.5), (1.5, -0.5, 2.0), (0.25, -1.0, 0.125)
    dh_in, dh_post, dh_res = 0.75, -1.25, 0.5
    inv_rms = 1 / math.sqrt(x * x / 1 + 1e-6)              # mean over n*D = 1 element
    assert inv_rms == pytest.approx(1.999996000012, rel=1e-12)   # 2 / sqrt(1 + 4e-6)
    h_mix = (x * p0, x * p1, x * p2)                         # (0.5, -1, 0.25)
    t = [h * inv_rms for h in h_mix]
    h_pre = 1 / (1 + math.exp(-(a0 * t[0] + b0))) + 1e-6
    h_post = 2 / (1 + math.exp(-(a1 * t[1] + b1)))
    h_res = a2 * t[2] + b2
    fwd = spec_forward(ONE)
    assert fwd["inv_rms"] == [[inv_rms]] and fwd["h_mix"] == [[list(h_mix)]]
    assert fwd["h_pre"] == [[[h_pre]]] and fwd["h_post"] == [[[h_post]]] and fwd["h_res"] == [[[[h_res]]]]
    assert fwd["h_in"] == [[[h_pre * x]]]
    # backward, exactly, from these saved values
    X, R, HP, HQ = Q(x), Q(inv_rms), Q(h_pre), Q(h_post)
    s_pre, s_post = HP - Q(1e-6), HQ / 2
    pre2 = Q(dh_in) * X * s_pre * (1 - s_pre)                                   # steps 1, 2
    post2 = Q(dh_post) * 2 * s_post * (1 - s_post)
    g = (Q(a0) * pre2, Q(a1) * post2, Q(a2) * Q(dh_res))                        # step 3
    dmix = [v * R for v in g]                                                   # step 4
    dvec_mm = dmix[0] * Q(p0) + dmix[1] * Q(p1) + dmix[2] * Q(p2)               # step 5
    T = [Q(h) * R for h in h_mix]
    dinv = sum(gi * Q(h) for gi, h in zip(g, h_mix))                            # step 8
    dx = dvec_mm + (-dinv * R ** 3 / 1 * X) + HP * Q(dh_in)                     # steps 8-10
    bwd = spec_backward(ONE, fwd)
    assert bwd["dx"] == [[[[dx]]]]
    assert bwd["dphi"] == [[dmix[0] * X], [dmix[1] * X], [dmix[2] * X]]
    assert bwd["dalpha"] == [pre2 * T[0], post2 * T[1], Q(dh_res) * T[2]]          # step 6
    assert bwd["dbias"] == [pre2, post2, Q(dh_res)]                                 # step 7
    assert bwd["dgamma"] == [[X * dvec_mm]]                                         # step 11


# ----------------------------------------------------------------- golden, truth, Triton
@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_golden_forward_in_float64_is_the_spec(c):
    from impls.golden import mhc_forward
    inp = tensors(c)
    got = mhc_forward(inp.x, inp.phi, inp.alpha, inp.bias, inp.gamma)
    fwd = spec_forward(c)
    for name, out in zip(FORWARD, got):
        assert out.dtype == F64, name
        assert_close(name, out, fwd[name], rel=1e-13)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_golden_backward_in_float64_is_the_spec(c):
    """The eleven steps, from the same saved activations, agree with the exact answer."""
    from impls.golden import mhc_pre_backward_manual
    fwd = spec_forward(c)
    got = mhc_pre_backward_manual(*backward_args(tensors(c), saved_tensors(fwd)))
    exact = spec_backward(c, fwd)
    for name, out in zip(BACKWARD, got):
        assert out.dtype == F64, name
        assert_close(name, out, exact[name], rel=1e-13)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_float64_truth_is_the_spec(c):
    """fuzz.truth: autograd through the forward. Its gradients are the derivative of the SPEC's
    forward, i.e. the eleven steps applied to the forward's own activations."""
    ref = truth(tensors(c))
    fwd = spec_forward(c)
    exact = spec_backward(c, fwd)
    for name in FORWARD:
        assert_close(name, ref[name], fwd[name], rel=1e-13)
    for name in BACKWARD:
        assert_close(name, ref[name], exact[name], rel=1e-11)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_golden_in_fp32_stores_each_output_in_its_dtype(c):
    """What backends get: fp32 tensors, x in bf16 (exact for these inputs). h_in and dx are
    stored in x's dtype, everything else in fp32, each within fp32/bf16 rounding of the answer."""
    from impls.golden import mhc_forward, mhc_pre_backward_manual
    inp = tensors(c, torch.float32, x_dtype=torch.bfloat16)
    assert torch.equal(inp.x.double(), tensors(c).x)
    fwd = spec_forward(c)
    for name, out in zip(FORWARD, mhc_forward(inp.x, inp.phi, inp.alpha, inp.bias, inp.gamma)):
        assert out.dtype == (torch.bfloat16 if name == "h_in" else torch.float32), name
        assert_close(name, out, fwd[name], rel=2.0 ** -8 if name == "h_in" else 1e-5)
    exact = spec_backward(c, fwd)
    for name, out in zip(BACKWARD, mhc_pre_backward_manual(*backward_args(inp, saved_tensors(fwd, torch.float32)))):
        assert out.dtype == (torch.bfloat16 if name == "dx" else torch.float32), name
        assert_close(name, out, exact[name], rel=2.0 ** -8 if name == "dx" else 1e-5)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_triton_is_the_spec(c):
    """The Triton backend (interpreted without a GPU) against the same answers, fp32 x."""
    tm = pytest.importorskip("impls.triton_mhc")
    why = tm.backend.unavailable_reason()
    if why:
        pytest.skip(f"triton: {why}")
    dev = "cpu" if tm.INTERPRET else "cuda"
    inp = tensors(c, torch.float32)
    inp = SimpleNamespace(**{k: None if v is None else v.to(dev) for k, v in vars(inp).items()})
    fwd = spec_forward(c)
    got = tm.backend.forward(inp.x, inp.phi, inp.alpha, inp.bias, inp.gamma)
    for name, out in zip(FORWARD, got):
        assert_close(name, out.cpu(), fwd[name], rel=1e-5)
    saved = {k: v.to(dev) for k, v in saved_tensors(fwd, torch.float32).items()}
    exact = spec_backward(c, fwd)
    for name, out in zip(BACKWARD, tm.backend.backward(*backward_args(inp, saved))):
        assert_close(name, out.cpu(), exact[name], rel=1e-5)
