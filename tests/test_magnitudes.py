"""The magnitude companions the bounds scale with (fuzz/truth.py magnitudes()), worked out by
hand on the known-answer cases of test_spec_known_answers.py.

docs/ERROR-BOUNDS.md: run the same computation on magnitudes, every input replaced by its
absolute value, every subtraction by an addition, every elementwise factor by its absolute
value; so the sigmoid factor s*(1-s) becomes s*(1+s), and each saved activation enters with
its own |value|. A companion bounds the value it belongs to: M >= |y| everywhere."""
import math
from types import SimpleNamespace

import pytest
import torch

from fuzz.cases import CaseParams, make_inputs
from fuzz.truth import magnitudes, truth
from test_spec_known_answers import CASES, HC_EPS, IDS, assert_close, saved_tensors, spec_forward, tensors

OUTPUTS = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre", "dx", "dphi", "dalpha", "dbias", "dgamma")


def hand_magnitudes(c, saved) -> dict:
    """The companions, token by token, from |inputs| and the saved activations."""
    n, D = c.n, c.D
    F, K = n * n + 2 * n, n * D
    s = math.fsum
    ag = [1.0] * K if c.gamma is None else [abs(g) for row in c.gamma for g in row]
    aphi = [[abs(v) for v in row] for row in c.phi]
    aa, ab = [abs(v) for v in c.alpha], [abs(v) for v in c.bias]
    out = {k: [] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre", "dx")}
    dphi, dgamma = [[0.0] * K for _ in range(F)], [0.0] * K
    dalpha, dbias = [0.0] * 3, [0.0] * F
    for b, batch in enumerate(c.x):
        for k in out:
            out[k].append([])
        for t_, tok in enumerate(batch):
            ax = [abs(v) for row in tok for v in row]
            adh_in = [abs(v) for v in c.dh_in[b][t_]]
            adh_post = [abs(v) for v in c.dh_post[b][t_]]
            adh_res = [abs(v) for row in c.dh_res[b][t_] for v in row]
            inv = abs(saved["inv_rms"][b][t_])
            h_mix = saved["h_mix"][b][t_]
            h_pre = [abs(v) for v in saved["h_pre"][b][t_]]
            h_post = [abs(v) for v in saved["h_post"][b][t_]]
            # forward
            m_mix = [s(ax[k] * ag[k] * aphi[f][k] for k in range(K)) for f in range(F)]
            m_t = [m * inv for m in m_mix]
            s_pre = [h + HC_EPS for h in h_pre]           # h_pre - hc_eps, subtraction made an addition
            s_post = [h / 2 for h in h_post]
            dsig_pre = [v * (1 + v) for v in s_pre]
            dsig_post = [v * (1 + v) for v in s_post]
            m_pre = [dsig_pre[i] * (aa[0] * m_t[i] + ab[i]) + h_pre[i] for i in range(n)]
            m_post = [2 * dsig_post[i] * (aa[1] * m_t[n + i] + ab[n + i]) + h_post[i] for i in range(n)]
            m_res = [[aa[2] * m_t[2 * n + i * n + j] + ab[2 * n + i * n + j] for j in range(n)] for i in range(n)]
            m_hin = [s(m_pre[i] * ax[i * D + d] for i in range(n)) for d in range(D)]
            # backward
            m_dh_pre = [s(adh_in[d] * ax[i * D + d] for d in range(D)) for i in range(n)]
            m_pre2 = [m_dh_pre[i] * dsig_pre[i] for i in range(n)]
            m_post2 = [adh_post[i] * 2 * dsig_post[i] for i in range(n)]
            m_g = [aa[0] * v for v in m_pre2] + [aa[1] * v for v in m_post2] + [aa[2] * v for v in adh_res]
            m_dmix = [v * inv for v in m_g]
            m_dvec_mm = [s(m_dmix[f] * aphi[f][k] for f in range(F)) for k in range(K)]
            for f in range(F):
                for k in range(K):
                    dphi[f][k] += m_dmix[f] * ax[k] * ag[k]
            t_abs = [abs(h) * inv for h in h_mix]
            dalpha[0] += s(m_pre2[i] * t_abs[i] for i in range(n))
            dalpha[1] += s(m_post2[i] * t_abs[n + i] for i in range(n))
            dalpha[2] += s(adh_res[j] * t_abs[2 * n + j] for j in range(n * n))
            for f, v in enumerate(m_pre2 + m_post2 + adh_res):
                dbias[f] += v
            m_dinv = s(m_g[f] * abs(h_mix[f]) for f in range(F))
            m_dx = [m_dvec_mm[k] * ag[k] + m_dinv * inv ** 3 / (n * D) * ax[k] + h_pre[k // D] * adh_in[k % D]
                    for k in range(K)]
            for k in range(K):
                dgamma[k] += ax[k] * m_dvec_mm[k]
            for k, v in dict(h_in=m_hin, h_post=m_post, h_res=m_res, inv_rms=inv, h_mix=m_mix, h_pre=m_pre,
                             dx=[m_dx[i * D:(i + 1) * D] for i in range(n)]).items():
                out[k][b].append(v)
    return dict(out, dphi=dphi, dalpha=dalpha, dbias=dbias, dgamma=[dgamma[i * D:(i + 1) * D] for i in range(n)])


def _inputs(c):
    fwd = spec_forward(c)
    return SimpleNamespace(**vars(tensors(c)), **saved_tensors(fwd)), fwd


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_magnitudes_known_answers(c):
    inp, fwd = _inputs(c)
    got = magnitudes(inp)
    expected = hand_magnitudes(c, fwd)
    assert set(got) == set(OUTPUTS)
    for name in OUTPUTS:
        assert got[name].dtype == torch.float64, name
        assert_close(name, got[name], expected[name], rel=1e-13)


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_a_companion_bounds_its_value_on_the_known_cases(c):
    inp, _ = _inputs(c)
    ref, mags = truth(inp), magnitudes(inp)
    for name in OUTPUTS:
        assert (mags[name] >= ref[name].abs() * (1 - 1e-12)).all(), name


@pytest.mark.parametrize("p", [CaseParams(2, 3, 4, 9, "bf16", seed=5), CaseParams(1, 4, 3, 7, "fp16", seed=8,
                                                                               use_gamma=False, bias_shift=-4.0,
                                                                               alpha=(-1.0, 2.0, -0.5))],
                         ids=["defaults", "no-gamma-shifted"])
def test_a_companion_bounds_its_value_on_generated_cases(p):
    """|y| <= M(y) up to the fp32 rounding of the saved activations M is computed from."""
    inp = make_inputs(p)
    ref, mags = truth(inp), magnitudes(inp)
    for name in OUTPUTS:
        assert mags[name].shape == ref[name].shape, name
        assert (mags[name] >= ref[name].abs() * (1 - 1e-6)).all(), name
        assert mags[name].abs().max() > 0, name
