"""`mhc-fuzz run --workers N|auto`: one fuzz worker per GPU, the search split by seed.

Each worker is `mhc-fuzz run` itself in a child process with CUDA_VISIBLE_DEVICES pinned
to one GPU and its own seed (seed*1000 + i), writing to the shared reports folder (safe:
reports are locked and atomic) and to its own summary. A worker that dies is restarted
for the rest of the budget. The parent adds the summaries up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def gpu_count_without_cuda_init() -> int | None:
    """GPUs the driver lists, read without initialising CUDA (CUDA_VISIBLE_DEVICES must be
    set before that); None where the driver does not list them."""
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else None


def gpu_count() -> int:
    found = gpu_count_without_cuda_init()
    if found is not None:
        return found
    import torch
    return torch.cuda.device_count()


def _child_argv(args, seed: int, out: Path, budget_s: float) -> list:
    argv = [sys.executable, "-m", "fuzz.cli", "run", "--backend", args.backend, "--budget", f"{budget_s:.0f}s",
            "--profile", args.profile, "--seed", str(seed), "--reports", args.reports, "--out", str(out),
            "--db", args.db, "--case-timeout", str(args.case_timeout), "--device", args.device or "cuda",
            "--workers", "1", "--no-warm-up"]
    for p in args.plugin:
        argv += ["--plugin", p]
    if args.tolerances:
        argv += ["--tolerances", args.tolerances]
    if args.no_isolate:
        argv.append("--no-isolate")
    return argv


def run_sharded(args, budget: float, device: str, console) -> int:
    from fuzz.cli import HarnessError, _writable_dir
    gpus = gpu_count() if device == "cuda" else 0
    if args.workers == "auto":
        n = max(1, gpus) if device == "cuda" else max(1, (os.cpu_count() or 2) // 2)
    else:
        try:
            n = int(args.workers)
        except ValueError:
            raise HarnessError(f"--workers {args.workers!r}: expected a positive integer or auto") from None
        if n < 1:
            raise HarnessError(f"--workers {args.workers!r}: expected a positive integer or auto")
    out = _writable_dir(args.out, "--out")
    _writable_dir(args.reports, "--reports")
    warmed = {}
    if not args.no_warm_up:          # once here; the workers then load what it prepared
        from fuzz.check import backend_can_run
        from fuzz.cli import _registry, _select, warm_up_backends
        reg = _registry(args.plugin, console, quiet=True)
        names = [nm for nm in _select(reg, args.backend) if not backend_can_run(reg.get(nm), device)]
        warmed = warm_up_backends(reg, names, console)
    start = time.monotonic()
    workers = {}

    def launch(i):
        env = dict(os.environ)
        if device == "cuda" and gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        left = budget - (time.monotonic() - start)
        shard_out = out / f"worker-{i}"
        restarts = workers[i]["restarts"] + 1 if i in workers else 0
        log = open(out / f"worker-{i}.log", "a")
        p = subprocess.Popen(_child_argv(args, args.seed * 1000 + i + 100 * restarts, shard_out, left),
                             env=env, stdout=log, stderr=subprocess.STDOUT)
        workers[i] = {"proc": p, "out": shard_out, "restarts": restarts, "log": log}

    console.print(f"{n} workers on {device}" + (f" ({gpus} GPUs, one each)" if gpus else ""))
    for i in range(n):
        launch(i)
    try:
        _supervise(workers, launch, budget, start, console)
    except KeyboardInterrupt:       # stop every worker; each writes its partial summary
        for w in workers.values():
            if w["proc"].poll() is None:
                w["proc"].terminate()
        for w in workers.values():
            w["proc"].wait(60)
    summaries = []
    for i, w in workers.items():
        w["log"].close()
        f = w["out"] / "summary.json"
        if f.exists():
            summaries.append(json.loads(f.read_text()))
    merged = merge(summaries, n, device, budget)
    if warmed:
        merged["warm_up"] = warmed
    (out / "summary.json").write_text(json.dumps(merged, indent=2) + "\n")
    from rich.table import Table
    t = Table(title=f"mhc-fuzz summary, {n} workers")
    for col in ("backend", "cases", "passed", "failed", "refused", "cases/s", "findings"):
        t.add_column(col)
    for b in merged["backends"]:
        t.add_row(b["backend"], str(b["cases"]), str(b["passed"]), str(b["failed"]), str(b["refused"]),
                  f"{b['cases_per_second']:.2f}", str(len(b["findings"])))
    console.print(t)
    console.print(f"summary: {out / 'summary.json'}  reports: {args.reports}")
    return 1 if merged["failed"] else 0


def _supervise(workers, launch, budget, start, console):
    """Wait for the workers; restart one that dies while budget is left."""
    while True:
        running = 0
        for i, w in workers.items():
            rc = w["proc"].poll()
            if rc is None:
                running += 1
            elif rc not in (0, 1, 2, 130) and budget - (time.monotonic() - start) > 10:   # died, not done
                console.print(f"[yellow]worker {i} died (exit {rc}); restarting[/]")
                w["log"].close()
                launch(i)
                running += 1
        if not running:
            break
        time.sleep(1.0)


def merge(summaries: list, n_workers: int, device: str, budget: float) -> dict:
    """Add up per-worker summaries: counts sum, worst ratios take the max, findings by signature."""
    by_name = {}
    for s in summaries:
        for b in s["backends"]:
            m = by_name.setdefault(b["backend"], {"backend": b["backend"], "cases": 0, "passed": 0, "failed": 0,
                                                  "refused": 0, "seconds": 0.0, "worst_ratio": {}, "findings": {},
                                                  "skipped": b.get("skipped")})
            for k in ("cases", "passed", "failed", "refused"):
                m[k] += b[k]
            m["seconds"] = max(m["seconds"], b["seconds"])
            for c, r in b["worst_ratio"].items():
                m["worst_ratio"][c] = max(m["worst_ratio"].get(c, 0.0), r)
            for f in b["findings"]:
                m["findings"].setdefault(f["signature"], f)
    backends = []
    for m in by_name.values():
        m["cases_per_second"] = m["cases"] / m["seconds"] if m["seconds"] else 0.0
        m["findings"] = list(m["findings"].values())
        backends.append(m)
    return {"device": device, "workers": n_workers, "budget_s": budget,
            "failed": any(b["findings"] for b in backends), "backends": backends,
            "per_worker": summaries}
