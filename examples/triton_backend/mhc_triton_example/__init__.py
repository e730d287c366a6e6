"""An out-of-tree Triton backend for mhc-fuzz: two small Triton kernels, torch for the rest.

With x = [T, n, D] (T = B*S tokens), K = n*D and F = n*n + 2n (docs/SPEC.md of mhc-fuzz):

  _dh_pre_kernel  a row-wise reduction in fp32 over the T*n rows of x:
                      dh_pre[t, i] = sum_d dh_in[t, d] * x[t, i, d]
  torch           the per-token math on [T, F] tensors: g, dh_mix = g * inv_rms, the coefficient
                  of the inv_rms term of dx, dalpha and dbias (sums over tokens in one fixed order)
  _dx_kernel      one program per (block of tokens, block of D), every stream i, one pass over x
                  and dh_in:
                      dx = (dh_mix @ phi)[:, i*D + d] * gamma + coef * x + h_pre[:, i] * dh_in
                  the mix product on tensor cores (tl.dot, F padded to a power of two, TF32)
  torch           P = dh_mix^T @ x, an fp32 GEMM, then dphi = P * gamma and
                  dgamma = sum_F phi * P (the same sum as sum_tokens x * (dh_mix @ phi), reordered)

What it needs, declared in its Capabilities (the fuzzer stays inside, and checks that
everything outside is refused):
  * x in bf16 (what mHC training uses): dx is written in bf16, which is why TF32 is enough
    for its product (its 2^-11 operand rounding sits below dx's own 2^-8);
  * n in (4, 6, 8): the stream counts it is written and tested for;
  * D a multiple of 16: the kernels promise the compiler 16-aligned row offsets
    (tl.multiple_of), so that rows load as wide vectors; another D would break that promise;
  * gemm_precision: dx's product dh_mix @ phi runs in TF32 (declared for dx, so the bounds
    allow for it); P is an fp32 GEMM;
  * deterministic: no atomics, every sum in one order fixed by the shape.

Needs not declarable yet (this wrapper handles them; declare them once Capabilities can):
  * contiguous x, dh_in and saved tensors: the kernels index rows densely, so the wrapper
    copies a non-contiguous input (`.contiguous()`);
  * a gamma: the dx kernel always multiplies by gamma, so gamma=None is passed as ones; dgamma
    is returned either way (the gradient gamma would have, at gamma = ones).

On the CPU it runs under TRITON_INTERPRET=1 (tests, CI): there every tl.dot gets fp32
operands (a bf16 tl.dot is wrong in the interpreter) and no atomics are used."""
from __future__ import annotations

import os

import torch

from impls.registry import Capabilities, check_inputs

try:
    import triton
    import triton.language as tl
except ImportError as exc:          # the backend then says why it cannot run
    triton, _IMPORT_ERROR = None, f"triton is not installed: {exc}"
else:
    _IMPORT_ERROR = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HC_EPS = 1e-6          # the floor the forward added to h_pre (docs/SPEC.md)
BLOCK_T = 32           # tokens per dx program (tl.dot needs at least 16)
BLOCK_R = 16           # rows of x per dh_pre program


if triton is not None:
    @triton.jit
    def _dh_pre_kernel(x_ptr, dh_in_ptr, dh_pre_ptr, R, D, N: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_D: tl.constexpr):
        # x viewed as R = T*N rows of D: dh_pre[r] = sum_d x[r, d] * dh_in[r // N, d]
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rows = r < R
        r64 = r.to(tl.int64)
        x_row = tl.multiple_of(r64 * D, 16)            # D % 16 == 0 (declared): aligned rows
        g_row = tl.multiple_of((r64 // N) * D, 16)
        d = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            m = rows[:, None] & (d0 + d[None, :] < D)
            xv = tl.load(x_ptr + x_row[:, None] + d0 + d[None, :], mask=m, other=0.0)
            g = tl.load(dh_in_ptr + g_row[:, None] + d0 + d[None, :], mask=m, other=0.0)
            acc += xv.to(tl.float32) * g.to(tl.float32)
        tl.store(dh_pre_ptr + r64, tl.sum(acc, axis=1), mask=rows)

    @triton.jit
    def _dx_kernel(x_ptr, dh_in_ptr, dh_mix_ptr, phi_ptr, gamma_ptr, coef_ptr, h_pre_ptr, dx_ptr, T, D,
                   N: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_D: tl.constexpr):
        # one block of tokens x one block of D, every stream: dh_in and dh_mix are read once
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        f = tl.arange(0, FP)
        t64 = t.to(tl.int64)
        K = N * D
        x_row = tl.multiple_of(t64 * K, 16)            # D % 16 == 0 (declared): aligned rows
        g_row = tl.multiple_of(t64 * D, 16)
        rows, cols = t < T, d < D
        m = rows[:, None] & cols[None, :]
        mix = tl.load(dh_mix_ptr + t64[:, None] * F + f[None, :], mask=rows[:, None] & (f < F)[None, :], other=0.0)
        g = tl.load(dh_in_ptr + g_row[:, None] + d[None, :], mask=m, other=0.0).to(tl.float32)
        coef = tl.load(coef_ptr + t64, mask=rows, other=0.0)
        phi_at, phi_mask = f[:, None] * K + d[None, :], (f < F)[:, None] & cols[None, :]
        x_at = x_row[:, None] + d[None, :]
        for i in tl.static_range(N):           # stream i: columns i*D + d of phi, gamma and x's rows
            mm = tl.dot(mix, tl.load(phi_ptr + phi_at + i * D, mask=phi_mask, other=0.0),
                        input_precision="tf32")     # fp32 operands, TF32 tensor cores
            xv = tl.load(x_ptr + x_at + i * D, mask=m, other=0.0).to(tl.float32)
            h_pre = tl.load(h_pre_ptr + t64 * N + i, mask=rows, other=0.0)
            gamma = tl.load(gamma_ptr + i * D + d, mask=cols, other=0.0)
            dx = mm * gamma[None, :] + coef[:, None] * xv + h_pre[:, None] * g
            tl.store(dx_ptr + x_at + i * D, dx.to(dx_ptr.dtype.element_ty), mask=m)


def mhc_pre_backward_triton_example(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res,
                                    gamma=None):
    """The backward of docs/SPEC.md: (dx, dphi, dalpha, dbias, dgamma)."""
    B, S, n, D = x.shape
    T, K, F = B * S, n * D, n * n + 2 * n
    f32 = lambda t, *shape: t.reshape(*shape).float().contiguous()  # noqa: E731
    xs, dh = x.contiguous().reshape(T, K), dh_in.contiguous().reshape(T, D)
    phi32 = phi.float().contiguous()
    gamma_flat = torch.ones(K, device=x.device) if gamma is None else f32(gamma, K)

    dh_pre = torch.empty(T, n, dtype=torch.float32, device=x.device)
    _dh_pre_kernel[(triton.cdiv(T * n, BLOCK_R),)](xs, dh, dh_pre, T * n, D, N=n, BLOCK_R=BLOCK_R,
                                                    BLOCK_D=min(128, triton.next_power_of_2(D)))

    ir, mix, hp = f32(inv_rms, T), f32(h_mix, T, F), f32(h_pre, T, n)
    s_pre, s_post = hp - HC_EPS, f32(h_post, T, n) / 2
    dh_pre2 = dh_pre * s_pre * (1 - s_pre)
    dh_post2 = f32(dh_post, T, n) * 2 * s_post * (1 - s_post)
    res = f32(dh_res, T, n * n)
    a = alpha.float()
    g = torch.cat([a[0] * dh_pre2, a[1] * dh_post2, a[2] * res], 1)
    dh_mix = (g * ir[:, None]).contiguous()
    t_mix = mix * ir[:, None]
    dalpha = torch.stack([(dh_pre2 * t_mix[:, :n]).sum(), (dh_post2 * t_mix[:, n:2 * n]).sum(),
                          (res * t_mix[:, 2 * n:]).sum()])
    dbias = torch.cat([dh_pre2.sum(0), dh_post2.sum(0), res.sum(0)])
    coef = (-(g * mix).sum(1) * ir.pow(3) / K).contiguous()

    dx = torch.empty_like(xs)
    block_d = min(64, triton.next_power_of_2(D))
    _dx_kernel[(triton.cdiv(T, BLOCK_T), triton.cdiv(D, block_d))](
        xs, dh, dh_mix, phi32, gamma_flat, coef, hp, dx, T, D,
        N=n, F=F, FP=max(16, triton.next_power_of_2(F)), BLOCK_T=BLOCK_T, BLOCK_D=block_d)

    p = dh_mix.t() @ xs.float()                    # [F, K], fp32
    dphi = p * gamma_flat
    dgamma = (phi32 * p).sum(0).reshape(n, D)
    return dx.reshape(B, S, n, D), dphi, dalpha, dbias, dgamma


class TritonExample:
    name = "triton_example"
    capabilities = Capabilities(
        devices=("cuda", "cpu") if INTERPRET else ("cuda",),
        x_dtypes=("bf16",),
        n_values=(4, 6, 8),
        d_multiple=16,
        deterministic=True,
        gemm_precision={"dx": "tf32", "default": "fp32"},
        notes="Triton: dh_pre row reduction and a fused dx kernel; torch: per-token math and dphi's GEMM"
              + ("; TRITON_INTERPRET=1" if INTERPRET else ""),
    )

    def unavailable_reason(self):
        if triton is None:
            return _IMPORT_ERROR
        if not INTERPRET and not torch.cuda.is_available():
            return "no CUDA device and TRITON_INTERPRET is not set"
        return None

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)       # refuses what is not declared
        return mhc_pre_backward_triton_example(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                                               dh_in, dh_post, dh_res, gamma)


backend = TritonExample()
