"""`mhc-fuzz mutants`: fuzz every planted-bug backend and print the kill table.

A mutant is killed when the fuzzer reports any failure for it; the table also shows the
failure kind (the containment mutants must get their own kind), the time to the first
failure and the size of the minimized case. A mutant that cannot run here (its
unavailable_reason(), e.g. a bug that only shows on the GPU's large tier) is skipped with
its reason, not counted as survived. A mutant class may name the profile it is fuzzed with
(`profile = "large"`)."""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from fuzz.errors import HarnessError
from fuzz.tables import FitTable


def add_parser(sub, common):
    m = sub.add_parser("mutants", help="fuzz the planted-bug backends and print the kill table")
    common(m)
    m.add_argument("--module", default="tests.mutants", help="module defining the mutants (default tests.mutants)")
    m.add_argument("--only", default=None, help="comma-separated mutant names")
    m.add_argument("--budget", default="60s", help="time per mutant (default 60s)")
    m.add_argument("--device", choices=("cuda", "cpu"))
    m.add_argument("--profile", default="ci")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--case-timeout", type=float, default=5.0)
    m.add_argument("--shrink-budget", default="30s", metavar="DURATION",
                   help="how long a kill is shrunk (default 30s: the table measures finding, not minimizing)")
    m.add_argument("--reports", default="fuzz-out/mutant-reports", help="where the mutants' reports go")
    m.add_argument("--json", help="write the kill table as JSON")
    m.add_argument("--max-cases", type=int, default=None, metavar="N",
                   help="a mutant that survives N cases survives (with a budget long enough, a verdict "
                        "that does not depend on the machine's speed)")
    m.add_argument("--hypothesis-seed", type=int, default=None, metavar="S",
                   help="seed Hypothesis: the same cases on every run")


def run(args, console) -> int:
    from fuzz import stop
    from fuzz.check import backend_can_run
    from fuzz.engine import fuzz_backend
    from fuzz.plan import RunPlan, load_profile, load_registry, parse_budget, pick_device, plugin_path_env
    from fuzz.plan import prepare_device_env, writable_dir

    budget = parse_budget(args.budget)
    device = pick_device(args.device, console)
    prepare_device_env(device)
    plugin_path_env()                     # the mutants live in the checkout's tests/
    try:
        module = importlib.import_module(args.module)
    except ImportError as exc:
        raise HarnessError(f"--module {args.module}: cannot import: {exc}") from None
    profile = load_profile(args.profile)
    classes = module.ALL
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {c.name for c in classes}
        if unknown:
            raise HarnessError(f"--only: no mutant named {', '.join(sorted(unknown))}")
        classes = [c for c in classes if c.name in wanted]
    targets = [f"{args.module}:{c.name}" for c in classes]
    reg = load_registry(targets + list(args.plugin), console)
    reports = writable_dir(args.reports, "--reports")
    rows = []
    # one worker for every mutant (each is a plugin it loads): started once, restarted only
    # after the crash and hang mutants
    shared = RunPlan(device, budget, profile, reg, [], tuple(targets) + tuple(args.plugin), reports_dir=reports,
                     tolerances=args.tolerances, case_timeout_s=args.case_timeout)
    executor = shared.executor()
    with stop.cooperative():
        for cls in classes:
            backend = reg.get(cls.name)
            why = backend_can_run(backend, device)
            if why:
                console.print(f"mutant {cls.name}: skipped on {device}: {why}")
                rows.append(_skipped_row(cls, device, why))
                continue
            console.print(f"fuzzing mutant {cls.name} ...")
            prof = load_profile(cls.profile) if getattr(cls, "profile", None) else profile   # e.g. large
            plan = RunPlan(device, budget, prof, reg, [cls.name], tuple(targets) + tuple(args.plugin),
                           seed=args.seed, reports_dir=reports, tolerances=args.tolerances,
                           case_timeout_s=args.case_timeout, shrink_budget_s=parse_budget(args.shrink_budget, "--shrink-budget"),
                           started=time.monotonic())
            expected = frozenset(getattr(cls, "expected_signatures", ()))
            try:
                stats = fuzz_backend(cls.name, backend.capabilities, executor, budget,
                                     plan.fuzz_options(stop_on_first_failure=True, stop_when_found=expected,
                                                       max_cases=args.max_cases,
                                                       hypothesis_seed=args.hypothesis_seed))
            except BaseException:
                executor.close()
                raise
            rows.append(_row(cls, stats))
            if stats.interrupted:
                break
    executor.close()
    console.print(_table(rows, device))
    survived = [r["mutant"] for r in rows if not r["killed"] and not r["skipped"]]
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "mutants": rows}, indent=2) + "\n")
    if stop.requested():
        return 130
    if survived:
        console.print(f"[red]survived:[/] {', '.join(survived)}")
        return 1
    skipped = sum(1 for r in rows if r["skipped"])
    console.print(f"[green]all {len(rows) - skipped} mutants killed[/]"
                  + (f" ({skipped} skipped on {device}: they need what this machine lacks)" if skipped else ""))
    return 0


def _skipped_row(cls, device, why) -> dict:
    return {"mutant": cls.name, "description": cls.description, "expected_kind": str(cls.expected),
            "killed": False, "skipped": f"needs what {device} lacks: {why}", "kinds": [],
            "expected_kind_found": False, "cases": 0, "cases_to_first_failure": None, "seconds_to_first_failure": None,
            "minimized_case": None, "minimized_elements": None, "report": None, "signatures": [],
            "expected_signatures_found": False}


def _row(cls, stats) -> dict:
    from fuzz.reports import case_size
    findings = list(stats.findings.values())
    first = min(findings, key=lambda f: f.detected_after_s) if findings else None
    smallest = min(findings, key=lambda f: case_size(f.result.params)) if findings else None
    kinds = sorted({str(f.result.kind) for f in findings})
    expected_sigs = set(getattr(cls, "expected_signatures", ()))
    return {
        "mutant": cls.name, "description": cls.description, "expected_kind": str(cls.expected),
        "killed": bool(findings), "skipped": None, "kinds": kinds, "expected_kind_found": cls.expected in kinds,
        "signatures": sorted(stats.findings), "expected_signatures_found": expected_sigs <= set(stats.findings),
        "cases": stats.cases, "cases_to_first_failure": stats.first_failure_case,
        "seconds_to_first_failure": None if first is None else round(first.detected_after_s, 2),
        "minimized_case": None if smallest is None else smallest.result.params.short() + (
            f" after {len(smallest.result.history)} earlier call(s)" if smallest.result.history else ""),
        "minimized_elements": None if smallest is None else case_size(smallest.result.params)[0],
        "report": None if smallest is None or smallest.path is None else str(smallest.path),
    }


def _table(rows, device) -> FitTable:
    t = FitTable(f"mutant kill table ({device})", ("mutant", "verdict", "kind found (expected)", "first failure",
                                                   "cases", "minimized case", "elements"), keep=2)
    for r in rows:
        verdict = ("[yellow]skipped[/]" if r["skipped"] else "[green]killed[/]" if r["killed"]
                   else "[red]SURVIVED[/]")
        kinds = ",".join(r["kinds"]) or "-"
        if r["killed"] and not r["expected_kind_found"]:
            kinds += f" [yellow](expected {r['expected_kind']})[/]"
        if r["killed"] and not r["expected_signatures_found"]:
            kinds += " [yellow](not every planted bug found)[/]"
        first = "-" if r["seconds_to_first_failure"] is None else f"{r['seconds_to_first_failure']:.1f} s"
        t.add_row(r["mutant"], verdict, kinds, first, str(r["cases"]), r["minimized_case"] or "-",
                  str(r["minimized_elements"] or "-"))
    return t
