"""mhc-fuzz: the command line.

  mhc-fuzz backends                      what is registered, and whether it can run here
  mhc-fuzz run --backend all --budget 10m   fuzz, write reports, summary, JUnit
  mhc-fuzz replay reports/<b>/<id>.json  rerun a report; exit 1 while it still fails
  mhc-fuzz check tensors.safetensors     judge backends on saved tensors (fuzz/given.py)
  mhc-fuzz reduce reports/<b>/<id>.json  shrink a failing case to a small tensor-backed report

Errors in what the harness is given (files, flags, plugins) print one line and exit 2;
--debug shows the traceback."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_USAGE, HarnessError  # noqa: F401  (re-exported)


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", str(text))
    if not m:
        raise HarnessError(f"--budget {text!r}: expected a duration like 90s, 10m or 1.5h")
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if seconds <= 0:
        raise HarnessError(f"--budget {text!r}: must be more than zero")
    if seconds > 7 * 24 * 3600:
        raise HarnessError(f"--budget {text!r}: more than a week; split the run")
    return seconds


def pick_device(requested: str | None, console) -> str:
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is visible on this machine")
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    console.print("[yellow]notice:[/] no CUDA device: running on the CPU (small shapes; Triton interpreted)")
    return "cpu"


def _prepare_cpu_env(device: str):
    # Triton kernels can only run interpreted on the CPU; it must be set before they are imported.
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _registry(plugins, console, quiet=False):
    from impls.registry import default_registry
    plugins = list(dict.fromkeys(plugins))     # the same target twice is one plugin
    if plugins and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())        # as `python -m` would: tests.mutants:... from a checkout
    reg = default_registry(plugins)
    if not quiet:
        for source, msg in reg.errors.items():
            console.print(f"[red]backend error:[/] {msg}")
    for target in plugins:
        if f"--plugin {target}" in reg.errors:
            raise HarnessError(reg.errors[f"--plugin {target}"])
    return reg


# ------------------------------------------------------------------ backends
def cmd_backends(args, console) -> int:
    from fuzz.tables import FitTable
    from impls.registry import unavailable_reason
    _prepare_cpu_env("cpu" if not _cuda() else "cuda")
    reg = _registry(args.plugin, console, quiet=True)
    if args.json:
        doc = {"backends": [{"name": n, "source": reg.sources[n], "unavailable": unavailable_reason(b),
                             "capabilities": b.capabilities.describe()} for n, b in reg.backends.items()],
               "errors": reg.errors}
        text = json.dumps(doc, indent=2) + "\n"
        if args.json == "-":            # --json alone: the list on stdout, nothing else there
            sys.stdout.write(text)
            return EXIT_OK
        Path(args.json).write_text(text)
    t = FitTable("registered backends", ("backend", "source", "status", "devices", "x dtypes", "n", "D", "max T",
                                         "deterministic", "GEMM"), keep=3)
    for name, b in reg.backends.items():
        c = b.capabilities
        why = unavailable_reason(b)
        status = "[green]available[/]" if not why else f"[yellow]unavailable, {why}[/]"
        d = f"multiple of {c.d_multiple}" if c.d_multiple > 1 else "any"
        if c.d_max:
            d += f", <= {c.d_max}"
        t.add_row(name, reg.sources[name], status, ",".join(c.devices), ",".join(c.x_dtypes),
                  "any" if c.n_values is None else ",".join(map(str, c.n_values)), d,
                  str(c.max_tokens or "any"), "yes" if c.deterministic else "no", c.gemm_summary())
    console.print(t)
    for source, msg in reg.errors.items():
        console.print(f"[red]error:[/] {msg}")
    return EXIT_OK


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


# ------------------------------------------------------------------ run
def cmd_run(args, console) -> int:
    from fuzz import engine, summary
    from fuzz.check import backend_can_run
    from fuzz.executor import InProcessExecutor, SubprocessExecutor, WorkerStartError
    from fuzz.profiles import ProfileError, get_profile
    from fuzz import tolerances as tolmod
    from fuzz.reports import sweep_reports_dir

    budget = parse_budget(args.budget)
    try:
        profile = get_profile(args.profile)
    except ProfileError as exc:
        raise HarnessError(str(exc)) from None
    tolmod.load(args.tolerances)          # fail early, with the file's own message
    device = pick_device(args.device, console)
    _prepare_cpu_env(device)
    if args.workers not in (None, "1", 1):
        from fuzz.shards import run_sharded
        return run_sharded(args, budget, device, console)
    reg = _registry(args.plugin, console)
    names = _select(reg, args.backend)
    out_dir = _writable_dir(args.out, "--out")
    reports_dir = _writable_dir(args.reports, "--reports")
    stale = sweep_reports_dir(reports_dir)
    if stale:
        console.print(f"removed {stale} unfinished report file(s) left in {reports_dir} by a killed run")
    try:
        db = engine.open_database(args.db)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None

    meta = {"device": device, "budget_s": budget, "profile": profile.name, "seed": args.seed,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv[1:]}
    if device == "cuda":
        import torch
        meta["gpu"] = torch.cuda.get_device_name()
    all_stats = []
    runnable = []
    for name in names:
        why = backend_can_run(reg.get(name), device)
        if why:
            st = engine.BackendStats(name, device, skipped=why)
            all_stats.append(st)
            console.print(f"[yellow]skip[/] {name}: {why}")
        else:
            runnable.append(name)
    if not args.no_warm_up:
        meta["warm_up"] = warm_up_backends(reg, runnable, console)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    t_start = time.monotonic()
    interrupted = False
    with progress:
        for i, name in enumerate(runnable):
            share = (budget - (time.monotonic() - t_start)) / (len(runnable) - i)
            task = progress.add_task(f"{name:>10}", total=share, info="starting")
            b0 = time.monotonic()

            def on_result(stats, res, task=task, b0=b0):
                worst = max(stats.worst.values(), default=0.0)
                progress.update(task, completed=min(share, time.monotonic() - b0),
                                info=f"{stats.cases} cases, {len(stats.findings)} findings, worst {worst:.3g}")

            def on_finding(stats, f, new):
                if new:
                    progress.console.print(f"[red]FAIL[/] {stats.name}: {f.result.kind} "
                                           f"{','.join(f.result.failing_components())} after {f.detected_after_s:.1f} s "
                                           f"({f.result.params.short()})")

            if args.no_isolate:
                executor = InProcessExecutor(reg, device, args.tolerances)
            else:
                executor = SubprocessExecutor(args.plugin, device, args.tolerances, args.case_timeout)
            opts = engine.FuzzOptions(device=device, chunk_examples=profile.chunk_examples,
                                      limits=profile.limits(device), seed=args.seed, database=db,
                                      reports_dir=reports_dir, plugins=tuple(args.plugin),
                                      check_determinism=profile.check_determinism,
                                      stop_on_first_failure=args.stop_on_first_failure,
                                      on_result=on_result, on_finding=on_finding)
            try:
                stats = engine.fuzz_backend(name, reg.get(name).capabilities, executor, share, opts)
            except WorkerStartError as exc:
                raise HarnessError(f"backend {name}: {exc}") from None
            finally:
                executor.close()
            progress.update(task, completed=share)
            all_stats.append(stats)
            if stats.interrupted:
                interrupted = True
                break
    console.print(summary.table(all_stats))
    meta["interrupted"] = interrupted
    doc = summary.summary_dict(all_stats, meta)
    write_errors = [e for s in all_stats for e in s.write_errors]
    try:
        summary.write_json(Path(args.json) if args.json else out_dir / "summary.json", doc)
        summary.write_junit(Path(args.junit) if args.junit else out_dir / "junit.xml", all_stats)
        page = summary.write_page(out_dir, all_stats, meta)
        console.print(f"summary: {page}  reports: {reports_dir}")
    except OSError as exc:
        write_errors.append(f"{out_dir}: cannot write the summary: {exc.strerror or exc}")
    if write_errors:
        # nothing found is lost: every finding's case goes to stdout as JSON, one per line
        for s in all_stats:
            for f in s.findings.values():
                print(json.dumps({"backend": s.name, "kind": f.result.kind, "params": f.result.params.to_dict()}))
        raise HarnessError(write_errors[0] + (f" (and {len(write_errors) - 1} more)" if len(write_errors) > 1 else "")
                           + "; the findings were printed above")
    if interrupted:
        return 130
    return EXIT_FOUND if doc["failed"] else EXIT_OK


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


def _select(reg, spec: str) -> list:
    if spec == "all":
        return reg.names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in reg.backends:
            raise HarnessError(f"--backend {n}: no such backend (registered: {', '.join(reg.names()) or 'none'})")
    return names


def _writable_dir(path: str, flag: str) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"{flag} {path}: not writable: {exc.strerror or exc}") from None
    return p


# ------------------------------------------------------------------ replay
def cmd_replay(args, console) -> int:
    if args.sanitize:
        return _replay_sanitized(args, console)
    from fuzz import replay
    return replay.run(args, console)


def _replay_sanitized(args, console) -> int:
    tool = shutil.which("compute-sanitizer")
    if not tool:
        raise HarnessError("--sanitize: compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-m", "fuzz.cli", "replay",
           *args.reports, "--device", args.device or "cuda", "--in-process"]   # the kernel in the checked process
    for p in args.plugin:
        cmd += ["--plugin", p]
    if args.backend:
        cmd += ["--backend", args.backend]
    console.print("running: " + " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc == 3:
        console.print("[red]compute-sanitizer reported memory errors[/]")
        return EXIT_FOUND
    return rc


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mhc-fuzz", description="Differential fuzzing of mHC pre backward kernels.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for harness errors")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--plugin", action="append", default=[], metavar="MODULE:ATTR",
                        help="load an extra backend (repeatable)")
        sp.add_argument("--tolerances", default=None, help="tolerances file (default: the project's tolerances.yaml)")

    b = sub.add_parser("backends", help="list registered backends and their capabilities")
    common(b)
    b.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="the list as JSON: on stdout (alone), or written to FILE besides the table")

    r = sub.add_parser("run", help="fuzz backends within a time budget")
    common(r)
    r.add_argument("--backend", default="all", help="NAME, NAME,NAME or all (default)")
    r.add_argument("--budget", default="2m", help="total time, e.g. 90s, 10m, 1h (default 2m)")
    r.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present, else cpu")
    r.add_argument("--profile", default="dev", help="dev, ci, nightly, or a YAML file")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--reports", default="reports", help="where failure reports go (default reports/)")
    r.add_argument("--out", default="fuzz-out", help="summary.json, junit.xml, summary.md, plots")
    r.add_argument("--junit", help="JUnit XML path (default OUT/junit.xml)")
    r.add_argument("--json", help="summary JSON path (default OUT/summary.json)")
    r.add_argument("--db", default=".hypothesis/mhc-fuzz",
                   help="Hypothesis example database: a directory, redis://host:port/N, or none")
    r.add_argument("--case-timeout", type=float, default=300.0, help="seconds before a case counts as hung")
    r.add_argument("--no-isolate", action="store_true", help="run backends in this process (no crash containment)")
    r.add_argument("--stop-on-first-failure", action="store_true")
    r.add_argument("--workers", default=None, help="N or auto: one worker per GPU (default 1)")
    r.add_argument("--no-warm-up", action="store_true",
                   help="skip the backends' warm_up() (by default it runs before the budget starts)")

    rp = sub.add_parser("replay", help="rerun report(s); exit 1 while any still fails")
    common(rp)
    from fuzz import given, mutants, onboard, reduce, replay
    replay.add_arguments(rp)

    mutants.add_parser(sub, common)
    onboard.add_parser(sub, common)
    given.add_parser(sub, common)
    reduce.add_parser(sub, common)
    return p


def cmd_mutants(args, console) -> int:
    from fuzz import mutants
    return mutants.run(args, console)


def cmd_onboard(args, console) -> int:
    from fuzz import onboard
    return onboard.run(args, console)


def cmd_check(args, console) -> int:
    from fuzz import given
    return given.run(args, console)


def cmd_reduce(args, console) -> int:
    from fuzz import reduce
    return reduce.run(args, console)


COMMANDS = {"backends": cmd_backends, "run": cmd_run, "replay": cmd_replay, "mutants": cmd_mutants,
            "onboard": cmd_onboard, "check": cmd_check, "reduce": cmd_reduce}


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM ends a run like Ctrl-C: partial summary, reports kept


def main(argv=None) -> int:
    import signal
    from rich.console import Console
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    console = Console(stderr=False, highlight=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args, console)
    except HarnessError as exc:
        if args.debug:
            raise
        print(f"mhc-fuzz: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:   # harness-side errors with a message of their own
        from fuzz.tolerances import ToleranceFileError
        from fuzz.reports import ReportError
        if isinstance(exc, (ToleranceFileError, ReportError, OSError)) and not args.debug:
            print(f"mhc-fuzz: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
