#!/usr/bin/env python3
"""What a large-tier case costs on the GPU: seconds and peak memory per phase.

    python3 bench/bench_large.py --backend triton,tilelang [--shapes 3] [--json out.json]

For each backend, its first --shapes large-tier shapes (fuzz/geometry.py, in the order the
tier tries them: the first has T*n*D just past 2^31 elements) are built (fuzz/chunks.py) and
run through every check (the backend twice or more: determinism, the memory fill's pool),
each phase timed, with torch's peak allocated and reserved memory (the peak a case needs is
the reserved one: the allocator holds it). Nothing fails for a correct backend; a verdict
other than pass is printed."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fuzz import tolerances as tolmod  # noqa: E402
from fuzz.cases import CaseParams, make_inputs  # noqa: E402
from fuzz.check import backend_can_run, run_inputs  # noqa: E402
from fuzz.geometry import large_shapes  # noqa: E402
from fuzz.profiles import get_profile  # noqa: E402
from impls.registry import default_registry  # noqa: E402

GiB = 1 << 30


def measure(backend, p: CaseParams) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    inp = make_inputs(p, "cuda")
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    build_peak = torch.cuda.max_memory_allocated() / GiB
    res = run_inputs(backend, inp, "cuda", tolmod.load())
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    row = {"backend": backend.name, "case": p.short(), "elements": p.T * p.n * p.D, "status": res.status,
           "kind": str(res.kind), "build_s": t1 - t0, "checks_s": t2 - t1, "total_s": t2 - t0,
           "build_peak_gib": build_peak, "peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
           "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB}
    del inp, res
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="triton,tilelang")
    ap.add_argument("--shapes", type=int, default=3, help="how many of each backend's large shapes (in order)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_large.py needs a CUDA GPU")
    reg = default_registry()
    limits = get_profile("large").cuda
    total = torch.cuda.get_device_properties(0).total_memory / GiB
    print(f"{torch.cuda.get_device_name()}: {total:.0f} GiB")
    rows = []
    for name in args.backend.split(","):
        b = reg.get(name)
        why = backend_can_run(b, "cuda")
        if why:
            print(f"{name}: skipped ({why})")
            continue
        for B, S, n, D, dt in large_shapes(b.capabilities, limits)[: args.shapes]:
            row = measure(b, CaseParams(B, S, n, D, dt, seed=1))
            rows.append(row)
            print(f"{name} {row['case']} ({row['elements'] / 2**31:.3f} x 2^31 elements): {row['status']}"
                  f"{' ' + row['kind'] if row['kind'] else ''}; build {row['build_s']:.1f} s, checks "
                  f"{row['checks_s']:.1f} s, total {row['total_s']:.1f} s; peak allocated "
                  f"{row['peak_allocated_gib']:.1f} GiB, reserved {row['peak_reserved_gib']:.1f} GiB "
                  f"(build {row['build_peak_gib']:.1f} GiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
