#!/usr/bin/env python3
"""What the memory fill (fuzz/poison.py) costs the fuzz: the same fixed cases run through every
check with the fill on and off, alternating case by case (so that drift and warm caches cost
both sides alike), in this process.

    python3 bench/bench_checks.py --backend triton,tilelang --cases 200 [--profile nightly] [--json out.json]

Per backend: seconds per case and cases/s with the fill off and on, and their ratio (the
target: on <= 1.10 x off), and how many cases each way failed (must be the same: the fill adds
no alarm to a correct backend). The cases are Hypothesis's derandomized draws from the backend's
capabilities under the profile's GPU limits (fuzz/sample.py), so every run times the same ones;
each case runs once untimed first (compiles, caches)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fuzz import tolerances as tolmod  # noqa: E402
from fuzz.check import backend_can_run, run_case  # noqa: E402
from fuzz.profiles import get_profile  # noqa: E402
from fuzz.sample import sample_cases  # noqa: E402
from impls.registry import default_registry  # noqa: E402


TOLERANCES = tolmod.load()


def _run(backend, p, device, poison_on: bool):
    os.environ["MHC_FUZZ_POISON"] = "on" if poison_on else "off"
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = run_case(backend, p, device, TOLERANCES)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, res


def bench(backend, cases, device) -> dict:
    for p in cases:                       # untimed: compiles, allocator caches, the fill's pool
        _run(backend, p, device, True)
    spent = {False: 0.0, True: 0.0}
    failed = {False: 0, True: 0}
    for i, p in enumerate(cases):
        for on in ((False, True) if i % 2 else (True, False)):
            s, res = _run(backend, p, device, on)
            spent[on] += s
            failed[on] += res.failed
    n = len(cases)
    return {"backend": backend.name, "device": device, "cases": n,
            "s_per_case_off": spent[False] / n, "s_per_case_on": spent[True] / n,
            "cases_per_s_off": n / spent[False], "cases_per_s_on": n / spent[True],
            "ratio_on_off": spent[True] / spent[False], "failed_off": failed[False], "failed_on": failed[True]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="triton,tilelang")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--profile", default="nightly")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    reg = default_registry()
    limits = get_profile(args.profile).limits(args.device)
    rows = []
    for name in args.backend.split(","):
        b = reg.get(name)
        why = backend_can_run(b, args.device)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        row = bench(b, sample_cases(b.capabilities, args.cases, limits), args.device)
        rows.append(row)
        print(f"{name} ({args.device}, {row['cases']} cases): fill off {row['s_per_case_off'] * 1e3:.1f} ms/case "
              f"({row['cases_per_s_off']:.2f}/s), on {row['s_per_case_on'] * 1e3:.1f} ms/case "
              f"({row['cases_per_s_on']:.2f}/s): on/off = {row['ratio_on_off']:.3f}; "
              f"failed off {row['failed_off']}, on {row['failed_on']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
