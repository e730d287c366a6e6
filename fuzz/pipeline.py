"""`mhc-fuzz run`: plan -> fuzz -> write, one pipeline for a single process and a sharded run.

plan:  the options validated into a RunPlan (fuzz/plan.py).
fuzz:  the backends' warm-ups, then either this process fuzzes every backend in turn (each
       gets an equal share of what is left of the budget), or worker processes do
       (fuzz/shards.py) and their statistics are merged. Both give a RunOutcome.
write: the summary table, summary.json (or --json), junit.xml (or --junit), summary.md with
       its plot, and the exit code: 0 nothing found, 1 found, 130 interrupted.
Because a sharded run ends in the same write step, no output can be forgotten in one of them."""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import stop
from fuzz.errors import EXIT_FOUND, EXIT_INTERRUPTED, EXIT_OK, HarnessError
from fuzz.plan import RunPlan, make_plan, open_database, parse_budget, writable_dir


@dataclass
class RunOutcome:
    stats: list                                   # BackendStats, one per backend (merged over workers)
    meta: dict = field(default_factory=dict)      # device, budget, profile, seed, warm-ups, interrupted

    @property
    def interrupted(self) -> bool:
        return bool(self.meta.get("interrupted"))


def plan_run(args, console) -> RunPlan:
    from fuzz.reports import sweep_reports_dir
    plan = make_plan(backend=args.backend, budget=args.budget, device=args.device, profile=args.profile,
                     plugins=args.plugin, console=console, seed=args.seed, db_spec=args.db,
                     tolerances=args.tolerances, case_timeout_s=args.case_timeout,
                     shrink_budget_s=parse_budget(args.shrink_budget, "--shrink-budget"), isolate=not args.no_isolate,
                     stop_on_first_failure=args.stop_on_first_failure, warm_up=not args.no_warm_up,
                     workers=None if args.workers in (None, "1") else args.workers, argv=sys.argv[1:],
                     max_cases=args.max_cases,
                     quiet_registry=args.workers not in (None, "1"))
    plan.out_dir = writable_dir(args.out, "--out")
    plan.reports_dir = writable_dir(args.reports, "--reports")
    plan.junit = Path(args.junit) if args.junit else plan.out_dir / "junit.xml"
    plan.json = Path(args.json) if args.json else plan.out_dir / "summary.json"
    for path, flag in ((plan.junit, "--junit"), (plan.json, "--json")):
        writable_dir(path.parent, flag)
    open_database(plan.db_spec)           # a wrong --db fails here, before any work
    stale = sweep_reports_dir(plan.reports_dir)
    if stale:
        console.print(f"removed {stale} unfinished report file(s) left in {plan.reports_dir} by a killed run")
    return plan


def fuzz_run(plan: RunPlan, console, stats_out: Path | None = None) -> RunOutcome:
    from fuzz.check import backend_can_run
    from fuzz.engine import BackendStats
    meta = {"device": plan.device, "budget_s": plan.budget_s, "profile": plan.profile.name, "seed": plan.seed,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "argv": plan.argv,
            "workers": 1, "interrupted": False}
    if plan.device == "cuda":
        import torch
        meta["gpu"] = torch.cuda.get_device_name()
    skipped, runnable = [], []
    for name in plan.backends:
        why = backend_can_run(plan.registry.get(name), plan.device)
        if why:
            skipped.append(BackendStats(name, plan.device, skipped=why))
            console.print(f"[yellow]skip[/] {name}: {why}")
        else:
            runnable.append(name)
    try:
        if plan.warm_up:
            t0 = time.monotonic()
            meta["warm_up"] = warm_up_backends(plan.registry, runnable, console)
            plan.started += time.monotonic() - t0      # the warm-ups are not charged to the budget
        if plan.workers:
            from fuzz.shards import fuzz_sharded
            stats, workers, interrupted = fuzz_sharded(plan, runnable, console)
            meta["workers"] = workers
        else:
            stats, interrupted = _fuzz_here(plan, runnable, console)
    except KeyboardInterrupt:                  # during set-up or a warm-up: nothing ran
        stats, interrupted = [], True
    meta["interrupted"] = interrupted
    if interrupted:
        ran = {s.name for s in stats}
        stats += [BackendStats(n, plan.device, skipped="not run: the run was interrupted")
                  for n in runnable if n not in ran]
    order = {n: i for i, n in enumerate(plan.backends)}
    outcome = RunOutcome(sorted(skipped + stats, key=lambda s: order.get(s.name, 0)), meta)
    if stats_out is not None:          # a shard's full statistics, for the parent to merge
        stats_out.write_text(json.dumps({"meta": meta, "backends": [s.to_dict(samples=True) for s in outcome.stats]}))
    return outcome


def _fuzz_here(plan: RunPlan, names: list, console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from fuzz.engine import fuzz_backend
    from fuzz.executor import WorkerStartError
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    all_stats, interrupted = [], False
    with progress, stop.cooperative():
        for i, name in enumerate(names):
            share = max(0.0, plan.deadline - time.monotonic()) / (len(names) - i)
            task = progress.add_task(f"{name:>10}", total=share, info="starting")
            b0 = time.monotonic()

            def on_result(stats, res, task=task, b0=b0, share=share):
                worst = max(stats.worst.values(), default=0.0)
                progress.update(task, completed=min(share, time.monotonic() - b0),
                                info=f"{stats.cases} cases, {len(stats.findings)} findings, worst {worst:.3g}")

            def on_finding(stats, f, new):
                if new:
                    progress.console.print(f"[red]FAIL[/] {stats.name}: {f.result.kind} "
                                           f"{','.join(f.result.failing_components())} after {f.detected_after_s:.1f} s "
                                           f"({f.result.params.short()})")

            executor = plan.executor()
            try:
                stats = fuzz_backend(name, plan.registry.get(name).capabilities, executor, share,
                                     plan.fuzz_options(on_result=on_result, on_finding=on_finding))
            except WorkerStartError as exc:
                raise HarnessError(f"backend {name}: {exc}") from None
            finally:
                executor.close()
            progress.update(task, completed=share)
            all_stats.append(stats)
            if stats.interrupted or stop.requested():
                stats.interrupted = interrupted = True
                break
    return all_stats, interrupted


def warm_up_backends(reg, names, console) -> dict:
    """Each backend's optional warm_up() (e.g. compiling every kernel its cases can reach into
    a disk cache that the case workers then load from), before the time budget starts, so that
    the budget goes to cases. {name: statistics} of those that have one."""
    from fuzz.summary import format_stats
    from impls.registry import warm_up
    done = {}
    for name in names:
        backend = reg.get(name)
        if getattr(backend, "warm_up", None) is None:
            continue
        with console.status(f"warming up {name} (its warm_up(): e.g. compiling kernels ahead of time)"):
            st = warm_up(backend)
        done[name] = st
        detail = format_stats({k: v for k, v in st.items() if k not in ("seconds", "error")})
        if "error" in st:
            console.print(f"[yellow]warm-up of {name} failed[/] after {st['seconds']:.1f} s: {st['error']} "
                          "(its cases run anyway and prepare what they need themselves)")
        else:
            console.print(f"warm-up {name}: {st['seconds']:.1f} s" + (f" ({detail})" if detail else ""))
    return done


def write_outputs(plan: RunPlan, outcome: RunOutcome, console) -> int:
    from fuzz import summary
    all_stats, meta = outcome.stats, outcome.meta
    console.print(summary.table(all_stats, interrupted=outcome.interrupted))
    doc = summary.summary_dict(all_stats, meta)
    write_errors = [e for s in all_stats for e in s.write_errors]
    try:
        summary.write_json(plan.json, doc)
        summary.write_junit(plan.junit, all_stats, meta)
        page = summary.write_page(plan.out_dir, all_stats, meta)
        console.print(f"summary: {page}  reports: {plan.reports_dir}")
    except OSError as exc:
        write_errors.append(f"{plan.out_dir}: cannot write the summary: {exc.strerror or exc}")
    if write_errors:
        # nothing found is lost: every finding's case goes to stdout as JSON, one per line
        for s in all_stats:
            for f in s.findings.values():
                print(json.dumps({"backend": s.name, "kind": str(f.result.kind), "params": f.result.params.to_dict()}))
        raise HarnessError(write_errors[0] + (f" (and {len(write_errors) - 1} more)" if len(write_errors) > 1 else "")
                           + "; the findings were printed above")
    if outcome.interrupted:
        console.print("[yellow]interrupted[/]: the summary covers what ran before the stop")
        return EXIT_INTERRUPTED
    return EXIT_FOUND if doc["failed"] else EXIT_OK


def run(args, console) -> int:
    plan = plan_run(args, console)
    if args.stats_out:           # a shard of a sharded run: its parent merges and writes
        outcome = fuzz_run(plan, console, Path(args.stats_out))
        return EXIT_INTERRUPTED if outcome.interrupted else EXIT_OK
    return write_outputs(plan, fuzz_run(plan, console), console)
