"""Golden reference of the mHC "pre" operator: the forward and the manual backward of
docs/SPEC.md in plain PyTorch, device-agnostic and dtype-agnostic (fp32 math unless the
caller passes float64 tensors, which is how the float64 truth reuses the forward)."""
from __future__ import annotations

import torch

from impls.schema import HC_EPS, NORM_EPS, POST_SCALE, mix_width  # noqa: F401  (re-exported)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mhc_forward(x, phi, alpha, bias, gamma=None, norm_eps=NORM_EPS, hc_eps=HC_EPS):
    """Forward of docs/SPEC.md. Returns (h_in, h_post, h_res, inv_rms, h_mix, h_pre).

    Math runs in fp32 (float64 if x is float64); h_in is stored in x's dtype."""
    B, S, n, D = x.shape
    cd = _compute_dtype(x)
    vec_x = x.reshape(B, S, n * D).to(cd)
    inv_rms = torch.rsqrt(vec_x.square().mean(-1) + norm_eps)
    xg = vec_x if gamma is None else vec_x * gamma.reshape(n * D).to(cd)
    h_mix = xg @ phi.to(cd).t()
    t = h_mix * inv_rms[..., None]
    a, b = alpha.to(cd), bias.to(cd)
    h_pre = torch.sigmoid(a[0] * t[..., :n] + b[:n]) + hc_eps
    h_post = POST_SCALE * torch.sigmoid(a[1] * t[..., n:2 * n] + b[n:2 * n])
    h_res = (a[2] * t[..., 2 * n:] + b[2 * n:]).reshape(B, S, n, n)
    h_in = (h_pre[..., None] * x.to(cd)).sum(-2).to(x.dtype)
    return h_in, h_post, h_res, inv_rms, h_mix, h_pre


def backward_terms(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                   dh_in, dh_post, dh_res, gamma=None, hc_eps=HC_EPS) -> dict:
    """The eleven steps of docs/SPEC.md, one statement each; returns every named intermediate
    (so that a variant, e.g. a planted bug, can recombine them)."""
    B, S, n, D = x.shape
    cd = _compute_dtype(x)
    f32 = lambda t: t.to(cd)  # noqa: E731  (saved tensors are fp32; keep float64 truth exact)
    xf = f32(x)
    vec_x = xf.reshape(B, S, n * D)
    gamma_flat = torch.ones(n * D, dtype=cd, device=x.device) if gamma is None else f32(gamma).reshape(n * D)
    inv_rms, h_mix, h_pre, h_post = f32(inv_rms), f32(h_mix), f32(h_pre), f32(h_post)
    dh_in, dh_post, dh_res, a = f32(dh_in), f32(dh_post), f32(dh_res), f32(alpha)

    dh_pre = (dh_in[:, :, None, :] * xf).sum(-1)                                     # 1
    s_pre = h_pre - hc_eps
    dh_pre2 = dh_pre * s_pre * (1 - s_pre)                                           # 2
    s_post = h_post / POST_SCALE
    dh_post2 = dh_post * POST_SCALE * s_post * (1 - s_post)
    dh_res_flat = dh_res.reshape(B, S, n * n)
    g = torch.cat([a[0] * dh_pre2, a[1] * dh_post2, a[2] * dh_res_flat], -1)         # 3
    dh_mix = g * inv_rms[..., None]                                                  # 4
    dvec_mm = dh_mix @ f32(phi)                                                      # 5
    xg = vec_x * gamma_flat
    dphi = torch.einsum("bsf,bsk->fk", dh_mix, xg)
    t = h_mix * inv_rms[..., None]                                                   # 6
    dalpha = torch.stack([(dh_pre2 * t[..., :n]).sum(), (dh_post2 * t[..., n:2 * n]).sum(),
                          (dh_res_flat * t[..., 2 * n:]).sum()])
    dbias = torch.cat([dh_pre2.sum((0, 1)), dh_post2.sum((0, 1)), dh_res_flat.sum((0, 1))])  # 7
    dinv_rms = (g * h_mix).sum(-1)                                                   # 8
    dvec_inv = -(dinv_rms * inv_rms.pow(3) / (n * D))[..., None] * vec_x
    dvec_hin = (h_pre[..., None] * dh_in[:, :, None, :]).reshape(B, S, n * D)        # 9
    dx = (dvec_mm * gamma_flat + dvec_inv + dvec_hin).reshape(B, S, n, D).to(x.dtype)  # 10
    dgamma = (vec_x * dvec_mm).sum((0, 1)).reshape(n, D)                            # 11
    return dict(vec_x=vec_x, gamma_flat=gamma_flat, xg=xg, h_mix=h_mix, dh_pre=dh_pre, dh_pre2=dh_pre2,
                dh_post2=dh_post2, g=g, dh_mix=dh_mix, dvec_mm=dvec_mm, dvec_inv=dvec_inv, dvec_hin=dvec_hin,
                dinv_rms=dinv_rms, dx=dx, dphi=dphi, dalpha=dalpha, dbias=dbias, dgamma=dgamma)


def mhc_pre_backward_manual(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                            dh_in, dh_post, dh_res, gamma=None, hc_eps=HC_EPS):
    """Manual backward of docs/SPEC.md. Returns (dx, dphi, dalpha, dbias, dgamma);
    dx in x's dtype, the rest fp32 (float64 when x is float64)."""
    r = backward_terms(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma, hc_eps)
    return r["dx"], r["dphi"], r["dalpha"], r["dbias"], r["dgamma"]
