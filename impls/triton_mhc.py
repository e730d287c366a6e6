"""Triton backend of the mHC "pre" operator (docs/SPEC.md): forward and the four-kernel backward.

Liger-Kernel style: kernels, launchers and the autograd-free glue side by side.

Backward, four kernels (x = [T, n, D] with T = B*S tokens, K = n*D, F = n*n + 2n):
  (1) _bwd_token_kernel    reads x and dh_in once per token: dh_pre = sum_D dh_in*x, then the
                           small per-token math -> dh_mix [T, F], coef [T] (the dinv_rms term of dx)
                           and per-program partial sums of dalpha/dbias (fixed order).
  (2) _bwd_dx_kernel       dx = dh_mix @ (phi*gamma) + coef * x + h_pre * dh_in, one pass over
                           x, dh_in and dx (phi*gamma is formed once per call, an [F, K] buffer).
  (3) _bwd_dphi_kernel     split-token partials P_s = dh_mix[s]^T @ vecX[s] -> [NSPLIT, F, K] fp32.
  (4) _bwd_dgamma_kernel   fixed-order sum of the partials P = sum_s P_s, then
                           dphi = P * gamma and dgamma = sum_F phi * P
                           (= sum_tokens vecX * (dh_mix @ phi): the same sum, reordered), and, in
                           its first program, the fixed-order sum of kernel (1)'s dalpha/dbias partials.
No float atomics anywhere, no autotuner, and every reduction has a fixed order chosen from the
shape alone: dphi, dgamma, dalpha and dbias are bitwise reproducible run to run.
Extra memory: dh_mix/coef O(T*F), phi*gamma O(F*K), partials <= 64*F*K fp32.
Bytes: x is read 3 times (kernels 1-3), dh_in twice, dx written once: about 2x the backward's
memory roofline when each kernel runs at its own bandwidth bound.

Compiled variants (few, so that all of them are compiled before a fuzz run: warm_up()).
Sizes, strides and offsets are runtime values: T, S, D, K, the strides and the element offset
of x and dh_in (kernels get a 16-byte aligned pointer into the same storage, see
_aligned_base), with Triton's ==1 / %16 specialization of integers switched off (_kernel).
Compile-time: x's dtype; n where it fixes the live rows of phi and dh_mix (F = n*n + 2n: the
compiler drops the padded rows, so registers and occupancy stay as with every size fixed;
with F at run time kernel (2) needed 176 instead of 164 registers, 2 instead of 3 blocks per
SM, +23% time); kernel (3) and the h_in kernel take n at run time (FP = F padded to a power of
two >= 16); VEC, 16 bytes in elements when D, the strides and the offsets are all multiples of
it, else 1 (the kernels round those values down to VEC multiples, which tells the compiler that
rows are 16-byte aligned, so loads and stores vectorize); kernel (3)'s TVEC for fp32 x, 16 when
T, S and its split length are multiples of 16 (190 instead of 255 registers); kernel (4)'s column
block (from n*D) and whether n*D is a multiple of 4. Block sizes do not depend on T or D (small
shapes run masked tiles). reachable_variants() lists the ~220 variants the capabilities admit;
warm_up() compiles them in ~20 s on a 16-core host.
dh_mix and the forward's split-K partials have FP columns per row (aligned rows; dh_mix's
padding is zero, so kernel (3) loads whole rows).

Precision of the matrix products (DOT_PRECISION, env MHC_TRITON_DOT, read at import):
  * dphi with bf16 x: dh_mix is split exactly into three bf16 pieces (hi + mid + lo); with x
    exact in bf16 every product is exact and the sum runs in fp32, i.e. fp32 accuracy on
    bf16 tensor cores.
  * every fp32 x fp32 product (dx's dh_mix @ phi, dphi for fp16/fp32 x, the forward's mix):
    "tf32x3" (default: three TF32 products, operand error ~2^-21; declared as
    gemm_precision="tf32x3" and checked by fuzz/ against that), "ieee" (exact fp32 FMA,
    slower) or "tf32" (one TF32 product, declared as gemm_precision="tf32").
  * dx's dh_mix @ (phi*gamma) when x is bf16/fp16 (DX16_DOT_PRECISION, env MHC_TRITON_DX16_DOT):
    "tf32" by default, declared for dx:bf16 and dx:fp16 only. dx is stored in 16 bits, so
    TF32's 2^-11 operand rounding sits below its own output rounding (bf16: 2^-8), and the
    single product makes kernel (2) 2.09 -> 1.71 ms at T=32768, n=4, D=7168 on an H100.
    fp32 x keeps DOT_PRECISION for dx.
  Under TRITON_INTERPRET=1 every tl.dot runs on fp32 operands (bf16 tl.dot is wrong there).
"""
from __future__ import annotations

import inspect
import os
import time

import contextlib
import functools

import torch

from impls.golden import HC_EPS, NORM_EPS, mix_width
from impls.schema import SMALL_ARGS
from impls.registry import Capabilities, UnsupportedInputError, check_inputs

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DOT_PRECISION = os.environ.get("MHC_TRITON_DOT", "tf32x3")
if DOT_PRECISION not in ("tf32x3", "ieee", "tf32"):
    raise ValueError(f"MHC_TRITON_DOT must be tf32x3, ieee or tf32, got {DOT_PRECISION!r}")
DX16_DOT_PRECISION = os.environ.get("MHC_TRITON_DX16_DOT", "tf32")
if DX16_DOT_PRECISION not in ("tf32x3", "ieee", "tf32"):
    raise ValueError(f"MHC_TRITON_DX16_DOT must be tf32x3, ieee or tf32, got {DX16_DOT_PRECISION!r}")
N_MAX = 8  # n in 1..8: F <= 80 keeps the padded mix width (FP) at <= 128
D_MAX = 1 << 16
X_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# pointer arguments in x's dtype; every other pointer argument is fp32
X_POINTERS = ("x_ptr", "dhin_ptr", "dx_ptr", "hin_ptr")

try:
    import triton
    import triton.language as tl
    _IMPORT_ERROR = None
except Exception as exc:  # the module must import without triton; unavailable_reason says why
    triton = tl = None
    _IMPORT_ERROR = f"triton not installed ({type(exc).__name__}: {exc})"


def _p2(v: int, lo: int = 1) -> int:
    """Next power of two >= max(v, lo)."""
    v = max(int(v), lo)
    return 1 << (v - 1).bit_length()


def _kernel(fn):
    """triton.jit with every integer argument (any name not ending in _ptr that is not a
    tl.constexpr) a plain runtime value: no ==1 or %16 specialization, so sizes and strides
    create no compiled variants. Alignment is passed explicitly instead (VEC)."""
    ints = [name for name, p in inspect.signature(fn).parameters.items()
            if not name.endswith("_ptr") and "constexpr" not in str(p.annotation)]
    return triton.jit(fn, do_not_specialize=ints)


if triton is not None:

    @triton.jit
    def _mult(v, VEC: tl.constexpr):
        """v, a multiple of VEC (the launcher checked it), written so that the compiler knows."""
        if VEC > 1:
            v = v // VEC * VEC
        return v

    @triton.jit
    def _row_offset(t64, S, stride_b, stride_s, off, VEC: tl.constexpr):
        """Element offset of flat token t = b*S + s in a tensor with any batch/sequence strides,
        from its aligned base pointer (off: the tensor's own offset from that base). Adding off
        here, not to the pointer once per program, measured faster (fp32 kernel (1): 1.10 vs
        1.38 ms at T=32768, n=4, D=7168 on an H200)."""
        return (t64 // S) * _mult(stride_b, VEC) + (t64 % S) * _mult(stride_s, VEC) + _mult(off, VEC)

    # ------------------------------------------------------------------ backward (1)
    @_kernel
    def _bwd_token_kernel(x_ptr, dhin_ptr, hmix_ptr, hpre_ptr, hpost_ptr, dhpost_ptr, dhres_ptr,
                          inv_ptr, alpha_ptr, dmix_ptr, coef_ptr, part_ptr,
                          T, S, D, x_off, dh_off, sxb, sxs, sxn, sdb, sds,
                          N: tl.constexpr, NP: tl.constexpr, NNP: tl.constexpr, FP: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr,
                          HC_EPS: tl.constexpr):
        D = _mult(D, VEC)
        sxn = _mult(sxn, VEC)
        F = N * N + 2 * N
        W = F + 3
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        offs_t = tl.arange(0, BLOCK_T)
        offs_n = tl.arange(0, NP)
        offs_nn = tl.arange(0, NNP)
        offs_d = tl.arange(0, BLOCK_D)
        nmask = offs_n < N
        nnmask = offs_nn < N * N
        a0 = tl.load(alpha_ptr)
        a1 = tl.load(alpha_ptr + 1)
        a2 = tl.load(alpha_ptr + 2)
        # dalpha/dbias partial sums of this program, over its token blocks in a fixed order
        pa_pre = tl.zeros([NP], tl.float32)
        pa_post = tl.zeros([NP], tl.float32)
        pa_res = tl.zeros([NNP], tl.float32)
        pb_pre = tl.zeros([NP], tl.float32)
        pb_post = tl.zeros([NP], tl.float32)
        pb_res = tl.zeros([NNP], tl.float32)
        n_off = offs_n.to(tl.int64) * sxn
        num_tb = tl.cdiv(T, BLOCK_T)
        for tb in range(pid, num_tb, nprog):  # grid-stride: at most 1024 partial rows
            t = tb * BLOCK_T + offs_t
            tmask = t < T
            t64 = t.to(tl.int64)
            xrow = _row_offset(t64, S, sxb, sxs, x_off, VEC)    # any B/S strides; inner stride is 1
            drow = _row_offset(t64, S, sdb, sds, dh_off, VEC)
            # 1. dh_pre = sum_D dh_in * x, one read of x and dh_in, fp32 accumulation
            acc = tl.zeros([BLOCK_T, NP, BLOCK_D], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                dmask = d < D
                m2 = tmask[:, None] & dmask[None, :]
                dh = tl.load(dhin_ptr + drow[:, None] + d[None, :], mask=m2, other=0.0).to(tl.float32)
                m3 = m2[:, None, :] & nmask[None, :, None]
                xv = tl.load(x_ptr + xrow[:, None, None] + n_off[None, :, None] + d[None, None, :],
                             mask=m3, other=0.0).to(tl.float32)
                acc += xv * dh[:, None, :]
            dh_pre = tl.sum(acc, 2)                                          # [BT, NP]
            # 2-4. per-token small math (masked rows load zeros and contribute zeros)
            mn = tmask[:, None] & nmask[None, :]
            mnn = tmask[:, None] & nnmask[None, :]
            idx_n = t[:, None] * N + offs_n[None, :]
            idx_nn = t[:, None] * (N * N) + offs_nn[None, :]
            row_f = t[:, None] * F
            row_m = t[:, None] * FP
            inv = tl.load(inv_ptr + t, mask=tmask, other=0.0)
            s_pre = tl.load(hpre_ptr + idx_n, mask=mn, other=0.0) - HC_EPS
            dpre2 = dh_pre * s_pre * (1.0 - s_pre)
            s_post = tl.load(hpost_ptr + idx_n, mask=mn, other=0.0) * 0.5
            dpost2 = tl.load(dhpost_ptr + idx_n, mask=mn, other=0.0) * 2.0 * s_post * (1.0 - s_post)
            dres = tl.load(dhres_ptr + idx_nn, mask=mnn, other=0.0)
            g_pre = a0 * dpre2
            g_post = a1 * dpost2
            g_res = a2 * dres
            tl.store(dmix_ptr + row_m + offs_n[None, :], g_pre * inv[:, None], mask=mn)
            tl.store(dmix_ptr + row_m + N + offs_n[None, :], g_post * inv[:, None], mask=mn)
            tl.store(dmix_ptr + row_m + 2 * N + offs_nn[None, :], g_res * inv[:, None], mask=mnn)
            # zero padding of dh_mix's rows (F..FP): kernel (3) loads whole rows
            f_all = tl.arange(0, FP)
            tl.store(dmix_ptr + row_m + f_all[None, :], tl.zeros([BLOCK_T, FP], tl.float32),
                     mask=tmask[:, None] & (f_all >= F)[None, :])
            m_pre = tl.load(hmix_ptr + row_f + offs_n[None, :], mask=mn, other=0.0)
            m_post = tl.load(hmix_ptr + row_f + N + offs_n[None, :], mask=mn, other=0.0)
            m_res = tl.load(hmix_ptr + row_f + 2 * N + offs_nn[None, :], mask=mnn, other=0.0)
            # 8. dinv_rms = sum_F g * h_mix; dx's inv_rms term is coef * x
            dinv = tl.sum(g_pre * m_pre, 1) + tl.sum(g_post * m_post, 1) + tl.sum(g_res * m_res, 1)
            coef = -dinv * (inv * inv * inv) / (N * D)
            tl.store(coef_ptr + t, coef, mask=tmask)
            # 6-7. dalpha (with t = h_mix * inv_rms) and dbias partials
            pa_pre += tl.sum(dpre2 * (m_pre * inv[:, None]), 0)
            pa_post += tl.sum(dpost2 * (m_post * inv[:, None]), 0)
            pa_res += tl.sum(dres * (m_res * inv[:, None]), 0)
            pb_pre += tl.sum(dpre2, 0)
            pb_post += tl.sum(dpost2, 0)
            pb_res += tl.sum(dres, 0)
        row = part_ptr + pid * W
        tl.store(row, tl.sum(pa_pre, 0))
        tl.store(row + 1, tl.sum(pa_post, 0))
        tl.store(row + 2, tl.sum(pa_res, 0))
        tl.store(row + 3 + offs_n, pb_pre, mask=nmask)
        tl.store(row + 3 + N + offs_n, pb_post, mask=nmask)
        tl.store(row + 3 + 2 * N + offs_nn, pb_res, mask=nnmask)

    # ------------------------------------------------------------------ backward (2)
    @triton.jit
    def _tf32_round(a):
        """a rounded to TF32 (10 significand bits, to nearest, ties away from zero)."""
        return ((a.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)

    @_kernel
    def _bwd_dx_kernel(x_ptr, dhin_ptr, phig_ptr, dmix_ptr, coef_ptr, hpre_ptr, dx_ptr,
                       T, S, D, x_off, dh_off, sxb, sxs, sxn, sdb, sds,
                       N: tl.constexpr, FP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                       VEC: tl.constexpr,
                       DOT_PREC: tl.constexpr, PREFETCH: tl.constexpr,
                       XEV: tl.constexpr, PEV: tl.constexpr, SCM: tl.constexpr, SPLIT_ONCE: tl.constexpr):
        """dx = dh_mix @ (phi*gamma) + coef*x + h_pre*dh_in for all n streams of one tile.
        XEV/PEV/SCM: cache policies of the streamed tensors (x, dh_in), of the reused ones
        (phi*gamma, dh_mix) and of the dx stores; "" = default (see _bwd_config's stream2).
        SPLIT_ONCE (tf32x3 only): dh_mix is split into TF32 hi + lo once per program, not once
        per stream inside each tl.dot; the three TF32 products are the same as tf32x3's."""
        D = _mult(D, VEC)
        sxn = _mult(sxn, VEC)
        F = N * N + 2 * N
        pid_d = tl.program_id(0)
        pid_t = tl.program_id(1)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = t < T
        t64 = t.to(tl.int64)
        xrow = _row_offset(t64, S, sxb, sxs, x_off, VEC)
        drow = _row_offset(t64, S, sdb, sds, dh_off, VEC)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < D
        f = tl.arange(0, FP)
        fmask = f < F
        m2 = tmask[:, None] & dmask[None, :]
        # per-token data shared by the n streams: read once per program
        dmix = tl.load(dmix_ptr + t[:, None] * FP + f[None, :], mask=tmask[:, None] & fmask[None, :], other=0.0,
                       eviction_policy=PEV)
        coef = tl.load(coef_ptr + t, mask=tmask, other=0.0)
        dh = tl.load(dhin_ptr + drow[:, None] + d[None, :], mask=m2, other=0.0, eviction_policy=XEV).to(tl.float32)
        if SPLIT_ONCE:
            dm_hi = _tf32_round(dmix)
            dm_lo = _tf32_round(dmix - dm_hi)
        K = N * D
        xrow_i = xrow                       # int64 offset of stream i (loop vars may be python ints)
        xv = tl.load(x_ptr + xrow_i[:, None] + d[None, :], mask=m2, other=0.0, eviction_policy=XEV)
        for i in range(N):
            col = i * D + d
            xrow_i += sxn
            if PREFETCH:  # next stream's x in flight while this one is computed (latency hiding)
                x_next = tl.load(x_ptr + xrow_i[:, None] + d[None, :], mask=m2 & (i + 1 < N), other=0.0,
                                 eviction_policy=XEV)
            phig = tl.load(phig_ptr + f[:, None] * K + col[None, :], mask=fmask[:, None] & dmask[None, :], other=0.0,
                           eviction_policy=PEV)
            hp = tl.load(hpre_ptr + t * N + i, mask=tmask, other=0.0)
            base = coef[:, None] * xv.to(tl.float32) + hp[:, None] * dh          # 8-9. inv_rms and h_in terms
            if SPLIT_ONCE:                                                       # 5, 10. + dh_mix @ (phi*gamma)
                pg_hi = _tf32_round(phig)
                pg_lo = _tf32_round(phig - pg_hi)
                dxv = tl.dot(dm_lo, pg_hi, acc=base, input_precision="tf32")     # small terms first
                dxv = tl.dot(dm_hi, pg_lo, acc=dxv, input_precision="tf32")
                dxv = tl.dot(dm_hi, pg_hi, acc=dxv, input_precision="tf32")
            else:
                dxv = tl.dot(dmix, phig, acc=base, input_precision=DOT_PREC)
            tl.store(dx_ptr + t64[:, None] * K + col[None, :], dxv.to(dx_ptr.dtype.element_ty), mask=m2,
                     cache_modifier=SCM)
            if PREFETCH:
                xv = x_next
            else:
                xv = tl.load(x_ptr + xrow_i[:, None] + d[None, :], mask=m2 & (i + 1 < N), other=0.0,
                             eviction_policy=XEV)

    # ------------------------------------------------------------------ backward (3)
    @_kernel
    def _bwd_dphi_kernel(x_ptr, dmix_ptr, part_ptr, T, S, N, D, x_off, sxb, sxs, sxn, tokens_per_split,
                         FP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         VEC: tl.constexpr, TVEC: tl.constexpr,
                         SPLIT_BF16: tl.constexpr, INTERP: tl.constexpr, DOT_PREC: tl.constexpr):
        D = _mult(D, VEC)
        sxn = _mult(sxn, VEC)
        T = _mult(T, TVEC)            # T, S and the split length multiples of TVEC (see _bwd_metas)
        S = _mult(S, TVEC)
        tokens_per_split = _mult(tokens_per_split, TVEC)
        F = N * N + 2 * N
        pid_c = tl.program_id(0)      # (stream i, D block)
        split = tl.program_id(1)      # token range
        ndb = tl.cdiv(D, BLOCK_D)
        i = pid_c // ndb
        d = (pid_c % ndb) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < D
        f = tl.arange(0, FP)
        fmask = f < F
        offs_t = tl.arange(0, BLOCK_T)
        t_start = split * tokens_per_split
        t_end = tl.minimum(t_start + tokens_per_split, T)
        acc = tl.zeros([BLOCK_D, FP], tl.float32)                           # P^T for this block
        for t0 in range(t_start, t_end, BLOCK_T):
            t = t0 + offs_t
            tmask = t < t_end
            t64 = t.to(tl.int64)
            xrow = _row_offset(t64, S, sxb, sxs, x_off, VEC)
            xv = tl.load(x_ptr + xrow[:, None] + i.to(tl.int64) * sxn + d[None, :],
                         mask=tmask[:, None] & dmask[None, :], other=0.0)
            dm = tl.load(dmix_ptr + t[:, None] * FP + f[None, :], mask=tmask[:, None], other=0.0)  # zero padded
            xt = tl.trans(xv)                                                 # [BD, BT]
            if SPLIT_BF16:
                # dh_mix = hi + mid + lo exactly (8+8+8 significand bits); x is exact in bf16,
                # so each bf16 product is exact and only the fp32 sum rounds.
                hi = dm.to(tl.bfloat16)
                r = dm - hi.to(tl.float32)
                mid = r.to(tl.bfloat16)
                lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
                if INTERP:  # bf16 tl.dot is wrong in the interpreter: same pieces, fp32 dots
                    xt32 = xt.to(tl.float32)
                    acc = tl.dot(xt32, hi.to(tl.float32), acc)
                    acc = tl.dot(xt32, mid.to(tl.float32), acc)
                    acc = tl.dot(xt32, lo.to(tl.float32), acc)
                else:
                    acc = tl.dot(xt, hi, acc)
                    acc = tl.dot(xt, mid, acc)
                    acc = tl.dot(xt, lo, acc)
            else:
                acc = tl.dot(xt.to(tl.float32), dm, acc, input_precision=DOT_PREC)
        K = N * D
        ptr = part_ptr + split.to(tl.int64) * (F * K) + f[None, :] * K + (i * D + d)[:, None]
        tl.store(ptr, acc, mask=dmask[:, None] & fmask[None, :])

    # ------------------------------------------------------------------ backward (4)
    @_kernel
    def _bwd_dgamma_kernel(part_ptr, phi_ptr, gamma_ptr, dphi_ptr, dgamma_ptr,
                           part1_ptr, dalpha_ptr, dbias_ptr, K, NSPLIT, G1,
                           F: tl.constexpr, FP: tl.constexpr, WP: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
                           VEC: tl.constexpr):
        K = _mult(K, VEC)
        W = F + 3
        pid = tl.program_id(0)
        # program 0 sums kernel (1)'s partial rows (the longest serial loop): first, so that it
        # runs beside the column blocks instead of after them
        if pid > 0:
            k = (pid - 1) * BLOCK_K + tl.arange(0, BLOCK_K)
            kmask = k < K
            f = tl.arange(0, FP)
            m = (f < F)[:, None] & kmask[None, :]
            off = f[:, None] * K + k[None, :]
            # P = sum over token splits, BLOCK_S splits per load (more bytes in flight), then a
            # fixed tree over the BLOCK_S lanes: a fixed order, so bitwise reproducible
            sb = tl.arange(0, BLOCK_S)
            acc3 = tl.zeros([BLOCK_S, FP, BLOCK_K], tl.float32)
            for s0 in range(0, NSPLIT, BLOCK_S):
                s = s0 + sb
                ptr = part_ptr + (s.to(tl.int64) * F * K)[:, None, None] + off[None, :, :]
                acc3 += tl.load(ptr, mask=(s < NSPLIT)[:, None, None] & m[None, :, :], other=0.0)
            acc = tl.sum(acc3, 0)
            phi = tl.load(phi_ptr + off, mask=m, other=0.0)
            tl.store(dgamma_ptr + k, tl.sum(phi * acc, 0), mask=kmask)        # 11.
            acc = acc * tl.load(gamma_ptr + k, mask=kmask, other=0.0)[None, :]  # ones without gamma
            tl.store(dphi_ptr + off, acc, mask=m)                             # 5. dphi
        else:
            # program 0: dalpha [3] and dbias [F] from kernel (1)'s G1 partial rows
            r = tl.arange(0, BLOCK_R)
            w = tl.arange(0, WP)
            racc = tl.zeros([BLOCK_R, WP], tl.float32)
            for r0 in range(0, G1, BLOCK_R):
                rows = r0 + r
                racc += tl.load(part1_ptr + rows[:, None] * W + w[None, :],
                                mask=(rows < G1)[:, None] & (w < W)[None, :], other=0.0)
            tot = tl.sum(racc, 0)
            tl.store(dalpha_ptr + w, tot, mask=w < 3)
            tl.store(dbias_ptr + (w - 3), tot, mask=(w >= 3) & (w < W))

    # ------------------------------------------------------------------ forward
    @_kernel
    def _fwd_mix_kernel(x_ptr, phi_ptr, gamma_ptr, mixp_ptr, sqp_ptr, T, S, D, x_off, sxb, sxs, sxn,
                        d_per_split, N: tl.constexpr, FP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                        VEC: tl.constexpr, DOT_PREC: tl.constexpr):
        """Split-K partials of h_mix = (vecX*gamma) @ phi^T (rows of FP columns, zero padded)
        and of sum(vecX^2)."""
        D = _mult(D, VEC)
        sxn = _mult(sxn, VEC)
        d_per_split = _mult(d_per_split, BLOCK_D)
        F = N * N + 2 * N
        pid_t = tl.program_id(0)
        split = tl.program_id(1)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = t < T
        t64 = t.to(tl.int64)
        xrow = _row_offset(t64, S, sxb, sxs, x_off, VEC)
        f = tl.arange(0, FP)
        fmask = f < F
        offs_d = tl.arange(0, BLOCK_D)
        d_start = split * d_per_split
        d_end = tl.minimum(d_start + d_per_split, D)
        K = N * D
        acc = tl.zeros([BLOCK_T, FP], tl.float32)
        sq = tl.zeros([BLOCK_T], tl.float32)
        xrow_i = xrow
        for i in range(N):
            for d0 in range(d_start, d_end, BLOCK_D):
                d = d0 + offs_d
                dmask = d < d_end
                xv = tl.load(x_ptr + xrow_i[:, None] + d[None, :],
                             mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                sq += tl.sum(xv * xv, 1)
                xv = xv * tl.load(gamma_ptr + i * D + d, mask=dmask, other=0.0)[None, :]   # ones without gamma
                phit = tl.load(phi_ptr + f[None, :] * K + (i * D + d)[:, None],
                               mask=dmask[:, None] & fmask[None, :], other=0.0)
                acc = tl.dot(xv, phit, acc, input_precision=DOT_PREC)
            xrow_i += sxn
        base = split.to(tl.int64) * T
        tl.store(mixp_ptr + (base + t64)[:, None] * FP + f[None, :], acc, mask=tmask[:, None])
        tl.store(sqp_ptr + base + t64, sq, mask=tmask)

    @_kernel
    def _fwd_token_kernel(mixp_ptr, sqp_ptr, alpha_ptr, bias_ptr, hmix_ptr, inv_ptr, hpre_ptr, hpost_ptr,
                          hres_ptr, T, D, KSPLIT,
                          N: tl.constexpr, FP: tl.constexpr, BLOCK_T: tl.constexpr,
                          NORM_EPS: tl.constexpr, HC_EPS: tl.constexpr):
        """Fixed-order sum of the split-K partials, then inv_rms, h_pre, h_post, h_res."""
        F = N * N + 2 * N
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = t < T
        f = tl.arange(0, FP)
        fmask = f < F
        m = tmask[:, None] & fmask[None, :]
        mix = tl.zeros([BLOCK_T, FP], tl.float32)
        sq = tl.zeros([BLOCK_T], tl.float32)
        pm = mixp_ptr + t[:, None] * FP + f[None, :]
        ps = sqp_ptr + t
        for s in range(0, KSPLIT):      # fixed order over the K splits
            mix += tl.load(pm, mask=m, other=0.0)
            sq += tl.load(ps, mask=tmask, other=0.0)
            pm += T * FP
            ps += T
        inv = tl.rsqrt(sq / (N * D) + NORM_EPS)
        tl.store(hmix_ptr + t[:, None] * F + f[None, :], mix, mask=m)
        tl.store(inv_ptr + t, inv, mask=tmask)
        # column c of the mix: c < N pre, c < 2N post, else res (one select per segment)
        seg = tl.where(f < N, 0, tl.where(f < 2 * N, 1, 2))
        a = tl.load(alpha_ptr + seg)
        b = tl.load(bias_ptr + f, mask=fmask, other=0.0)
        z = a[None, :] * (mix * inv[:, None]) + b[None, :]
        pre = tl.sigmoid(z) + HC_EPS
        post = 2.0 * tl.sigmoid(z)
        is_pre = (f < N)[None, :]
        is_post = ((f >= N) & (f < 2 * N))[None, :]
        is_res = ((f >= 2 * N) & fmask)[None, :]
        tl.store(hpre_ptr + t[:, None] * N + f[None, :], pre, mask=tmask[:, None] & is_pre)
        tl.store(hpost_ptr + t[:, None] * N + (f[None, :] - N), post, mask=tmask[:, None] & is_post)
        tl.store(hres_ptr + t[:, None] * (N * N) + (f[None, :] - 2 * N), z, mask=tmask[:, None] & is_res)

    @_kernel
    def _fwd_hin_kernel(x_ptr, hpre_ptr, hin_ptr, T, S, N, D, x_off, sxb, sxs, sxn,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
        """h_in = sum_n h_pre * x in fp32, stored in x's dtype."""
        D = _mult(D, VEC)
        sxn = _mult(sxn, VEC)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = t < T
        t64 = t.to(tl.int64)
        xrow = _row_offset(t64, S, sxb, sxs, x_off, VEC)
        d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
        m2 = tmask[:, None] & (d < D)[None, :]
        acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        xrow_i = xrow
        for i in range(N):
            hp = tl.load(hpre_ptr + t * N + i, mask=tmask, other=0.0)
            xv = tl.load(x_ptr + xrow_i[:, None] + d[None, :], mask=m2, other=0.0)
            acc += hp[:, None] * xv.to(tl.float32)
            xrow_i += sxn
        tl.store(hin_ptr + t64[:, None] * D + d[None, :], acc.to(hin_ptr.dtype.element_ty), mask=m2)

# ---------------------------------------------------------------------- glue
def _require(x: torch.Tensor):
    if triton is None:
        raise RuntimeError(_IMPORT_ERROR)
    if x.dim() != 4:
        raise UnsupportedInputError(f"triton: x must be [B,S,n,D], got shape {tuple(x.shape)}")
    n = x.shape[2]
    if not 1 <= n <= N_MAX:
        raise UnsupportedInputError(f"triton: n={n} outside 1..{N_MAX}")


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    # Kernels take any batch/seq/stream strides (no copy of x or dh_in for slices or
    # permutations of those axes); only a non-unit stride along D is copied, since its loads
    # could not be coalesced anyway.
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _aligned_base(t: torch.Tensor):
    """(base, off, strides): base starts at a 16-byte aligned address of t's storage, off
    elements before t, so that every pointer a kernel gets is aligned (one compiled variant,
    whatever the storage offset; the kernels add off). A storage that starts misaligned itself
    is copied."""
    shift = t.data_ptr() % 16
    if shift == 0:
        return t, 0, t.stride()
    esize = t.element_size()
    if shift % esize == 0 and shift // esize <= t.storage_offset():
        off = shift // esize
        return t.as_strided((1,), (1,), t.storage_offset() - off), off, t.stride()
    c = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)
    return c, 0, c.stride()


def _small(t: torch.Tensor, *shape) -> torch.Tensor:
    # O(T*F) or O(F*K) tensors: a contiguous, 16-byte aligned fp32 copy is cheap.
    t = t.reshape(*shape).to(torch.float32).contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _vec(dtype: torch.dtype, *values: int) -> int:
    """Elements per 16 bytes of `dtype` when every value is a multiple of it, else 1."""
    v = 16 // torch.empty(0, dtype=dtype).element_size()
    return v if all(int(a) % v == 0 for a in values) else 1


@functools.lru_cache(maxsize=None)
def _n_class(n: int) -> dict:
    """Padded widths of n: FP, the mix width F padded to a power of two >= 16 (tl.dot; also
    the row stride of dh_mix and of the forward's partials), WP >= F + 3 (kernel (1)'s partial
    rows), NP >= n and NNP >= n*n (kernel (1))."""
    return dict(FP=_p2(mix_width(n), 16), WP=_p2(mix_width(n) + 3, 16), NP=_p2(n, 2), NNP=_p2(n * n, 2))


# Launch parameters of the backward. Chosen from n and x's dtype only (never from T, D, the
# device or an autotuner), so the reduction orders -- and the bits of dphi/dgamma/dalpha/dbias --
# are a function of the inputs alone, and few variants are compiled. BWD_OVERRIDES lets bench/
# try other values.
BWD_OVERRIDES: dict = {}


def _dx_dot_precision(x16: bool) -> str:
    """Precision of dx's dh_mix @ (phi*gamma) for 16-bit (x16) or fp32 x."""
    return DX16_DOT_PRECISION if x16 and DOT_PRECISION != "tf32" else DOT_PRECISION


def _bwd_config(n: int, dx_prec: str = "tf32x3", T: int = 0, D: int = 0) -> dict:
    # Defaults: the fastest of the variants timed by bench/bench_backward.py --tune on an H100
    # (T=32768, n=4, D=7168, bf16). Measured there:
    # dx 2.18 ms with streaming cache hints (stream2) vs 2.29 without, 2.10 when dh_mix is split
    # into TF32 hi + lo once per program (split2) rather than inside each stream's tl.dot;
    # 32x128 tiles 2.43, 64x32 2.46; all n streams in one [bt2, n*bd2] tile (one wide dot)
    # 3.1-6.1 ms, so not kept. dgamma (timed after a read-only L2 flush, bench_backward.flush_l2):
    # 32 columns x 4 splits per load, 2 warps, unpipelined: 24 us = 1.26x its bytes at D=7168
    # (phi loaded before the split loop 26, 64 columns 30, 8 splits per load 46-77); with fewer
    # than ~768 column blocks (D=2560, 4096) 16 columns keep enough loads in flight: 24-26 us
    # vs 26-32 us with 32 (_block_k).
    # dphi 0.69 ms with 32x256 tiles vs 0.75 with 32x128 (more splits: dgamma +10 us).
    # With one TF32 product (dx_prec "tf32") dx is no longer bound by the three dots' shared
    # memory traffic and prefers wide tiles without the streaming hints: 32x128 1.71 ms (1.75
    # with them), 64x64 1.80, 128x32 1.86-1.90, 32x256 2.49; at D=2560 32x128 0.62 vs 0.65-0.69.
    # Small T or D get the same tiles, masked: a few idle lanes, no extra variant.
    c = _n_class(n)
    one_dot = dx_prec == "tf32"
    cfg = dict(
        # (1) token kernel: <= 1024 programs (grid-stride), so kernel (4) sums <= 1024 rows
        bt1=16 if INTERPRET else 4, bd1=max(64, 1024 // c["NP"]), g1_max=4 if INTERPRET else 1024, warps1=4,
        # (2) dx: [bt2 tokens, bd2 hidden] tiles, all n streams per program, next x tile prefetched
        bt2=32 if one_dot else 128, bd2=128 if one_dot else 32, warps2=4 if one_dot else 8, stages2=1,
        prefetch2=True, stream2=not one_dot, split2=True,
        # (3) dphi partials: ~2048 programs, <= 64 token splits, >= 512 tokens per split
        bt3=32, bd3=256, warps3=8, stages3=3, programs3=2048, min_tokens3=512,
        # (4) finalize: column block (<= bk4, see _block_k), bs4 token splits per load
        bk4=max(16, 1024 // c["FP"]), bs4=4, warps4=2, stages4=1,
    )
    if INTERPRET and T and D:   # nothing is compiled there; tiles no larger than the shape interpret faster
        cfg.update(bd1=min(cfg["bd1"], _p2(D)), bt2=min(cfg["bt2"], _p2(T, 16)), bd2=min(cfg["bd2"], _p2(D, 16)),
                   bt3=min(cfg["bt3"], _p2(T, 16)), bd3=min(cfg["bd3"], _p2(D, 16)))
    cfg.update(BWD_OVERRIDES)
    return cfg


def _block_k(K: int, bk4: int) -> int:
    """Kernel (4)'s column block: bk4, halved (down to 16) while that leaves < 768 blocks."""
    while bk4 > 16 and -(-K // bk4) < 768:
        bk4 //= 2
    return bk4


def _bwd_metas(n: int, x_dtype: torch.dtype, vec: int, tvec: int, K: int, T: int = 0, D: int = 0) -> dict:
    """Compile-time arguments (constexprs, num_warps, num_stages) of the four backward kernels
    for n, x's dtype, the alignment class vec (_vec), the token alignment class tvec and K = n*D:
    everything that selects a compiled variant besides the pointer dtypes (x's for X_POINTERS,
    else fp32). tvec is 16 when x is fp32 and T, S and kernel (3)'s split length are multiples
    of 16, else 1. Measured on an H200 at T=32768, n=4, D=7168: kernel (3) fp32 5.84 -> 5.21 ms
    with it (255 -> 190 registers); bf16 0.70 -> 0.75 ms, so not used there."""
    c = _n_class(n)
    x16 = x_dtype in (torch.bfloat16, torch.float16)
    dx_prec = _dx_dot_precision(x16)
    cfg = _bwd_config(n, dx_prec, T, D)
    # x, dh_in and dx are touched once: evict-first / streaming keeps phi*gamma and dh_mix in L2
    hints = dict(XEV="evict_first", PEV="evict_last", SCM=".cs") if cfg["stream2"] else dict(XEV="", PEV="", SCM="")
    return {
        "token": dict(N=n, NP=c["NP"], NNP=c["NNP"], FP=c["FP"], BLOCK_T=cfg["bt1"], BLOCK_D=cfg["bd1"], VEC=vec,
                      HC_EPS=HC_EPS, num_warps=cfg["warps1"]),
        "dx": dict(N=n, FP=c["FP"], BLOCK_T=cfg["bt2"], BLOCK_D=cfg["bd2"], VEC=vec, DOT_PREC=dx_prec,
                   PREFETCH=cfg["prefetch2"], **hints, SPLIT_ONCE=cfg["split2"] and dx_prec == "tf32x3",
                   num_warps=cfg["warps2"], num_stages=cfg["stages2"]),
        "dphi": dict(FP=c["FP"], BLOCK_T=cfg["bt3"], BLOCK_D=cfg["bd3"], VEC=vec, TVEC=tvec,
                     SPLIT_BF16=x_dtype == torch.bfloat16, INTERP=INTERPRET, DOT_PREC=DOT_PRECISION,
                     num_warps=cfg["warps3"], num_stages=cfg["stages3"]),
        "dgamma": dict(F=mix_width(n), FP=c["FP"], WP=c["WP"], BLOCK_K=_block_k(K, cfg["bk4"]), BLOCK_S=cfg["bs4"],
                       BLOCK_R=max(1, 4096 // c["WP"]), VEC=4 if K % 4 == 0 else 1,
                       num_warps=cfg["warps4"], num_stages=cfg["stages4"]),
    }


@functools.lru_cache(maxsize=1024)
def _bwd_setup(n: int, x_dtype: torch.dtype, vec: int, tvec: int, K: int, T: int, D: int, overrides: tuple):
    """(_bwd_config, {kernel: (_bwd_metas' meta, its variant key)}) of a backward call, cached:
    at small T a call's host time, not its kernels, is what it takes (building these dicts
    per call made a bf16 backward at T=4096, D=2560 27% slower than before sizes became runtime
    values, with the same kernel times). T and D matter under the interpreter only (pass 0
    otherwise); `overrides` is BWD_OVERRIDES as a sorted tuple, read by _bwd_config."""
    cfg = _bwd_config(n, _dx_dot_precision(x_dtype in (torch.bfloat16, torch.float16)), T, D)
    kernels = dict(token=_bwd_token_kernel, dx=_bwd_dx_kernel, dphi=_bwd_dphi_kernel, dgamma=_bwd_dgamma_kernel)
    return cfg, {k: (m, _variant(kernels[k], x_dtype, m)) for k, m in _bwd_metas(n, x_dtype, vec, tvec, K, T, D).items()}


# ---------------------------------------------------------------------- launches
class _Launch:
    """One kernel launch: kernel[grid](*args, **meta)."""
    __slots__ = ("kernel", "grid", "args", "meta", "x_dtype", "key")

    def __init__(self, kernel, grid, args, meta, x_dtype, key=None):
        self.kernel, self.grid, self.args, self.meta, self.x_dtype = kernel, grid, args, meta, x_dtype
        self.key = key                     # variant(), when the caller has it already

    def variant(self) -> tuple:
        """What selects the compiled kernel (given that pointer arguments are aligned, x-like
        ones in x's dtype and the rest fp32, and integers are not specialized)."""
        return self.key or _variant(self.kernel, self.x_dtype, self.meta)

    def __call__(self):
        key = self.variant()
        if key in _FIRST_LAUNCH:
            self.kernel[self.grid](*self.args, **self.meta)
            return
        t0 = time.perf_counter()          # compiles or loads from Triton's disk cache
        self.kernel[self.grid](*self.args, **self.meta)
        _FIRST_LAUNCH[key] = time.perf_counter() - t0


def _variant(kernel, x_dtype: torch.dtype, meta: dict) -> tuple:
    name = kernel.fn.__name__
    takes_x = _TAKES_X.get(name)
    if takes_x is None:
        takes_x = _TAKES_X[name] = any(a in X_POINTERS for a in inspect.signature(kernel.fn).parameters)
    return (name, str(x_dtype).replace("torch.", "") if takes_x else "", tuple(sorted(meta.items())))


_TAKES_X: dict = {}                       # kernel name -> has a pointer argument in x's dtype


_FIRST_LAUNCH: dict = {}                  # variant -> seconds of its first launch in this process
_COMPILES = {"compiles": 0}               # Triton cache misses of this module's kernels (listener)


class _BackwardPlan:
    """Buffers and launches of one backward call; one method per kernel (the bench times them
    one by one), run() launches all four in order."""

    def __init__(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        _require(x)
        B, S, n, D = x.shape
        T, F, K = B * S, mix_width(n), n * D
        dev = x.device
        self.B, self.S, self.n, self.D, self.T, self.F, self.K = B, S, n, D, T, F, K
        self.x, x_off, sx = _aligned_base(_inner_contiguous(x))
        self.dh_in, dh_off, sd = _aligned_base(_inner_contiguous(dh_in.reshape(B, S, D)))
        sx, sd = sx[:3], sd[:2]
        self.phi = _small(phi, F, K)
        self.alpha = _small(alpha, 3)
        self.has_gamma = gamma is not None
        # without gamma: ones (exact products), so that the same kernels serve both cases
        self.gamma = _small(gamma, K) if self.has_gamma else torch.ones(K, dtype=torch.float32, device=dev)
        # gamma folded into phi once (an O(F*K) buffer): dx's product is dh_mix @ (phi*gamma)
        self.phig = self.phi * self.gamma.view(1, K) if self.has_gamma else self.phi
        self.inv, self.hmix = _small(inv_rms, T), _small(h_mix, T, F)
        self.hpre, self.hpost = _small(h_pre, T, n), _small(h_post, T, n)
        self.dhpost, self.dhres = _small(dh_post, T, n), _small(dh_res, T, n * n)
        self.FP = _n_class(n)["FP"]
        self.W = 3 + F
        self.dx_prec = _dx_dot_precision(x.dtype in (torch.bfloat16, torch.float16))
        interp = (T, D) if INTERPRET else (0, 0)        # the shape matters under the interpreter only
        overrides = tuple(sorted(BWD_OVERRIDES.items()))
        c = self.cfg = _bwd_setup(n, x.dtype, 1, 1, K, *interp, overrides)[0]
        self.g1 = max(1, min(triton.cdiv(T, c["bt1"]), c["g1_max"]))
        self.col_blocks = n * triton.cdiv(D, c["bd3"])
        nsplit = max(1, min(64, triton.cdiv(c["programs3"], self.col_blocks), triton.cdiv(T, c["min_tokens3"])))
        self.tps = triton.cdiv(triton.cdiv(T, nsplit), c["bt3"]) * c["bt3"]
        self.nsplit = max(1, triton.cdiv(T, self.tps))
        vec = _vec(x.dtype, D, x_off, dh_off, *sx, *sd)
        tvec = 16 if x.dtype == torch.float32 and T % 16 == 0 and S % 16 == 0 and self.tps % 16 == 0 else 1
        metas = _bwd_setup(n, x.dtype, vec, tvec, K, *interp, overrides)[1]
        self.meta = {k: m for k, (m, _) in metas.items()}
        f32 = dict(dtype=torch.float32, device=dev)
        # extra memory: O(T*FP) + O(nsplit*F*K) with nsplit <= 64
        self.dmix = torch.empty((T, self.FP), **f32)
        self.coef = torch.empty(T, **f32)
        self.part1 = torch.empty((self.g1, self.W), **f32)
        self.part3 = torch.empty((self.nsplit, F, K), **f32)
        self.dx = torch.empty((B, S, n, D), dtype=x.dtype, device=dev)
        self.dphi = torch.empty((F, K), **f32)
        self.dgamma = torch.empty((n, D), **f32)
        self.dalpha = torch.empty(3, **f32)
        self.dbias = torch.empty(F, **f32)
        bk = self.meta["dgamma"]["BLOCK_K"]

        def launch(name, kernel, grid, args):
            meta, key = metas[name]
            return _Launch(kernel, grid, args, meta, x.dtype, key)
        self.launches = {
            "token": launch("token", _bwd_token_kernel, (self.g1,), (
                self.x, self.dh_in, self.hmix, self.hpre, self.hpost, self.dhpost, self.dhres, self.inv, self.alpha,
                self.dmix, self.coef, self.part1, T, S, D, x_off, dh_off, *sx, *sd)),
            "dx": launch("dx", _bwd_dx_kernel, (triton.cdiv(D, c["bd2"]), triton.cdiv(T, c["bt2"])), (
                self.x, self.dh_in, self.phig, self.dmix, self.coef, self.hpre, self.dx,
                T, S, D, x_off, dh_off, *sx, *sd)),
            "dphi": launch("dphi", _bwd_dphi_kernel, (self.col_blocks, self.nsplit), (
                self.x, self.dmix, self.part3, T, S, n, D, x_off, *sx, self.tps)),
            "dgamma": launch("dgamma", _bwd_dgamma_kernel, (triton.cdiv(K, bk) + 1,), (
                self.part3, self.phi, self.gamma, self.dphi, self.dgamma, self.part1, self.dalpha, self.dbias,
                K, self.nsplit, self.g1)),
        }

    def token(self):
        self.launches["token"]()

    def dx_(self):
        self.launches["dx"]()

    def dphi_(self):
        self.launches["dphi"]()

    def dgamma_(self):
        self.launches["dgamma"]()

    def run(self):
        if self.T == 0:
            for t in (self.dphi, self.dgamma, self.dalpha, self.dbias):
                t.zero_()
        else:
            self.token()   # (1) dh_mix, coef, dalpha/dbias partials
            self.dx_()     # (2) dx
            self.dphi_()   # (3) dphi partials
            self.dgamma_()  # (4) dphi, dgamma, dalpha, dbias
        return self.dx, self.dphi, self.dalpha, self.dbias, self.dgamma


def _on_the_inputs_device(launcher):
    """Triton launches on the current CUDA device, not on its arguments' device: a call whose
    tensors live on cuda:1 while cuda:0 is current would launch on cuda:0 and fail ("pointer
    argument cannot be accessed"). Found by the fuzzer's placement=other cases on 2 GPUs."""
    @functools.wraps(launcher)
    def run(x, *args, **kwargs):
        guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
        with guard:
            return launcher(x, *args, **kwargs)
    return run


@_on_the_inputs_device
def mhc_backward_triton(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma=None):
    """Backward of docs/SPEC.md. Returns (dx, dphi, dalpha, dbias, dgamma); dx in x's dtype, the rest fp32."""
    return _BackwardPlan(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                         dh_in, dh_post, dh_res, gamma).run()


FWD_OVERRIDES: dict = {}


def _fwd_config(T: int = 0, D: int = 0) -> dict:
    cfg = dict(bt=128, bd=32, warps=4, stages=4, programs=264, btt=64, bth=16, bdh=256)
    if INTERPRET and T and D:   # as in _bwd_config
        cfg.update(bt=min(cfg["bt"], _p2(T, 16)), bd=min(cfg["bd"], _p2(D, 16)), btt=min(cfg["btt"], _p2(T, 16)),
                   bth=min(cfg["bth"], _p2(T)), bdh=min(cfg["bdh"], _p2(D)))
    cfg.update(FWD_OVERRIDES)
    return cfg


def _fwd_metas(n: int, x_dtype: torch.dtype, vec: int, T: int = 0, D: int = 0) -> dict:
    """Compile-time arguments of the three forward kernels (as _bwd_metas)."""
    FP, c = _n_class(n)["FP"], _fwd_config(T, D)
    return {
        "mix": dict(N=n, FP=FP, BLOCK_T=c["bt"], BLOCK_D=c["bd"], VEC=vec, DOT_PREC=DOT_PRECISION,
                    num_warps=c["warps"], num_stages=c["stages"]),
        "token": dict(N=n, FP=FP, BLOCK_T=c["btt"], NORM_EPS=NORM_EPS, HC_EPS=HC_EPS, num_warps=4),
        "hin": dict(BLOCK_T=c["bth"], BLOCK_D=c["bdh"], VEC=vec, num_warps=4),
    }


def _forward_launches(x, phi, alpha, bias, gamma):
    """(outputs, launches) of one forward call."""
    _require(x)
    B, S, n, D = x.shape
    T, F, K = B * S, mix_width(n), n * D
    dev = x.device
    xb, x_off, strides = _aligned_base(_inner_contiguous(x))
    sxb, sxs, sxn = strides[:3]
    phi_c, alpha_c, bias_c = _small(phi, F, K), _small(alpha, 3), _small(bias, F)
    gamma_c = _small(gamma, K) if gamma is not None else torch.ones(K, dtype=torch.float32, device=dev)
    h_in = torch.empty((B, S, D), dtype=x.dtype, device=dev)
    h_mix = torch.empty((B, S, F), dtype=torch.float32, device=dev)
    inv_rms = torch.empty((B, S), dtype=torch.float32, device=dev)
    h_pre = torch.empty((B, S, n), dtype=torch.float32, device=dev)
    h_post = torch.empty((B, S, n), dtype=torch.float32, device=dev)
    h_res = torch.empty((B, S, n, n), dtype=torch.float32, device=dev)
    outs = (h_in, h_post, h_res, inv_rms, h_mix, h_pre)
    if T == 0:
        return outs, []
    m = _fwd_metas(n, x.dtype, _vec(x.dtype, D, x_off, sxb, sxs, sxn), T, D)
    c = _fwd_config(T, D)
    FP, bt, bd = m["mix"]["FP"], c["bt"], c["bd"]
    # split-K over D when there are few token blocks, so small T still fills the GPU
    t_blocks = triton.cdiv(T, bt)
    ksplit = max(1, min(64, triton.cdiv(D, bd), triton.cdiv(c["programs"], t_blocks)))
    dps = triton.cdiv(triton.cdiv(D, ksplit), bd) * bd
    ksplit = triton.cdiv(D, dps)
    mixp = torch.empty((ksplit, T, FP), dtype=torch.float32, device=dev)
    sqp = torch.empty((ksplit, T), dtype=torch.float32, device=dev)
    launches = [
        _Launch(_fwd_mix_kernel, (t_blocks, ksplit), (
            xb, phi_c, gamma_c, mixp, sqp, T, S, D, x_off, sxb, sxs, sxn, dps), m["mix"], x.dtype),
        _Launch(_fwd_token_kernel, (triton.cdiv(T, c["btt"]),), (
            mixp, sqp, alpha_c, bias_c, h_mix, inv_rms, h_pre, h_post, h_res, T, D, ksplit), m["token"], x.dtype),
        _Launch(_fwd_hin_kernel, (triton.cdiv(D, c["bdh"]), triton.cdiv(T, c["bth"])), (
            xb, h_pre, h_in, T, S, n, D, x_off, sxb, sxs, sxn), m["hin"], x.dtype),
    ]
    return outs, launches


@_on_the_inputs_device
def mhc_forward_pre_triton_optimized(x, phi, alpha, bias, gamma=None, outflag=True):
    """Forward of docs/SPEC.md (norm_eps = hc_eps = 1e-6).

    Returns (h_in, h_post, h_res, inv_rms, h_mix, h_pre); with outflag=False only the
    operator's outputs (h_in, h_post, h_res), without the tensors saved for the backward."""
    outs, launches = _forward_launches(x, phi, alpha, bias, gamma)
    for launch in launches:
        launch()
    return outs if outflag else outs[:3]


# ---------------------------------------------------------------------- compiled variants
_KERNELS = {"token": "_bwd_token_kernel", "dx": "_bwd_dx_kernel", "dphi": "_bwd_dphi_kernel",
            "dgamma": "_bwd_dgamma_kernel", "mix": "_fwd_mix_kernel", "fwd_token": "_fwd_token_kernel",
            "hin": "_fwd_hin_kernel"}


def _k_classes(n: int) -> list:
    """One K = n*D per (column block, K % 4 == 0) class of kernel (4) that some D in 1..D_MAX
    reaches: the column block only grows with K, so D = ceil(768*b/n) starts block b's range,
    and four consecutive D cover every K % 4."""
    starts = [1] + [-(-768 * b // n) for b in (32, 64, 128, 256, 512)]
    return [n * (d + r) for d in starts for r in range(4) if d + r <= D_MAX]


def reachable_variants() -> list:
    """Every compiled variant that inputs inside the capabilities can reach, as
    (kernel name, x dtype name, meta) with meta the compile-time arguments: every n, x dtype,
    alignment class and kernel (4) column class, deduplicated (~110)."""
    out: dict = {}
    for n in range(1, N_MAX + 1):
        for dt in X_DTYPES.values():
            for vec in sorted({_vec(dt, 0), 1}):
                metas = [(k, m) for K in _k_classes(n) for tvec in ((16, 1) if dt == torch.float32 else (1,))
                         for k, m in _bwd_metas(n, dt, vec, tvec, K).items()]
                metas += [("fwd_token" if k == "token" else k, m) for k, m in _fwd_metas(n, dt, vec).items()]
                for k, m in metas:
                    kernel = globals()[_KERNELS[k]]
                    out.setdefault(_variant(kernel, dt, m), (_KERNELS[k], str(dt).replace("torch.", ""), m))
    return list(out.values())


def _compile_variant(job):
    """Worker of precompile: compile (or find in Triton's disk cache) one variant without
    launching it; (seconds, compiled: False on a disk-cache hit)."""
    name, dtype_name, meta = job
    kernel = globals()[name]
    dev = torch.device("cuda", torch.cuda.current_device())
    xdt = getattr(torch, dtype_name)
    args = []
    for arg, p in inspect.signature(kernel.fn).parameters.items():
        if "constexpr" in str(p.annotation):
            continue
        if arg.endswith("_ptr"):    # aligned, like every pointer the launches pass
            args.append(torch.empty(16, dtype=xdt if arg in X_POINTERS else torch.float32, device=dev))
        else:
            args.append(2)          # integers are not specialized: any i32 value
    before = _COMPILES["compiles"]
    t0 = time.perf_counter()
    kernel.warmup(*args, grid=(1,), **meta)
    return time.perf_counter() - t0, _COMPILES["compiles"] > before


def precompile(jobs=None, workers: int = 0) -> dict:
    """Compile every reachable variant (default) side by side in worker processes into
    Triton's disk cache (TRITON_CACHE_DIR, default ~/.triton/cache), where the case workers'
    first launches then find them. Statistics for the run summary."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    jobs = reachable_variants() if jobs is None else jobs
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    t0 = time.perf_counter()
    # spawned, not forked: the parent may hold a CUDA context
    with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn")) as pool:
        done = list(pool.map(_compile_variant, jobs))
    return {"kernels": len(done), "compiled": sum(c for _, c in done), "workers": workers,
            "compile_seconds": round(sum(s for s, _ in done), 1), "wall_seconds": round(time.perf_counter() - t0, 1)}


def _count_compiles(*, cache_hit=True, src=None, **_):
    fn = getattr(src, "fn", None)
    if not cache_hit and getattr(fn, "fn", fn).__name__ in _KERNELS.values():
        _COMPILES["compiles"] += 1


def _install_compile_listener():
    """Count Triton cache misses of this module's kernels (triton.knobs, Triton >= 3.4)."""
    comp = getattr(getattr(triton, "knobs", None), "compilation", None)
    if comp is None or not hasattr(comp, "listener"):
        return
    prev = comp.listener

    def listener(**kw):
        _count_compiles(**kw)
        if prev is not None:
            prev(**kw)
    comp.listener = listener


if triton is not None and not INTERPRET:
    _install_compile_listener()


def compile_stats() -> dict:
    """Kernel variants this process launched (each compiled or loaded from Triton's disk
    cache at its first launch), how many of them Triton compiled (a cache miss; needs
    triton.knobs), and the seconds their first launches took."""
    return {"kernels": len(_FIRST_LAUNCH), "compiles": _COMPILES["compiles"],
            "first_launch_seconds": round(sum(_FIRST_LAUNCH.values()), 2)}


# ---------------------------------------------------------------------- registry
def _declared_precision():
    """GEMM operand precision per output, as the fuzzer must judge it: ieee is fp32, tf32x3
    is its own (fuzz/precision.py: 2^-21 per operand, not fp32's 2^-24)."""
    base = {"tf32": "tf32", "tf32x3": "tf32x3"}.get(DOT_PRECISION, "fp32")
    if base != "tf32" and _dx_dot_precision(True) == "tf32":
        return {"dx:bf16": "tf32", "dx:fp16": "tf32", "default": base}
    return base


class TritonBackend:
    name = "triton"
    capabilities = Capabilities(
        devices=("cuda", "cpu") if INTERPRET else ("cuda",),
        x_dtypes=tuple(X_DTYPES),
        n_values=tuple(range(1, N_MAX + 1)),
        d_multiple=1,
        d_max=D_MAX,             # keeps F*n*D and the partial offsets well inside int32/int64 math
        max_tokens=1 << 20,
        deterministic=True,      # fixed-order two-stage reductions, no atomics
        gemm_precision=_declared_precision(),
        has_forward=True,
        # the small inputs are copied to contiguous fp32 (_small), x and dh_in keep any layout
        input_dtypes={name: ("fp32", "bf16", "fp16") for name in SMALL_ARGS},
        notes=f"fp32 x fp32 products: {DOT_PRECISION}; dx for 16-bit x: {DX16_DOT_PRECISION}; "
              "dphi for bf16 x: exact 3-piece bf16 split"
              + ("; TRITON_INTERPRET=1" if INTERPRET else ""),
    )

    def unavailable_reason(self):
        if triton is None:
            return _IMPORT_ERROR
        if INTERPRET:
            return None
        if not torch.cuda.is_available():
            return "no CUDA device and TRITON_INTERPRET is not set"
        return None

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                     dh_in, dh_post, dh_res, gamma)
        return mhc_backward_triton(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                                   dh_in, dh_post, dh_res, gamma)

    def forward(self, x, phi, alpha, bias, gamma=None):
        check_inputs(self.capabilities, self.name, x, phi, alpha, bias, gamma)
        return mhc_forward_pre_triton_optimized(x, phi, alpha, bias, gamma)

    def stats(self) -> dict:
        """Kernel variants of this process (read by fuzz.check.run_case into its reports)."""
        return compile_stats()

    def warm_up(self) -> dict:
        """Compile every reachable kernel variant (reachable_variants) side by side in worker
        processes into Triton's disk cache before a run's budget starts; the case workers then
        load each in milliseconds. Under TRITON_INTERPRET=1 nothing is compiled."""
        if INTERPRET:
            return {"kernels": len(reachable_variants()), "compiled": 0, "interpreted": True}
        return precompile()


backend = TritonBackend()
