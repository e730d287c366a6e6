"""`mhc-fuzz mutants`: fuzz every planted-bug backend and print the kill table.

A mutant is killed when the fuzzer reports any failure for it; the table also shows the
failure kind (the containment mutants must get their own kind), the time to the first
failure and the size of the minimized case."""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

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
    m.add_argument("--reports", default="fuzz-out/mutant-reports", help="where the mutants' reports go")
    m.add_argument("--json", help="write the kill table as JSON")


def run(args, console) -> int:
    from fuzz import engine
    from fuzz.cli import HarnessError, _prepare_cpu_env, _registry, _writable_dir, parse_budget, pick_device
    from fuzz.executor import SubprocessExecutor
    from fuzz.profiles import ProfileError, get_profile

    budget = parse_budget(args.budget)
    device = pick_device(args.device, console)
    _prepare_cpu_env(device)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())   # the mutants live in the checkout's tests/
    try:
        module = importlib.import_module(args.module)
        profile = get_profile(args.profile)
    except ImportError as exc:
        raise HarnessError(f"--module {args.module}: cannot import: {exc}") from None
    except ProfileError as exc:
        raise HarnessError(str(exc)) from None
    classes = module.ALL
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {c.name for c in classes}
        if unknown:
            raise HarnessError(f"--only: no mutant named {', '.join(sorted(unknown))}")
        classes = [c for c in classes if c.name in wanted]
    targets = [f"{args.module}:{c.name}" for c in classes]
    reg = _registry(targets + list(args.plugin), console)
    reports = _writable_dir(args.reports, "--reports")
    executor = SubprocessExecutor(targets + list(args.plugin), device, args.tolerances, args.case_timeout,
                                  env={"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                                                  os.environ.get("PYTHONPATH")]))})
    rows = []
    try:
        for cls in classes:
            console.print(f"fuzzing mutant {cls.name} ...")
            opts = engine.FuzzOptions(device=device, chunk_examples=profile.chunk_examples,
                                      limits=profile.limits(device), seed=args.seed, database=None,
                                      reports_dir=reports, plugins=(f"{args.module}:{cls.name}",),   # its own only
                                      stop_on_first_failure=True)
            stats = engine.fuzz_backend(cls.name, reg.get(cls.name).capabilities, executor, budget, opts)
            rows.append(_row(cls, stats))
    finally:
        executor.close()
    console.print(_table(rows, device))
    survived = [r["mutant"] for r in rows if not r["killed"]]
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "mutants": rows}, indent=2) + "\n")
    if survived:
        console.print(f"[red]survived:[/] {', '.join(survived)}")
        return 1
    console.print(f"[green]all {len(rows)} mutants killed[/]")
    return 0


def _row(cls, stats) -> dict:
    from fuzz.reports import case_size
    findings = list(stats.findings.values())
    first = min(findings, key=lambda f: f.detected_after_s) if findings else None
    smallest = min(findings, key=lambda f: case_size(f.result.params)) if findings else None
    kinds = sorted({f.result.kind for f in findings})
    return {
        "mutant": cls.name, "description": cls.description, "expected_kind": cls.expected,
        "killed": bool(findings), "kinds": kinds, "expected_kind_found": cls.expected in kinds,
        "cases": stats.cases, "seconds_to_first_failure": None if first is None else round(first.detected_after_s, 2),
        "minimized_case": None if smallest is None else smallest.result.params.short(),
        "minimized_elements": None if smallest is None else case_size(smallest.result.params)[0],
        "report": None if smallest is None or smallest.path is None else str(smallest.path),
    }


def _table(rows, device) -> FitTable:
    t = FitTable(f"mutant kill table ({device})", ("mutant", "verdict", "kind found (expected)", "first failure",
                                                   "cases", "minimized case", "elements"), keep=2)
    for r in rows:
        verdict = "[green]killed[/]" if r["killed"] else "[red]SURVIVED[/]"
        kinds = ",".join(r["kinds"]) or "-"
        if r["killed"] and not r["expected_kind_found"]:
            kinds += f" [yellow](expected {r['expected_kind']})[/]"
        first = "-" if r["seconds_to_first_failure"] is None else f"{r['seconds_to_first_failure']:.1f} s"
        t.add_row(r["mutant"], verdict, kinds, first, str(r["cases"]), r["minimized_case"] or "-",
                  str(r["minimized_elements"] or "-"))
    return t
