#!/usr/bin/env python3
"""Benchmark of the mHC pre operator's backward (and forward) on a CUDA GPU.

    python3 bench/bench_backward.py [--json out.json] [--tokens 128,4096,32768] [--dims 2560,4096,7168]

Columns: golden eager, torch.compile(golden backward), then every backend of
impls.registry.default_registry() that is available here and is not golden (triton,
tilelang, plugins, ...). For each: median time (CUDA events, L2 flushed by a read sweep before
each run: see fuzz/timing.py), its ratio to the memory roofline (bytes that must move / device bandwidth measured
in this run by a large device-to-device copy), its ratio to torch.compile(golden), and the
peak extra memory (max_memory_allocated during the call minus inputs and outputs).
For the triton backend also each of its four backward kernels against its own bytes, and for
every row the wall time per call of back-to-back calls (host work included: the limit at small T).

Other modes (same script, so one device call does everything):
  --check   correctness sweep of every benchmarked backend through fuzz.check.run_case
            (float64 truth, derived bounds, determinism) on shapes/dtypes/layouts.
  --tune    time alternative launch parameters of each triton kernel at one shape
            (--tune-apply: keep the fastest fp32-level variants for --check and the table).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz import timing  # noqa: E402
# The timing method (CUDA events, read-sweep L2 flush, median, bytes model, copy bandwidth)
# lives in fuzz/timing.py, shared with the onboarding card; bench_tilelang.py uses these names.
from fuzz.timing import (bench_ms, bwd_bytes, compiled_golden, fwd_bytes, make_inputs,  # noqa: E402
                         measure_bandwidth, wall_ms)
from impls.golden import mhc_forward, mhc_pre_backward_manual  # noqa: E402
from impls.registry import DTYPES, default_registry, unavailable_reason  # noqa: E402

MiB = 1 << 20


def triton_kernel_bytes(plan, xb):
    """Bytes each Triton backward kernel must move, given its own inputs and outputs."""
    T, n, D, F, K = plan.T, plan.n, plan.D, plan.F, plan.K
    x, dh = T * K * xb, T * D * xb
    per_tok_in = T * (1 + F + n + n + n + n * n) * 4
    part3 = plan.nsplit * F * K * 4
    return {
        "token": x + dh + per_tok_in + T * (F + 1) * 4 + plan.part1.numel() * 4,
        "dx": 2 * x + dh + T * (F + 1 + n) * 4 + F * K * 4 + K * 4,
        "dphi": x + T * F * 4 + part3,
        "dgamma": part3 + 2 * F * K * 4 + 2 * K * 4 + plan.part1.numel() * 4,
    }


# ---------------------------------------------------------------- memory
def tensor_bytes(ts):
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def peak_extra_mib(fn, inputs) -> float:
    """Peak memory of one call beyond its inputs and outputs, MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    extra = peak - base - tensor_bytes(outs)
    del out, outs
    return max(extra, 0) / MiB


# ---------------------------------------------------------------- implementations
def implementations(args):
    """name -> (backward fn(*bwd_args), forward fn(*fwd_args) or None, backend or None)."""
    impls = {"golden": (mhc_pre_backward_manual, mhc_forward, None)}
    impls["compile(golden)"] = (compiled_golden(args.dynamic), None, None)
    reg = default_registry()
    for name, err in reg.errors.items():
        print(f"# registry: {err}")
    for name in reg.names():
        if name == "golden" or (args.backends and name not in args.backends):
            continue
        be = reg.get(name)
        why = unavailable_reason(be)
        if why:
            print(f"# skipping backend {name}: {why}")
            continue
        fwd = be.forward if be.capabilities.has_forward else None
        impls[name] = (be.backward, fwd, be)
    return impls


def run_bench(args, bw):
    impls = implementations(args)
    dtype = DTYPES[args.dtype]
    xb = torch.empty(0, dtype=dtype).element_size()
    rows = []
    for T in args.tokens:
        for D in args.dims:
            n = args.n
            bwd_args, fwd_args = make_inputs(T, n, D, dtype)
            roof_b = bwd_bytes(T, n, D, xb) / bw * 1e3
            roof_f = fwd_bytes(T, n, D, xb) / bw * 1e3
            shape = dict(T=T, n=n, D=D, dtype=args.dtype)
            times = {}
            for name, (bwd, fwd, be) in impls.items():
                for direction, fn, a, roof in (("backward", bwd, bwd_args, roof_b), ("forward", fwd, fwd_args, roof_f)):
                    if fn is None:
                        continue
                    if be is not None and be.capabilities.refusal(device="cuda", x_dtype=args.dtype, n=n, D=D, T=T):
                        continue
                    try:
                        fn(*a)
                        ms = bench_ms(lambda: fn(*a))
                        wall = wall_ms(lambda: fn(*a), ms)
                        extra = peak_extra_mib(lambda: fn(*a), a)
                    except Exception as exc:  # report, keep benchmarking the others
                        print(f"# {name} {direction} {shape}: {type(exc).__name__}: {exc}")
                        continue
                    times[(name, direction)] = ms
                    rows.append(dict(shape, impl=name, direction=direction, ms=ms, wall_ms=wall, roofline_ms=roof,
                                     x_roofline=ms / roof, extra_mib=extra))
                if name == "triton" and be is not None:
                    rows += triton_kernels(T, n, D, xb, bwd_args, bw, shape)
            ref = times.get(("compile(golden)", "backward"))
            for r in rows:
                if r.get("impl") in dict(impls) and r["direction"] == "backward" and r["T"] == T and r["D"] == D:
                    r["vs_compile"] = (r["ms"] / ref) if ref else None
            del bwd_args, fwd_args
            torch.cuda.empty_cache()
    return rows


def triton_kernels(T, n, D, xb, bwd_args, bw, shape):
    import impls.triton_mhc as tm
    plan = tm._BackwardPlan(*bwd_args)
    plan.run()
    bytes_ = triton_kernel_bytes(plan, xb)
    out = []
    for k, fn in (("token", plan.token), ("dx", plan.dx_), ("dphi", plan.dphi_), ("dgamma", plan.dgamma_)):
        ms = bench_ms(fn)
        bound = bytes_[k] / bw * 1e3
        out.append(dict(shape, impl=f"triton:{k}", direction="kernel", ms=ms, roofline_ms=bound,
                        x_roofline=ms / bound, extra_mib=None))
    out[-1]["nsplit"] = plan.nsplit
    return out


def print_table(rows, bw):
    print(f"\n{torch.cuda.get_device_name()}  copy bandwidth {bw / 1e12:.2f} TB/s")
    hdr = (f"{'T':>6} {'D':>5} {'impl':<16} {'dir':<8} {'ms':>9} {'wall ms':>8} {'roof ms':>8} {'x roof':>7} "
           f"{'vs compile':>10} {'extra MiB':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        vc = r.get("vs_compile")
        vc_s = f"{1 / vc:9.2f}x" if vc else " " * 10
        ex = r.get("extra_mib")
        ex_s = f"{ex:10.1f}" if ex is not None else " " * 10
        wl = r.get("wall_ms")
        wl_s = f"{wl:8.3f}" if wl is not None else " " * 8
        print(f"{r['T']:>6} {r['D']:>5} {r['impl']:<16} {r['direction']:<8} {r['ms']:9.3f} {wl_s} {r['roofline_ms']:8.3f} "
              f"{r['x_roofline']:7.2f} {vc_s} {ex_s}")
    print("(ms: GPU time, L2 flushed; wall ms: per call of back-to-back calls, host work included; "
          "vs compile: speedup over torch.compile(golden backward); x roof: ms / memory roofline)")


# ---------------------------------------------------------------- --check
def run_check(args):
    from fuzz.cases import CaseParams
    from fuzz.check import run_case
    reg = default_registry()
    cases = [
        CaseParams(1, 1, 4, 7168, "bf16"), CaseParams(4, 1024, 4, 2560, "bf16", seed=1),
        CaseParams(1, 65536, 4, 64, "bf16", seed=2), CaseParams(2, 333, 8, 100, "fp16", seed=3),
        CaseParams(3, 77, 6, 33, "fp32", seed=4), CaseParams(1, 5, 1, 1, "fp32", seed=5),
        CaseParams(2, 2048, 4, 4096, "bf16", layout="strided", seed=6),
        CaseParams(1, 1000, 4, 1000, "bf16", layout="transposed", seed=7),
        CaseParams(2, 513, 2, 257, "fp16", layout="offset", use_gamma=False, seed=8),
        CaseParams(1, 4096, 4, 7168, "bf16", x_scale=2, grad_scale=-2, zero_tokens=5, outliers=9, seed=9),
        CaseParams(1, 8192, 4, 2560, "fp32", seed=10), CaseParams(1, 3000, 3, 48, "bf16", seed=11),
        CaseParams(1, 300, 5, 4096, "bf16", bias_shift=8.0, seed=12), CaseParams(1, 17, 7, 15, "fp16", seed=13),
    ]
    ok = True
    for name in reg.names():
        if name == "golden" or (args.backends and name not in args.backends):
            continue
        be = reg.get(name)
        if unavailable_reason(be):
            continue
        for p in cases:
            res = run_case(be, p, "cuda")
            ok &= res.status != "fail"
            print(f"check {name:<10} {p.short():<60} {res.status:<8} worst err/bound {res.worst_ratio():.3f} "
                  f"{res.kind} {res.message[:300]}")
    return ok


# ---------------------------------------------------------------- --tune
TUNE = {
    "token": [dict(bt1=4, bd1=256, warps1=4), dict(bt1=2, bd1=512, warps1=4), dict(bt1=8, bd1=256, warps1=8),
              dict(bt1=1, bd1=1024, warps1=4)],
    "dx": [dict(bt2=128, bd2=32, warps2=8), dict(bt2=128, bd2=32, warps2=8, stream2=False),
           dict(bt2=32, bd2=128, warps2=4), dict(bt2=32, bd2=128, warps2=4, stream2=False),
           dict(bt2=32, bd2=128, warps2=8), dict(bt2=32, bd2=256, warps2=8), dict(bt2=16, bd2=256, warps2=4),
           dict(bt2=64, bd2=128, warps2=8), dict(bt2=64, bd2=64, warps2=4), dict(bt2=32, bd2=64, warps2=4),
           dict(bt2=32, bd2=128, warps2=4, prefetch2=False), dict(bt2=32, bd2=128, warps2=4, stages2=2)],
    "dphi": [dict(bt3=32, bd3=256, warps3=8, stages3=3), dict(bt3=32, bd3=128, warps3=4, stages3=4),
             dict(bt3=64, bd3=128, warps3=8, stages3=3)],
    "dgamma": [dict(bk4=64, bs4=4, warps4=4), dict(bk4=32, bs4=4, warps4=2), dict(bk4=32, bs4=4, warps4=4),
               dict(bk4=32, bs4=4, warps4=2, stages4=1), dict(bk4=64, bs4=4, warps4=4, stages4=1),
               dict(bk4=32, bs4=2, warps4=2, stages4=4), dict(bk4=16, bs4=8, warps4=2), dict(bk4=128, bs4=2, warps4=4)],
    "forward": [dict(bt=64, bd=64, warps=4, stages=3), dict(bt=128, bd=64, warps=8, stages=3),
                dict(bt=128, bd=32, warps=4, stages=4)],
}


def run_tune(args, bw):
    import impls.triton_mhc as tm
    dtype = DTYPES[args.dtype]
    xb = torch.empty(0, dtype=dtype).element_size()
    T, D, n = args.tune_shape
    bwd_args, fwd_args = make_inputs(T, n, D, dtype)
    results = []
    prec0 = tm.DOT_PRECISION, tm.DX16_DOT_PRECISION
    for prec in args.tune_prec:
        tm.DOT_PRECISION = tm.DX16_DOT_PRECISION = prec
        for kernel, variants in TUNE.items():
            if args.tune_kernels and kernel not in args.tune_kernels:
                continue
            if kernel not in ("dx", "forward") and prec != args.tune_prec[0]:
                continue
            for v in variants:
                tm.BWD_OVERRIDES.clear()
                tm.FWD_OVERRIDES.clear()
                try:
                    if kernel == "forward":
                        tm.FWD_OVERRIDES.update(v)
                        fn = lambda: tm.mhc_forward_pre_triton_optimized(*fwd_args)  # noqa: E731
                        bound = fwd_bytes(T, n, D, xb) / bw * 1e3
                    else:
                        tm.BWD_OVERRIDES.update(v)
                        plan = tm._BackwardPlan(*bwd_args)
                        plan.run()
                        fn = {"token": plan.token, "dx": plan.dx_, "dphi": plan.dphi_, "dgamma": plan.dgamma_}[kernel]
                        bound = triton_kernel_bytes(plan, xb)[kernel] / bw * 1e3
                    fn()
                    ms = bench_ms(fn)
                except Exception as exc:
                    print(f"tune {kernel} {v}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                results.append(dict(kernel=kernel, prec=prec, cfg=v, ms=ms, x_bound=ms / bound))
                print(f"tune T={T} D={D} {kernel:<7} {prec:<7} {str(v):<70} {ms:8.3f} ms  {ms / bound:5.2f}x bound")
    tm.BWD_OVERRIDES.clear()
    tm.FWD_OVERRIDES.clear()
    tm.DOT_PRECISION, tm.DX16_DOT_PRECISION = prec0
    if args.tune_apply:  # keep the fastest variant of each kernel for what follows, at the declared precisions
        x16 = dtype in (torch.bfloat16, torch.float16)
        for kernel in TUNE:
            prec = tm.DX16_DOT_PRECISION if kernel == "dx" and x16 else tm.DOT_PRECISION
            cands = [r for r in results if r["kernel"] == kernel and r["prec"] == prec]
            if cands:
                best = min(cands, key=lambda r: r["ms"])
                (tm.FWD_OVERRIDES if kernel == "forward" else tm.BWD_OVERRIDES).update(best["cfg"])
        print(f"# applied: BWD={tm.BWD_OVERRIDES} FWD={tm.FWD_OVERRIDES}")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    ap.add_argument("--tokens", type=ints, default=[128, 4096, 32768])
    ap.add_argument("--dims", type=ints, default=[2560, 4096, 7168])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--backends", type=lambda s: s.split(","), default=None, help="only these registry backends")
    ap.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                    help="torch.compile(dynamic=...) for golden: one compile for all shapes (default)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="draw the results to this PNG (bench/plot.py)")
    ap.add_argument("--check", action="store_true", help="correctness sweep first")
    ap.add_argument("--tune", action="store_true", help="time triton launch-parameter variants")
    ap.add_argument("--tune-shape", type=ints, default=[32768, 7168, 4], help="T,D,n for --tune")
    ap.add_argument("--tune-prec", type=lambda s: s.split(","), default=["tf32", "tf32x3"],
                    help="dot precisions to tune at (non-dx kernels: the first only)")
    ap.add_argument("--tune-kernels", type=lambda s: s.split(","), default=None)
    ap.add_argument("--tune-apply", action="store_true", help="use the fastest variants for --check and the bench")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--flush", choices=["read", "write"], default="read",
                    help="how the L2 is flushed before each timed run (see flush_l2)")
    args = ap.parse_args(argv)
    timing.FLUSH = args.flush
    if not torch.cuda.is_available():
        print("bench_backward.py needs a CUDA device")
        return 2
    t0 = time.time()
    doc = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    try:
        import triton
        doc["triton"] = triton.__version__
    except ImportError:
        pass
    ok = True
    bw = measure_bandwidth()
    doc["bandwidth_Bps"] = bw
    doc["l2_flush"] = timing.FLUSH
    if args.tune:
        doc["tune"] = run_tune(args, bw)
    try:
        import impls.triton_mhc as tm
        doc["triton_config"] = dict(dot_precision=tm.DOT_PRECISION, bwd=dict(tm.BWD_OVERRIDES),
                                    fwd=dict(tm.FWD_OVERRIDES))
    except ImportError:
        pass
    if args.check:
        ok = run_check(args)
        doc["check_passed"] = ok
    if not args.no_bench:
        rows = run_bench(args, bw)
        doc["rows"] = rows
        print_table(rows, bw)
    doc["seconds"] = time.time() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    if args.plot and doc.get("rows"):
        from bench.plot import plot
        print(f"# plot: {plot(doc, args.plot)}")
    print(f"# done in {doc['seconds']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
