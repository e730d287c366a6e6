"""TileLang backend of the mHC "pre" backward (docs/SPEC.md), for NVIDIA sm_90 (H100).

Three kernels per call. The token count T = B*S and the hidden size D are dynamic
(`T.dynamic`): K1 is compiled once per (n, x dtype), K2 once per (n, D-class, x dtype) (the
class fixes its column tile, see d_class), K3 once per n, and each serves every T and D.

  K1 `_tok_kernel`    one CTA per token: reads the token's row of x and dh_in once and
                      computes the per-token scalars: dh_pre (the only reduction over D),
                      dh_mix (fp32, and as bf16 hi + lo), the dvecX_inv coefficient
                      -dinv_rms*inv_rms^3/(n*D), and the per-token terms of dbias and dalpha.
  K2 `_col_kernel`    grid (n*D/NC column blocks) x (S token splits); a CTA owns NC columns of
                      one stream (their phi columns stay in shared memory) and walks its
                      split's token blocks (TMA loads/stores, warp-specialized pipeline):
                        dx  = (dh_mix @ phi_cols) * gamma + coef * x + h_pre * dh_in   (TF32 MMA)
                        P  += dh_mix^T @ x   (registers; the split's partial is written once)
                      P is two exact-product bf16 MMAs on dh_mix = hi + lo when x is bf16
                      (error ~2^-16, no transposed copy of x), a TF32 MMA otherwise.
  K3 `_reduce_kernel` sums the S partials in fixed order:
                        dphi[f,k]  = gamma[k] * P[f,k]
                        dgamma[k]  = sum_f phi[f,k] * P[f,k]   (= sum_t x * (dh_mix @ phi), reassociated)
                      and the split sums of the dbias / dalpha token terms.

No float atomics anywhere: results are bitwise reproducible for a given (shape, device).
No [T, n*D] fp32 intermediate: beyond the outputs, O(T*F) per-token values and S x [F, n*D].
x and dh_in are read twice from memory (K1 and K2): dh_pre needs a token's whole row before
any of its dx can be written, while dphi needs column ownership to keep its accumulators on
chip; one pass would need grid-wide synchronisation between the two. That second read puts
this design's floor at 1.56x the backward's memory roofline (6.58 GB moved instead of 4.23 at
T=32768, n=4, D=7168, bf16). Measured on an H100 there: 2.52 ms = 1.80x the roofline, K1 1.10x
and K2 1.16x their own bytes; K2 is bound mostly on the SM side (shared-memory traffic). What
was measured, tried and not kept (K2 variants, token chunks that stay in L2, a one-pass
kernel): docs/TILELANG-PERFORMANCE.md.

tilelang is imported lazily: this module imports without tilelang and without CUDA.
"""
# no `from __future__ import annotations`: TileLang evaluates the kernels' annotations
# against their closures (n, D, dtype).
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from impls.registry import Capabilities, UnsupportedInputError, check_inputs
from impls.schema import DTYPE_NAMES, HC_EPS, SMALL_ARGS, X_DTYPES, mix_width

N_VALUES = (2, 4, 6, 8)          # validated on the H100 (tests/test_tilelang_backend.py); others refused
D_MULTIPLE = 16                  # TMA needs 16-byte row strides: D*2 bytes for 16-bit x (8 would do)
D_MAX = 16384
_TL_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
F32 = "float32"

K1_THREADS = 128
K3_THREADS = 128
_NC_BASE = {2: 256, 4: 256, 6: 128, 8: 64}   # K2 column tile (one stream); P = FP x NC: 32 regs/thread


def d_class(n: int, D: int, dtype: str, nc: int | None = None) -> int:
    """The D-class of a hidden size: K2's column tile NC, the one compile-time property of D.

    Everything else about D is a runtime value (loop bounds, the rms normaliser, tail masks,
    TMA descriptors), so one compiled set serves every D of a class: NC = the power of two
    >= D, clamped to [64, the base tile of n] (fp32 tiles are halved: shared memory).
    For n=4 bf16 the classes are D <= 64, 65..128 and 129..16384."""
    base = nc or (min(_NC_BASE[n], 128) if dtype in ("fp32", "float32") else _NC_BASE[n])
    return max(64, min(base, 1 << (D - 1).bit_length()))


def _geometry(n: int, nc: int = 64) -> dict:
    """Static tiling of one (n, D-class) variant. FP: dh_mix columns padded for the MMAs and
    FR: the F+3 token terms of dbias/dalpha, both powers of two (TileLang finds no layout /
    warp partition for [32, 96] fragments or an M=96 MMA). NC: K2's column tile (a partial
    last tile per stream, D % NC != 0, is zero-filled on load and clipped on store by TMA)."""
    F = mix_width(n)
    return dict(F=F, FP=max(32, 1 << (F - 1).bit_length()), FR=max(32, 1 << (F + 2).bit_length()),
                NC=nc, BD=1024 if n <= 4 else 512)


# ----------------------------------------------------------------------------- kernels

def _tok_kernel(n: int, dtype: str):
    """K1: per-token scalars. One CTA per token (T CTAs); T and D are runtime values."""
    import tilelang.language as T
    g = _geometry(n)
    F, FP, FR, BD = g["F"], g["FP"], g["FR"], g["BD"]
    Tn = T.dynamic("num_tokens")
    # D = 8 * D8: x and dh_in come as [.., D/8, 8] views, so that the loads vectorize
    # (16 bytes for 16-bit x) although D is a runtime value
    D8 = T.dynamic("hidden8")
    V = 8
    BV = BD // V
    BF16 = "bfloat16"

    @T.prim_func
    def tok_kernel(x: T.Tensor((Tn, n, D8, V), dtype), dh_in: T.Tensor((Tn, D8, V), dtype),
                   inv_rms: T.Tensor((Tn,), F32), h_mix: T.Tensor((Tn, F), F32),
                   h_pre: T.Tensor((Tn, n), F32), h_post: T.Tensor((Tn, n), F32),
                   dh_post: T.Tensor((Tn, n), F32), dh_res: T.Tensor((Tn, n * n), F32),
                   alpha: T.Tensor((3,), F32),
                   dmix: T.Tensor((Tn, FP), F32), dmix_hi: T.Tensor((Tn, FP), BF16),
                   dmix_lo: T.Tensor((Tn, FP), BF16), coef: T.Tensor((Tn,), F32),
                   tokred: T.Tensor((Tn, FR), F32)):
        with T.Kernel(Tn, threads=K1_THREADS) as t:
            # step 1: dh_pre[i] = sum_d dh_in[d] * x[i, d]  (fp32, per-thread partials + tree)
            acc = T.alloc_fragment((n, BV, V), F32)
            T.clear(acc)
            for k in T.serial(T.ceildiv(D8, BV)):
                for i, j, v in T.Parallel(n, BV, V):
                    acc[i, j, v] += T.if_then_else(
                        k * BV + j < D8,
                        T.cast(x[t, i, k * BV + j, v], F32) * T.cast(dh_in[t, k * BV + j, v], F32), 0.0)
            acc2 = T.alloc_fragment((n, BV), F32)
            T.reduce_sum(acc, acc2, dim=2)
            dhp = T.alloc_fragment((n,), F32)
            T.reduce_sum(acc2, dhp, dim=1)
            dhp_s = T.alloc_shared((n,), F32)
            dm_s = T.alloc_shared((FP,), F32)
            tr_s = T.alloc_shared((FR,), F32)
            for i in T.Parallel(n):
                dhp_s[i] = dhp[i]
            for f in T.Parallel(FP):
                dm_s[f] = 0.0
            for f in T.Parallel(FR):
                tr_s[f] = 0.0
            T.sync_threads()
            # steps 2-4, 6-8 for one token: F scalars, one thread (tiny next to the row)
            if T.get_thread_binding() == 0:
                inv = inv_rms[t]
                dinv = T.alloc_var(F32, init=0.0)
                gr = T.alloc_var(F32)      # dh_pre2 / dh_post2 / dh_res entry (dbias term)
                gs = T.alloc_var(F32)      # the same times alpha (g of SPEC step 3)
                for f in T.serial(F):
                    if f < n:
                        s = h_pre[t, f] - HC_EPS
                        gr = dhp_s[f] * s * (1.0 - s)
                        tr_s[F] += gr * (h_mix[t, f] * inv)
                        gs = gr * alpha[0]
                    elif f < 2 * n:
                        s = h_post[t, f - n] * 0.5
                        gr = dh_post[t, f - n] * 2.0 * s * (1.0 - s)
                        tr_s[F + 1] += gr * (h_mix[t, f] * inv)
                        gs = gr * alpha[1]
                    else:
                        gr = dh_res[t, f - 2 * n]
                        tr_s[F + 2] += gr * (h_mix[t, f] * inv)
                        gs = gr * alpha[2]
                    dinv += gs * h_mix[t, f]
                    dm_s[f] = gs * inv
                    tr_s[f] = gr
                coef[t] = -dinv * inv * inv * inv / T.cast(n * V * D8, F32)
            T.sync_threads()
            # rows out (zero padded: K2's MMAs read FP columns); dh_mix also as bf16 hi + lo
            for f in T.Parallel(FP):
                dmix[t, f] = dm_s[f]
                dmix_hi[t, f] = T.cast(dm_s[f], BF16)
                dmix_lo[t, f] = T.cast(dm_s[f] - T.cast(T.cast(dm_s[f], BF16), F32), BF16)
            for f in T.Parallel(FR):
                tokred[t, f] = tr_s[f]

    return tok_kernel


def _col_kernel(n: int, nc: int, dtype: str, stages: int = 2, threads: int = 256,
                bt: int = 32, dx_direct: bool = False, hilo_in: bool = False, min_blocks: int = 1):
    """K2: dx and the split partials of P = dh_mix^T @ x. Grid (n*D/NC column blocks, S splits).

    A CTA owns NC consecutive columns of one stream i (flat columns i*D + d0 ..); the n CTAs
    of the same d0 are adjacent in the grid, so dh_in[:, d0:d0+NC], which all of them read,
    comes from DRAM once and from L2 the other n-1 times. Tuning: bt tokens per block;
    dx_direct: dx stored from registers (else staged in shared memory for a TMA store);
    hilo_in: the bf16 hi/lo halves of dh_mix come from K1 (else split here); min_blocks > 1
    asks for that many CTAs per SM.

    The block loop is bound by shared-memory traffic, so what does not change from block to
    block stays in registers: phi's columns, with gamma folded in (dvecX_mm * gamma =
    dh_mix @ (phi * gamma)), are the dx MMA's B operand, and the per-token coef and h_pre are
    read once per block, not once per element. The TMA producer warpgroups hand their
    registers to the consumers (setmaxnreg), which hold them. K2 1.83 -> 1.64 ms at T=32768,
    n=4, D=7168 (docs/TILELANG-PERFORMANCE.md)."""
    import tilelang.language as T
    from tilelang.layout import make_swizzled_layout
    g = _geometry(n, nc)
    F, FP, FR, NC = g["F"], g["FP"], g["FR"], g["NC"]
    BT_ = bt
    BF16 = "bfloat16"
    split_bf16 = dtype == BF16
    Tn = T.dynamic("num_tokens")
    S = T.dynamic("num_splits")
    D = T.dynamic("hidden")

    @T.prim_func
    def col_kernel(x: T.Tensor((Tn, n, D), dtype), dh_in: T.Tensor((Tn, D), dtype),
                   dmix: T.Tensor((Tn, FP), F32), dmix_hi: T.Tensor((Tn, FP), BF16),
                   dmix_lo: T.Tensor((Tn, FP), BF16), coef: T.Tensor((Tn,), F32),
                   h_pre: T.Tensor((Tn, n), F32), tokred: T.Tensor((Tn, FR), F32),
                   phi: T.Tensor((F, n, D), F32), gamma: T.Tensor((n, D), F32),
                   dx: T.Tensor((Tn, n, D), dtype), part: T.Tensor((S, F, n, D), F32),
                   tpart: T.Tensor((S, FR), F32)):
        with T.Kernel(n * T.ceildiv(D, NC), S, threads=threads) as (bj, bs):
            if min_blocks > 1:
                T.annotate_min_blocks_per_sm(min_blocks)
            T.annotate_producer_reg_dealloc(24)
            T.annotate_consumer_reg_alloc(((65536 // min_blocks - 24 * threads) // threads) // 8 * 8)
            i = bj % n                       # stream
            d0 = (bj // n) * NC              # columns d0 .. d0+NC of stream i (flat i*D + d)
            phiT_s = T.alloc_shared((NC, FP), F32)      # phi * gamma columns, K-major (TF32 MMA)
            phi_r = T.alloc_fragment((NC, FP), F32)     # the same, as the dx MMA's B operand
            xs = T.alloc_shared((BT_, NC), dtype)
            dhs = T.alloc_shared((BT_, NC), dtype)
            dms = T.alloc_shared((BT_, FP), F32)
            cf_s = T.alloc_shared((BT_,), F32)
            hp_s = T.alloc_shared((BT_,), F32)
            # the epilogue reads dh_in in the MMA accumulator's pattern (8 rows x 4 words per
            # warp): row-major [BT, NC] puts those 8 rows in the same banks (8-way conflicts),
            # the swizzle that xs has for the MMAs spreads them (K2 2.13 -> 1.82 ms)
            T.annotate_layout({dhs: make_swizzled_layout(dhs)})
            mm = T.alloc_fragment((BT_, NC), F32)       # dvecX_mm * gamma of the block
            cf_r = T.alloc_fragment((BT_,), F32)        # coef and h_pre of the block's tokens
            hp_r = T.alloc_fragment((BT_,), F32)
            P = T.alloc_fragment((FP, NC), F32)         # dh_mix^T @ x over the split
            tacc = T.alloc_fragment((BT_, FR), F32)     # dbias/dalpha token terms (bj == 0 only)
            if not dx_direct:
                dxs = T.alloc_shared((BT_, NC), dtype)
            if split_bf16:
                # dh_mix = hi + lo in bf16 (relative error 2^-16): two exact-product bf16 MMAs
                # read x where it lies, no transposed copy (TF32 MMAs need K-major operands)
                dm_hi = T.alloc_shared((BT_, FP), BF16)
                dm_lo = T.alloc_shared((BT_, FP), BF16)
            else:
                xT = T.alloc_shared((NC, BT_), F32)
                dmT = T.alloc_shared((FP, BT_), F32)

            for c, f in T.Parallel(NC, FP):
                phiT_s[c, f] = T.if_then_else(f < F and d0 + c < D,
                                              phi[T.min(f, F - 1), i, T.min(d0 + c, D - 1)], 0.0)
                # a second statement: written as one product under the condition, the same
                # kernel took 1.73 ms instead of 1.64 (its block loop compiled identically)
                phiT_s[c, f] = phiT_s[c, f] * gamma[i, T.min(d0 + c, D - 1)]
            T.copy(phiT_s, phi_r)
            T.clear(P)
            T.clear(tacc)
            nb = T.ceildiv(Tn, BT_)
            # token blocks bs, bs+S, bs+2S, ...; TMA zero-fills rows past Tn and clips stores
            for it in T.Pipelined(T.ceildiv(nb - bs, S), num_stages=stages):
                tb = (bs + it * S) * BT_
                T.copy(x[tb:tb + BT_, i, d0:d0 + NC], xs)
                T.copy(dh_in[tb:tb + BT_, d0:d0 + NC], dhs)
                T.copy(dmix[tb:tb + BT_, :], dms)
                if split_bf16 and hilo_in:
                    T.copy(dmix_hi[tb:tb + BT_, :], dm_hi)
                    T.copy(dmix_lo[tb:tb + BT_, :], dm_lo)
                T.copy(coef[tb:tb + BT_], cf_s)
                for t in T.Parallel(BT_):
                    hp_s[t] = T.if_then_else(tb + t < Tn, h_pre[tb + t, i], 0.0)
                if bj == 0:
                    for t, f in T.Parallel(BT_, FR):
                        tacc[t, f] += T.if_then_else(tb + t < Tn, tokred[tb + t, f], 0.0)
                T.gemm(dms, phi_r, mm, transpose_B=True, clear_accum=True)
                for t in T.Parallel(BT_):
                    cf_r[t] = cf_s[t]
                    hp_r[t] = hp_s[t]
                if dx_direct:
                    for t, c in T.Parallel(BT_, NC):
                        if tb + t < Tn and d0 + c < D:
                            dx[tb + t, i, d0 + c] = T.cast(
                                mm[t, c] + cf_r[t] * T.cast(xs[t, c], F32)
                                + hp_r[t] * T.cast(dhs[t, c], F32), dtype)
                else:
                    for t, c in T.Parallel(BT_, NC):
                        dxs[t, c] = T.cast(mm[t, c] + cf_r[t] * T.cast(xs[t, c], F32)
                                           + hp_r[t] * T.cast(dhs[t, c], F32), dtype)
                    T.copy(dxs, dx[tb:tb + BT_, i, d0:d0 + NC])
                if split_bf16:
                    if not hilo_in:
                        for t, f in T.Parallel(BT_, FP):
                            dm_hi[t, f] = T.cast(dms[t, f], BF16)
                            dm_lo[t, f] = T.cast(dms[t, f] - T.cast(T.cast(dms[t, f], BF16), F32), BF16)
                    T.gemm(dm_hi, xs, P, transpose_A=True)
                    T.gemm(dm_lo, xs, P, transpose_A=True)
                else:
                    for c, t in T.Parallel(NC, BT_):
                        xT[c, t] = T.cast(xs[t, c], F32)
                    for f, t in T.Parallel(FP, BT_):
                        dmT[f, t] = dms[t, f]
                    T.gemm(dmT, xT, P, transpose_B=True)
            for f, c in T.Parallel(FP, NC):
                if f < F and d0 + c < D:
                    part[bs, f, i, d0 + c] = P[f, c]
            if bj == 0:
                tsum = T.alloc_fragment((FR,), F32)
                T.reduce_sum(tacc, tsum, dim=0)
                for f in T.Parallel(FR):
                    tpart[bs, f] = tsum[f]

    return col_kernel


def _reduce_kernel(n: int):
    """K3: fixed-order sums over the S splits; one thread per column (grid: column blocks x
    streams), and one extra CTA for dbias / dalpha."""
    import tilelang.language as T
    g = _geometry(n)
    F, FR = g["F"], g["FR"]
    S = T.dynamic("num_splits")
    D = T.dynamic("hidden")

    @T.prim_func
    def reduce_kernel(part: T.Tensor((S, F, n, D), F32), tpart: T.Tensor((S, FR), F32),
                      phi: T.Tensor((F, n, D), F32), gamma: T.Tensor((n, D), F32),
                      dphi: T.Tensor((F, n, D), F32), dgamma: T.Tensor((n, D), F32),
                      dalpha: T.Tensor((3,), F32), dbias: T.Tensor((F,), F32)):
        nblk = T.ceildiv(D, K3_THREADS)
        with T.Kernel(nblk + 1, n, threads=K3_THREADS) as (bx, i):
            tx = T.get_thread_binding()
            if bx < nblk:
                d = bx * K3_THREADS + tx
                if d < D:
                    p = T.alloc_local((F,), F32)
                    for f in T.unroll(F):
                        p[f] = 0.0
                    for s in T.serial(S):
                        for f in T.unroll(F):
                            p[f] += part[s, f, i, d]
                    dg = T.alloc_var(F32, init=0.0)
                    for f in T.unroll(F):
                        dphi[f, i, d] = p[f] * gamma[i, d]
                        dg += phi[f, i, d] * p[f]
                    dgamma[i, d] = dg
            elif i == 0:
                if tx < F + 3:
                    acc = T.alloc_var(F32, init=0.0)
                    for s in T.serial(S):
                        acc += tpart[s, tx]
                    if tx < F:
                        dbias[tx] = acc
                    else:
                        dalpha[tx - F] = acc

    return reduce_kernel


# ----------------------------------------------------------------------------- compile cache

# A compiled kernel is keyed by what specializes its code; T and D are runtime values:
#   ("tok", n, dtype)            K1
#   ("col", n, NC, dtype, k2)    K2, NC = d_class(n, D, dtype), k2 = its tuning
#   ("reduce", n)                K3
_KERNELS: dict = {}                 # (arch, key) -> compiled kernel
_STATS = {"compiles": 0, "compile_seconds": 0.0}
_LOCK = threading.Lock()


def compile_stats() -> dict:
    """Kernels compiled by this process (tilelang.compile calls; a TileLang disk-cache hit
    still counts, but costs ~0.1 s instead of seconds) and the wall seconds spent. A process
    compiles K1 once per (n, dtype), K2 once per (n, D-class, dtype), K3 once per n."""
    return dict(_STATS)


def _device_arch(device=None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}" + ("a" if major == 9 else "")   # wgmma/TMA need the 'a' target


def _target(arch: str) -> dict:
    return {"kind": "cuda", "arch": arch}


# K2 tuning: (pipeline stages, column tile NC or None for _NC_BASE[n], threads, tokens per
# block, dx_direct, hilo_in, min CTAs per SM) -- see _col_kernel. TileLang warp-specializes
# the pipeline (a TMA producer warpgroup + mbarriers). The variants measured against this
# setting (bench/bench_tilelang.py --variants) are in docs/TILELANG-PERFORMANCE.md.
K2_TUNING = (3, None, 256, 32, False, True, 1)


def kernel_keys(n: int, D: int, dtype: str, k2=None) -> tuple:
    """Cache keys of the three kernels that serve (n, D, x dtype)."""
    k2 = tuple(k2 or K2_TUNING)
    return (("tok", n, dtype), ("col", n, d_class(n, D, dtype, k2[1]), dtype, k2), ("reduce", n))


def _build(key):
    """The PrimFunc of one cache key."""
    kind = key[0]
    if kind == "tok":
        return _tok_kernel(key[1], _TL_DTYPE[key[2]])
    if kind == "col":
        _, n, nc, dt, k2 = key
        stages, _nc, threads, bt, dx_direct, hilo_in, min_blocks = k2
        return _col_kernel(n, nc, _TL_DTYPE[dt], stages, threads, bt, dx_direct, hilo_in, min_blocks)
    return _reduce_kernel(key[1])


def get_kernels(n: int, D: int, dtype: str, arch: str, k2=None):
    """(K1, K2, K3) serving (n, D, x dtype) on arch. Each kernel is compiled once per process
    (loaded from TileLang's disk cache, TILELANG_CACHE_DIR, when compiled before) and shared
    by every T and every D of its class."""
    keys = kernel_keys(n, D, dtype, k2)
    with _LOCK:
        missing = [k for k in keys if (arch, k) not in _KERNELS]
        if missing:
            import tilelang
            t0 = time.perf_counter()
            # the kernels are built (Python AST parsed) one by one here: CPython 3.11's parser is not
            # safe to run from several threads ("AST constructor recursion depth mismatch");
            # nvcc runs in subprocesses: compile side by side
            funcs = [_build(k) for k in missing]
            with ThreadPoolExecutor(len(missing)) as pool:
                built = list(pool.map(lambda f: tilelang.compile(f, target=_target(arch)), funcs))
            _STATS["compiles"] += len(missing)
            _STATS["compile_seconds"] += time.perf_counter() - t0
            _KERNELS.update({(arch, k): kern for k, kern in zip(missing, built)})
        return tuple(_KERNELS[(arch, k)] for k in keys)


def d_classes(n: int, dtype: str) -> dict:
    """{NC: smallest D of the class} over every D the capabilities admit."""
    out: dict = {}
    for D in range(D_MULTIPLE, D_MAX + 1, D_MULTIPLE):
        out.setdefault(d_class(n, D, dtype), D)
    return out


def reachable_kernels() -> list:
    """Cache key of every kernel the fuzzer can reach: every n, dtype and D-class."""
    keys: list = []
    for n in N_VALUES:
        for dt in X_DTYPES:
            for D in d_classes(n, dt).values():
                keys += [k for k in kernel_keys(n, D, dt) if k not in keys]
    return keys


SMEM_LIMIT = 227 * 1024             # sm_90 opt-in shared memory per block


class Lowered(NamedTuple):
    source: str                      # CUDA C of the kernel
    smem_bytes: int                  # dynamic shared memory it needs
    threads: int


def _lower_one(job):
    """Worker of lower_kernels: (key, arch) -> (key, Lowered)."""
    try:
        return _lower_one_inner(job)
    except Exception as exc:         # TVM errors do not pickle across processes
        raise RuntimeError(f"lowering {job} failed: {type(exc).__name__}: {exc}") from None


def _lower_one_inner(job):
    import tilelang
    from tilelang import tvm
    key, arch = job
    tgt = tvm.target.Target(_target(arch))
    with tvm.transform.PassContext(opt_level=3), tgt:   # as tilelang.compile
        art = tilelang.lower(_build(key), target=tgt)
    attrs = [f.attrs for f in art.device_mod.functions.values()][0]
    smem = int(attrs.get("dyn_shared_memory_buf", 0)) if "dyn_shared_memory_buf" in attrs else 0
    threads = int(attrs["thread_extent"]["threadIdx.x"])
    return key, Lowered(str(art.kernel_source), smem, threads)


def _pool(workers: int, n_jobs: int):
    """Worker processes for lowering/compiling: both hold the GIL, and TVM does not survive
    fork, so spawned processes."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor
    workers = workers or min(n_jobs, os.cpu_count() or 1, 8)
    return ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"))


def lower_kernels(arch: str = "sm_90a", keys=None, workers: int = 0) -> dict:
    """Kernels lowered to CUDA source for `arch` without a GPU or nvcc (default: every
    reachable kernel): {key: Lowered(source, smem_bytes, threads)}."""
    jobs = [(k, arch) for k in (keys or reachable_kernels())]
    with _pool(workers, len(jobs)) as pool:
        return dict(pool.map(_lower_one, jobs))


def _compile_one(job):
    key, arch = job
    try:
        import tilelang
        t0 = time.perf_counter()
        kern = tilelang.compile(_build(key), target=_target(arch))
        return key, kern.get_kernel_source(), time.perf_counter() - t0
    except Exception as exc:         # TVM errors do not pickle across processes
        raise RuntimeError(f"compiling {job} failed: {type(exc).__name__}: {exc}") from None


def precompile(keys=None, arch: str | None = None, workers: int = 0) -> dict:
    """Compile kernels with nvcc in worker processes (default: every reachable kernel), which
    fills TileLang's disk cache (TILELANG_CACHE_DIR) so that get_kernels, in any process,
    loads instead of compiling. No GPU needed when arch is given. {key: (source, seconds)}."""
    arch = arch or _device_arch()
    jobs = [(k, arch) for k in (keys or reachable_kernels())]
    with _pool(workers, len(jobs)) as pool:
        return {k: (src, sec) for k, src, sec in pool.map(_compile_one, jobs)}


# ----------------------------------------------------------------------------- host side

def _aligned(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """Contiguous, 16-byte aligned (TMA), in `dtype`; copies only when needed."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    t = t.contiguous()
    if t.data_ptr() % 16:
        t = t.clone()
    return t


_ONES: dict = {}


def _ones_gamma(n: int, D: int, device) -> torch.Tensor:
    key = (n, D, str(device))
    if key not in _ONES:
        _ONES[key] = torch.ones(n, D, dtype=torch.float32, device=device)
    return _ONES[key]


_NSM: dict = {}


def _num_splits(n: int, D: int, T: int, device, nc: int, bt: int = 32) -> int:
    """Token splits of K2: enough CTAs for ~8 waves of one CTA per SM, but at least ~8 token
    blocks per split so the [S, F, n*D] partials stay small next to the token traffic."""
    ncb = n * -(-D // nc)               # K2's column blocks
    key = str(device)
    if key not in _NSM:
        _NSM[key] = torch.cuda.get_device_properties(device).multi_processor_count
    nsm = _NSM[key]
    nb = (T + bt - 1) // bt
    s = min(-(-8 * nsm // ncb), -(-nb // 8))
    return max(1, min(s, nb))


class MHCBackwardTileLang:
    """op = MHCBackwardTileLang(B, S, n, D); dx, dphi, dalpha, dbias, dgamma = op(...).

    B and S only describe the expected shape: the kernels are compiled for (n, D-class,
    x dtype) with dynamic token count and hidden size, so any B*S works. Inputs are made contiguous (and 16-byte
    aligned, for TMA) when they are not; small tensors are cast to fp32 if needed."""

    def __init__(self, B: int, S: int, n: int, D: int):
        self.B, self.S, self.n, self.D = B, S, n, D
        reason = _shape_refusal(n, D)
        if reason:
            raise UnsupportedInputError(f"tilelang: unsupported input: {reason}")

    def __call__(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res,
                 gamma=None):
        B, S, n, D = x.shape
        if (n, D) != (self.n, self.D):
            raise UnsupportedInputError(f"tilelang: op built for n={self.n}, D={self.D}, got x {tuple(x.shape)}")
        dt = DTYPE_NAMES.get(x.dtype)
        if dt not in X_DTYPES:
            raise UnsupportedInputError(f"tilelang: x dtype {x.dtype} not in {X_DTYPES}")
        if x.device.type != "cuda":
            raise UnsupportedInputError(f"tilelang: needs CUDA tensors, got x on {x.device}")
        if dh_in.dtype != x.dtype:
            raise UnsupportedInputError(f"tilelang: dh_in dtype {dh_in.dtype} must equal x dtype {x.dtype}")
        return _Plan(x, phi, alpha, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma, dt).run()


class _Plan:
    """Buffers and launches of one backward call; one method per kernel (bench/ times them
    one by one), run() launches the three in order. k2: K2 tuning (default K2_TUNING);
    splits: K2's token splits (default _num_splits)."""

    def __init__(self, x, phi, alpha, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma,
                 dt: str, k2=None, splits: int | None = None):
        B, S, n, D = x.shape
        F, Tn, dev, f32 = mix_width(n), B * S, x.device, torch.float32
        self.k2_tuning = tuple(k2 or K2_TUNING)
        self.T, self.n, self.D, self.F = Tn, n, D, F
        self.dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        self.dphi = torch.empty(F, n * D, dtype=f32, device=dev)
        self.dgamma = torch.empty(n, D, dtype=f32, device=dev)
        self.dalpha = torch.empty(3, dtype=f32, device=dev)
        self.dbias = torch.empty(F, dtype=f32, device=dev)
        if Tn == 0:
            return
        self.kernels = get_kernels(n, D, dt, _device_arch(dev), self.k2_tuning)
        self.nc = kernel_keys(n, D, dt, self.k2_tuning)[1][2]     # K2's column tile (its D-class)
        g = _geometry(n, self.nc)
        self.x = _aligned(x).view(Tn, n, D)
        self.dh_in = _aligned(dh_in).view(Tn, D)
        self.phi = _aligned(phi, f32).view(F, n, D)
        self.gamma = _ones_gamma(n, D, dev) if gamma is None else _aligned(gamma, f32).view(n, D)
        small = [_aligned(t, f32) for t in (inv_rms, h_mix, h_pre, h_post, dh_post, dh_res)]
        self.inv, self.hmix, self.hpre, self.hpost, self.dpost, self.dres = (
            small[0].view(Tn), small[1].view(Tn, F), small[2].view(Tn, n), small[3].view(Tn, n),
            small[4].view(Tn, n), small[5].view(Tn, n * n))
        self.alpha = _aligned(alpha, f32)
        self.dmix = torch.empty(Tn, g["FP"], dtype=f32, device=dev)
        self.dmix_hi = torch.empty(Tn, g["FP"], dtype=torch.bfloat16, device=dev)
        self.dmix_lo = torch.empty_like(self.dmix_hi)
        self.coef = torch.empty(Tn, dtype=f32, device=dev)
        self.tokred = torch.empty(Tn, g["FR"], dtype=f32, device=dev)
        self.splits = splits or _num_splits(n, D, Tn, dev, self.nc, self.k2_tuning[3])
        self.part = torch.empty(self.splits, F, n, D, dtype=f32, device=dev)
        self.tpart = torch.empty(self.splits, g["FR"], dtype=f32, device=dev)

    def token(self):
        Tn, n, D = self.T, self.n, self.D
        self.kernels[0](self.x.view(Tn, n, D // 8, 8), self.dh_in.view(Tn, D // 8, 8), self.inv, self.hmix,
                        self.hpre, self.hpost, self.dpost, self.dres, self.alpha, self.dmix, self.dmix_hi,
                        self.dmix_lo, self.coef, self.tokred)

    def column(self):
        self.kernels[1](self.x, self.dh_in, self.dmix, self.dmix_hi, self.dmix_lo, self.coef, self.hpre,
                        self.tokred, self.phi, self.gamma, self.dx.view(self.T, self.n, self.D), self.part,
                        self.tpart)

    def reduce(self):
        self.kernels[2](self.part, self.tpart, self.phi, self.gamma, self.dphi.view(self.F, self.n, self.D),
                        self.dgamma, self.dalpha, self.dbias)

    def run(self):
        if self.T == 0:                   # empty launch grids are invalid in CUDA
            for t in (self.dphi, self.dgamma, self.dalpha, self.dbias):
                t.zero_()
        else:
            self.token()
            self.column()
            self.reduce()
        return self.dx, self.dphi, self.dalpha, self.dbias, self.dgamma


def _shape_refusal(n: int, D: int) -> str | None:
    return CAPABILITIES.refusal(device="cuda", x_dtype="bf16", n=n, D=D, T=1)


# ----------------------------------------------------------------------------- registry

CAPABILITIES = Capabilities(
    devices=("cuda",),
    x_dtypes=X_DTYPES,
    n_values=N_VALUES,
    d_multiple=D_MULTIPLE,
    d_max=D_MAX,
    deterministic=True,
    gemm_precision="tf32",
    has_forward=False,
    # every input is copied to contiguous, 16-byte aligned fp32 when it is not (_aligned)
    input_dtypes={name: X_DTYPES for name in SMALL_ARGS},
    notes=("TileLang 0.1.15, sm_90a; 3 kernels: per-token scalars, column-blocked dx (TF32 MMA "
           "dh_mix @ phi) + split partials of dh_mix^T x (bf16 hi+lo MMAs for bf16 x, else TF32), "
           "fixed-order reduce; compiled once per (n, D-class, x dtype) for every T and D; "
           "no float atomics; non-contiguous or misaligned inputs are copied"),
)


class TileLangBackend:
    name = "tilelang"
    capabilities = CAPABILITIES

    def __init__(self):
        self._ops: dict = {}

    def unavailable_reason(self) -> str | None:
        try:
            import tilelang  # noqa: F401
        except Exception as exc:  # ImportError, or a broken native install
            return f"tilelang not installed ({type(exc).__name__}: {exc})".splitlines()[0]
        if not torch.cuda.is_available():
            return "no CUDA device"
        major, minor = torch.cuda.get_device_capability()
        if major != 9:               # TMA + warp specialization, built and validated for sm_90a only
            return f"needs an sm_90 GPU (H100/H200), found sm_{major}{minor}"
        return None

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                     dh_in, dh_post, dh_res, gamma)
        B, S, n, D = x.shape
        op = self._ops.get((n, D))
        if op is None:
            op = self._ops[(n, D)] = MHCBackwardTileLang(B, S, n, D)
        return op(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)

    def stats(self) -> dict:
        """Compile counts of this process (read by fuzz.check.run_case into its reports)."""
        return compile_stats()

    def warm_up(self) -> dict:
        """Compile every kernel the fuzzer can reach on this GPU, side by side in worker
        processes, into TileLang's disk cache (TILELANG_CACHE_DIR): the case workers then load
        each in ~0.1 s instead of compiling it (~5-10 s each, 41 kernels)."""
        built = precompile()
        return {"kernels": len(built), "compile_seconds": round(sum(sec for _, sec in built.values()), 1)}


backend = TileLangBackend()
