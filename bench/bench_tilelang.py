#!/usr/bin/env python3
"""Timing of the TileLang backward, kernel by kernel, next to the Triton backend.

    python3 bench/bench_tilelang.py [--tokens 128,4096,32768] [--dims 7168,2560] [--variants]

bench/bench_backward.py is the project's benchmark (every backend, torch.compile baseline);
this one is lighter (no torch.compile, so it fits a short device call) and adds what only
the TileLang backend has: its three kernels against their own bytes, the K2 pipeline
variants (--variants), and compile statistics. Bandwidth: a 2 GiB device copy in this run.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import impls.tilelang_mhc as tlm  # noqa: E402
from bench import bench_backward  # noqa: E402
from impls.registry import DTYPE_NAMES, default_registry, unavailable_reason  # noqa: E402


# (stages, NC, threads, tokens per block, dx_direct, hilo_in, min CTAs/SM): see impls/tilelang_mhc._col_kernel
K2_VARIANTS = [(2, None, 256, 32, False, True, 1), (2, 128, 256, 32, False, True, 2),
               (3, 128, 256, 32, False, True, 2)]


bench_ms = bench_backward.bench_ms
bandwidth = bench_backward.measure_bandwidth
bwd_bytes = bench_backward.bwd_bytes


def kernel_bytes(plan, xb):
    """Bytes each TileLang kernel must move, given its own inputs and outputs."""
    T, n, D, F, S = plan.T, plan.n, plan.D, plan.F, plan.splits
    K = n * D
    FP, FR = plan.dmix.shape[1], plan.tokred.shape[1]
    small = T * (1 + F + n + n + n + n * n) * 4
    out1 = T * (FP + 1 + FR) * 4
    return {"K1 token": T * K * xb + T * D * xb + small + out1,
            "K2 column": 2 * T * K * xb + T * D * xb + out1 + T * n * 4 + F * K * 4 + K * 4 + S * F * K * 4,
            "K3 reduce": S * F * K * 4 + 2 * F * K * 4 + 2 * K * 4}


def make_inputs(T, n, D, dtype, seed=0):
    return bench_backward.make_inputs(T, n, D, dtype, seed)[0]


def split_kernels(args, k2=None, splits=None):
    """The three launches of one backward as separate closures (to time each); splits:
    K2's token splits instead of the plan's choice."""
    x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma = args
    plan = tlm._Plan(x, phi, alpha, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma,
                     DTYPE_NAMES[x.dtype], k2, splits)
    return plan, {"K1 token": plan.token, "K2 column": plan.column, "K3 reduce": plan.reduce}, (plan.dx, plan.dphi)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    ap.add_argument("--tokens", type=ints, default=[128, 4096, 32768])
    ap.add_argument("--dims", type=ints, default=[7168, 2560])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--variants", action="store_true", help="also time K2 pipeline variants")
    ap.add_argument("--k2", type=json.loads, default=None,
                    help="JSON list of K2 tunings to time instead of K2_VARIANTS (implies --variants)")
    ap.add_argument("--splits", type=ints, default=[], help="also time the default K2 with these token splits")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    t0 = time.time()
    dev_name = torch.cuda.get_device_name()
    bw = bandwidth()
    print(f"{dev_name}: copy bandwidth {bw / 1e12:.3f} TB/s")
    reg = default_registry()
    others = {}
    if not args.no_triton and "triton" in reg.names() and not unavailable_reason(reg.get("triton")):
        others["triton"] = reg.get("triton").backward
    rows = []
    n, dtype = args.n, torch.bfloat16
    for D in args.dims:
        for T in args.tokens:
            a = make_inputs(T, n, D, dtype)
            roof = bwd_bytes(T, n, D, 2) / bw * 1e3
            res = {}
            for name, fn in [("tilelang", tlm.backend.backward)] + list(others.items()):
                try:
                    fn(*a)
                    res[name] = bench_ms(lambda: fn(*a))
                except Exception as exc:
                    print(f"# {name} T={T} D={D}: {type(exc).__name__}: {str(exc)[:300]}")
            line = f"T={T:6d} n={n} D={D:5d} roof {roof:7.3f} ms |" + "".join(
                f" {k} {v:7.3f} ms ({v / roof:4.2f}x roof)" for k, v in res.items())
            if "triton" in res and "tilelang" in res:
                line += f" | triton/tilelang {res['triton'] / res['tilelang']:.2f}"
            print(line, flush=True)
            rows.append(dict(T=T, n=n, D=D, roof_ms=roof, **{f"{k}_ms": v for k, v in res.items()}))
            k2s = [tuple(v) for v in args.k2] if args.k2 else K2_VARIANTS if args.variants else []
            variants = [(None, None)] + ([(k2, None) for k2 in k2s] if T >= 4096 else [])
            variants += [(None, s) for s in args.splits]
            base = None
            for k2, splits in variants:
                try:
                    plan, ks, outs = split_kernels(a, k2, splits)
                    for f in ks.values():
                        f()
                    torch.cuda.synchronize()
                    if base is None:
                        base = [o.clone() for o in outs]
                    same_dx = torch.equal(outs[0], base[0])
                    dx_diff = (outs[0].float() - base[0].float()).abs().max().item()
                    prel = ((outs[1] - base[1]).abs().max() / base[1].abs().max()).item()
                    kb = kernel_bytes(plan, 2)
                    parts = []
                    for k, f in ks.items():
                        if (k2 is not None or splits) and k != "K2 column":
                            continue
                        ms = bench_ms(f)
                        parts.append(f"{k} {ms:7.3f} ms ({ms / (kb[k] / bw * 1e3):4.2f}x own bytes)")
                    tag = f"K2 (stages, NC, threads)={k2 or tlm.K2_TUNING}"
                    print(f"    S={plan.splits} {tag} dx same bits={same_dx} (max diff {dx_diff:.1e}) dphi max rel diff={prel:.1e}: " + ", ".join(parts), flush=True)
                except Exception as exc:
                    print(f"    variant {k2}: {type(exc).__name__}: {str(exc)[:300]}")
            del a
            torch.cuda.empty_cache()
    st = tlm.compile_stats()
    print(f"compile stats: {st}; total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=dev_name, bandwidth=bw, rows=rows, compile=st), indent=1))


if __name__ == "__main__":
    main()
