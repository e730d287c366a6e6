"""How a backward is timed on a GPU: one method for bench/bench_backward.py and the onboarding card.

Median of CUDA-event timings, each run after the L2 is flushed by a read sweep (flush_l2),
with warm-up and repeat counts sized like triton.testing.do_bench's; the memory roofline of
a shape is the bytes its backward must move (bwd_bytes) over the device bandwidth, measured
in the same run by a large device-to-device copy (measure_bandwidth)."""
from __future__ import annotations

import math
import time

import torch

from impls.golden import mhc_forward, mhc_pre_backward_manual, mix_width

FLUSH_BYTES = 256 << 20          # > the L2 of any current GPU (H100: 50 MB)
FLUSH = "read"                   # default mode; "write" is triton.testing.do_bench's memset
_flush_buf: dict = {}


def flush_l2(mode: str = "") -> None:
    """Evict the L2 before a timed run.

    "read" (default) sweeps a 256 MiB buffer with a read-only reduction, so the L2 is left
    holding clean lines. triton.testing.do_bench's flush, "write", is a 256 MiB memset: it
    leaves the L2 full of dirty lines, which the timed kernel writes back to DRAM as its own
    accesses evict them, so up to 50 MB of the flush's traffic is charged to the kernel.
    Measured on an H100 at T=32768, n=4, D=7168: Triton's dgamma kernel (58 MB) 33.0 us after
    "write" and 24.5 us after "read"; torch's sum over the same 52 MB 30.3 vs 25.3 us; the
    whole backward (4.2 GB) 3.197 vs 3.183 ms."""
    mode = mode or FLUSH
    if "buf" not in _flush_buf:
        _flush_buf["buf"] = torch.ones(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
        _flush_buf["out"] = torch.empty((), dtype=torch.float32, device="cuda")
    if mode == "write":
        _flush_buf["buf"].zero_()
    else:
        torch.sum(_flush_buf["buf"], dim=0, out=_flush_buf["out"])


def bench_ms(fn, warmup=25, rep=100, flush: str = "") -> float:
    """Median milliseconds of fn() on the GPU: CUDA events around each run, the L2 flushed
    before each (flush_l2), warm-up and repeat counts sized like triton.testing.do_bench's."""
    fn()
    torch.cuda.synchronize()
    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    a, b = ev(), ev()
    a.record()
    for _ in range(5):
        flush_l2(flush)
        fn()
    b.record()
    torch.cuda.synchronize()
    est = max(a.elapsed_time(b) / 5, 1e-3)   # includes the flush: counts stay bounded
    for _ in range(max(1, int(warmup / est))):
        fn()
    n = max(5, int(rep / est))
    starts, ends = [ev() for _ in range(n)], [ev() for _ in range(n)]
    for i in range(n):
        flush_l2(flush)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return times[len(times) // 2]


def wall_ms(fn, gpu_ms: float) -> float:
    """Mean milliseconds per call of back-to-back calls, host work included: what a caller
    waits at small T, where launching kernels, not the GPU, is the limit (~0.3 s of calls)."""
    iters = max(3, min(200, int(300 / max(gpu_ms, 1e-3))))
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3


def measure_bandwidth(nbytes=2 << 30) -> float:
    """Device memory bandwidth in bytes/s: a large copy counts bytes read + bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3)


# ---------------------------------------------------------------- bytes that must move
def bwd_bytes(T, n, D, xb):
    """Bytes the backward must move at least: each input read once, each output written once."""
    F, K = mix_width(n), n * D
    big = T * K * xb * 2 + T * D * xb                  # read x, write dx, read dh_in
    params = F * K * 4 * 2 + K * 4 * 2 + F * 4 + 3 * 4  # phi, dphi, gamma, dgamma, dbias, dalpha (+ alpha, bias)
    small = T * (1 + F + n + n + n + n * n) * 4        # inv_rms, h_mix, h_pre, h_post, dh_post, dh_res
    return big + params + small


def fwd_bytes(T, n, D, xb):
    F, K = mix_width(n), n * D
    return T * K * xb + T * D * xb + F * K * 4 + K * 4 + T * (1 + F + n + n + n * n) * 4


# ---------------------------------------------------------------- inputs and the baseline
def make_inputs(T, n, D, dtype, seed=0, device="cuda"):
    """Realistic inputs of one shape, made fast on the device (random, not the fuzzer's hashed
    values): (backward arguments, forward arguments)."""
    g = torch.Generator(device=device).manual_seed(seed)
    F, K = mix_width(n), n * D
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    x = r(1, T, n, D).to(dtype)
    phi = r(F, K) / math.sqrt(K)
    alpha = torch.tensor([0.8, 1.1, 0.9], device=device)
    bias = r(F) * 0.1
    gamma = 1 + 0.25 * r(n, D)
    with torch.no_grad():
        _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(x, phi, alpha, bias, gamma)
    dh_in = r(1, T, D).to(dtype)
    dh_post, dh_res = r(1, T, n), r(1, T, n, n)
    bwd = (x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)
    return bwd, (x, phi, alpha, bias, gamma)


def compiled_golden(dynamic=True):
    """torch.compile of the golden manual backward: the baseline a kernel has to beat."""
    return torch.compile(mhc_pre_backward_manual, dynamic=dynamic)
