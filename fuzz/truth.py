"""The float64 truth and the magnitude companions the tolerances scale with.

truth(): torch.autograd through the golden forward run in float64 on the case's
(rounded) inputs; grad outputs are dh_in, dh_post, dh_res. It does not look at the
saved activations a backend receives (those are fp32 roundings of the same forward).
This is the truth of generated cases.

truth_from_saved(): the backward of docs/SPEC.md's eleven steps in float64 on the saved
activations as given (inv_rms, h_mix, h_pre, h_post), for tensors given from elsewhere,
whose activations may not be the forward of their inputs. On generated cases the two
agree to a small fraction of every bound (tests/test_given.py).

magnitudes(): the same computation run on magnitudes (|inputs|, every subtraction an
addition, every elementwise factor by its absolute value), in float64. For an output y,
M(y) bounds the sum of |terms| that rounding errors scale with (docs/ERROR-BOUNDS.md)."""
from __future__ import annotations

import torch

from impls.golden import HC_EPS, backward_terms, mhc_forward
from impls.schema import BACKWARD_OUTPUTS as BACKWARD  # noqa: F401  (re-exported)
from impls.schema import FORWARD_OUTPUTS as FORWARD


def _f64(t):
    return None if t is None else t.detach().to(torch.float64)


def truth(inp) -> dict:
    """Float64 forward outputs and gradients for a case's inputs (a fuzz.cases.Inputs)."""
    B, S, n, D = inp.x.shape
    leaves = {k: _f64(getattr(inp, k)).requires_grad_() for k in ("x", "phi", "alpha", "bias")}
    gamma = _f64(inp.gamma) if inp.gamma is not None else torch.ones(n, D, dtype=torch.float64, device=inp.x.device)
    leaves["gamma"] = gamma.requires_grad_()
    with torch.enable_grad():
        fwd = mhc_forward(leaves["x"], leaves["phi"], leaves["alpha"], leaves["bias"], leaves["gamma"])
        h_in, h_post, h_res = fwd[:3]
        torch.autograd.backward([h_in, h_post, h_res], [_f64(inp.dh_in), _f64(inp.dh_post), _f64(inp.dh_res)])
    out = dict(zip(FORWARD, (t.detach() for t in fwd)))
    out.update(dx=leaves["x"].grad, dphi=leaves["phi"].grad, dalpha=leaves["alpha"].grad,
               dbias=leaves["bias"].grad, dgamma=leaves["gamma"].grad)
    return out


def truth_from_saved(inp) -> dict:
    """Float64 forward outputs of the given inputs, and the float64 backward of the SPEC
    steps evaluated with the saved activations as they are (gamma=None: ones)."""
    with torch.no_grad():
        fwd = mhc_forward(*(_f64(getattr(inp, k)) for k in ("x", "phi", "alpha", "bias", "gamma")))
        args = {k: _f64(getattr(inp, k)) for k in ("x", "phi", "alpha", "bias", "inv_rms", "h_mix", "h_pre",
                                                    "h_post", "dh_in", "dh_post", "dh_res", "gamma")}
        r = backward_terms(**args)
    out = dict(zip(FORWARD, fwd))
    out.update({k: r[k] for k in ("dx", "dphi", "dalpha", "dbias", "dgamma")})
    return out


def magnitudes(inp) -> dict:
    """Magnitude companion M of every forward output and gradient (float64, same shapes)."""
    B, S, n, D = inp.x.shape
    ax = _f64(inp.x).abs()
    vx = ax.reshape(B, S, n * D)
    ag = torch.ones(n * D, dtype=torch.float64, device=ax.device) if inp.gamma is None \
        else _f64(inp.gamma).abs().reshape(n * D)
    aphi, aa, ab = _f64(inp.phi).abs(), _f64(inp.alpha).abs(), _f64(inp.bias).abs()
    inv_rms, h_mix = _f64(inp.inv_rms).abs(), _f64(inp.h_mix)
    h_pre, h_post = _f64(inp.h_pre).abs(), _f64(inp.h_post).abs()
    adh_in, adh_post = _f64(inp.dh_in).abs(), _f64(inp.dh_post).abs()
    adh_res = _f64(inp.dh_res).abs().reshape(B, S, n * n)

    # forward: products of the GEMM, then elementwise maps with |derivative| factors
    m_inv = inv_rms                                   # positive terms only: M = |value|
    m_mix = (vx * ag) @ aphi.t()
    m_t = m_mix * inv_rms[..., None]
    # s_pre = h_pre - hc_eps: its magnitude is |h_pre| + hc_eps (the rounding of the saved
    # h_pre, ~u*|h_pre|, can exceed s itself when the sigmoid is saturated near 0)
    s_pre, s_post = h_pre + HC_EPS, h_post / 2
    dsig_pre, dsig_post = s_pre * (1 + s_pre), s_post * (1 + s_post)
    m_hpre = dsig_pre * (aa[0] * m_t[..., :n] + ab[:n]) + h_pre
    m_hpost = 2 * dsig_post * (aa[1] * m_t[..., n:2 * n] + ab[n:2 * n]) + h_post
    m_hres = (aa[2] * m_t[..., 2 * n:] + ab[2 * n:]).reshape(B, S, n, n)
    m_hin = (m_hpre[..., None] * ax).sum(-2)

    # backward, the eleven steps on magnitudes
    m_dh_pre = (adh_in[:, :, None, :] * ax).sum(-1)
    m_pre2 = m_dh_pre * dsig_pre
    m_post2 = adh_post * 2 * dsig_post
    m_g = torch.cat([aa[0] * m_pre2, aa[1] * m_post2, aa[2] * adh_res], -1)
    m_dmix = m_g * inv_rms[..., None]
    m_dvec_mm = m_dmix @ aphi
    m_dphi = torch.einsum("bsf,bsk->fk", m_dmix, vx * ag)
    t_abs = h_mix.abs() * inv_rms[..., None]
    m_dalpha = torch.stack([(m_pre2 * t_abs[..., :n]).sum(), (m_post2 * t_abs[..., n:2 * n]).sum(),
                            (adh_res * t_abs[..., 2 * n:]).sum()])
    m_dbias = torch.cat([m_pre2.sum((0, 1)), m_post2.sum((0, 1)), adh_res.sum((0, 1))])
    m_dinv = (m_g * h_mix.abs()).sum(-1)
    m_dvec_inv = (m_dinv * inv_rms.pow(3) / (n * D))[..., None] * vx
    m_dvec_hin = (h_pre[..., None] * adh_in[:, :, None, :]).reshape(B, S, n * D)
    m_dx = (m_dvec_mm * ag + m_dvec_inv + m_dvec_hin).reshape(B, S, n, D)
    m_dgamma = (vx * m_dvec_mm).sum((0, 1)).reshape(n, D)
    return dict(h_in=m_hin, h_post=m_hpost, h_res=m_hres, inv_rms=m_inv, h_mix=m_mix, h_pre=m_hpre,
                dx=m_dx, dphi=m_dphi, dalpha=m_dalpha, dbias=m_dbias, dgamma=m_dgamma)
