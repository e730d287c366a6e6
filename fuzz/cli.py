"""mhc-fuzz: the command line.

  mhc-fuzz backends                      what is registered, and whether it can run here
  mhc-fuzz run --backend all --budget 10m   fuzz, write reports, summary, JUnit
  mhc-fuzz replay reports/<b>/<id>.json  rerun a report; exit 1 while it still fails

Errors in what the harness is given (files, flags, plugins) print one line and exit 2;
--debug shows the traceback."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_USAGE, HarnessError  # noqa: F401  (re-exported)
from fuzz.plan import cuda_available as _cuda
from fuzz.plan import load_registry as _registry
from fuzz.plan import prepare_device_env as _prepare_cpu_env


# ------------------------------------------------------------------ backends
def cmd_backends(args, console) -> int:
    from rich.table import Table
    from impls.registry import unavailable_reason
    _prepare_cpu_env("cpu" if not _cuda() else "cuda")
    reg = _registry(args.plugin, console, quiet=True)
    t = Table(title="registered backends")
    for col in ("backend", "source", "status", "devices", "x dtypes", "n", "D", "max T", "deterministic", "GEMM"):
        t.add_column(col)
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
    if args.json:
        doc = {"backends": [{"name": n, "source": reg.sources[n], "unavailable": unavailable_reason(b),
                             "capabilities": b.capabilities.describe()} for n, b in reg.backends.items()],
               "errors": reg.errors}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return EXIT_OK


# ------------------------------------------------------------------ run
def cmd_run(args, console) -> int:
    from fuzz import pipeline
    return pipeline.run(args, console)


# ------------------------------------------------------------------ replay
def cmd_replay(args, console) -> int:
    from fuzz.reports import ReportError, load_report
    from fuzz.cases import CaseParams
    from fuzz.check import backend_can_run, run_case
    from fuzz import tolerances as tolmod
    if args.sanitize:
        return _replay_sanitized(args, console)
    worst = EXIT_OK
    for path in args.reports:
        try:
            rep = load_report(path)
        except ReportError as exc:
            raise HarnessError(str(exc)) from None
        device = args.device or rep["device"]
        if device == "cuda" and not _cuda():
            raise HarnessError(f"{path}: the report ran on cuda and no CUDA device is visible (use --device cpu)")
        _prepare_cpu_env(device)
        reg = _registry(list(rep.get("plugins") or []) + list(args.plugin), console)
        name = args.backend or rep["backend"]
        if name not in reg.backends:
            raise HarnessError(f"{path}: backend {name!r} is not registered here (plugins: {rep.get('plugins')})")
        b = reg.get(name)
        why = backend_can_run(b, device)
        if why:
            raise HarnessError(f"{path}: backend {name} cannot run on {device}: {why}")
        params = CaseParams.from_dict(rep["params"])
        if args.isolate:
            from fuzz.executor import SubprocessExecutor
            ex = SubprocessExecutor(list(rep.get("plugins") or []) + list(args.plugin), device, args.tolerances,
                                    args.case_timeout)
            res = ex.run(name, params)
            ex.close()
        else:
            res = run_case(b, params, device, tolmod.load(args.tolerances))
        _print_result(console, path, res)
        if res.failed:
            worst = EXIT_FOUND
    return worst


def _print_result(console, path, res):
    from rich.table import Table
    t = Table(title=f"{path}: {res.backend} on {res.device}: {res.params.short()}")
    for col in ("component", "verdict", "max |err|", "bound at worst", "worst err/bound", "at index", "NaN/Inf mism."):
        t.add_column(col)
    for v in res.verdicts:
        t.add_row(v.component, "[green]pass[/]" if v.passed else "[red]FAIL[/]", f"{v.max_abs_err:.3g}",
                  f"{v.bound_at_worst:.3g}", f"{v.worst_ratio:.3g}", str(list(v.worst_index)),
                  str(v.nonfinite_mismatches) if not v.problem else v.problem)
    console.print(t)
    tag = {"pass": "[green]PASS[/]", "refused": "[green]REFUSED (as declared)[/]"}.get(res.status, f"[red]FAIL ({res.kind})[/]")
    console.print(f"{tag} {res.message}")


SANITIZERS = ("memcheck", "initcheck", "racecheck", "synccheck")


def _replay_sanitized(args, console) -> int:
    """Replay under compute-sanitizer, one tool after the other (`all`: every tool, after a
    plain replay that times the baseline). Exit 1 when a tool reports errors; a case that still
    fails its values is shown in its table but is not the sanitizer's finding. The replay runs
    without torch's caching allocator (every allocation its own cudaMalloc, so that memcheck
    sees overruns and initcheck sees unwritten memory) and without the memory fill, which
    would count as initialisation."""
    tool = shutil.which("compute-sanitizer")
    if not tool:
        raise HarnessError("--sanitize: compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
    replay = [sys.executable, "-m", "fuzz.cli", "replay", *args.reports, "--device", args.device or "cuda"]
    for p in args.plugin:
        replay += ["--plugin", p]
    if args.backend:
        replay += ["--backend", args.backend]
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", MHC_FUZZ_POISON="off")
    runs = [("no sanitizer", replay)] if args.sanitize == "all" else []
    runs += [(t, [tool, "--tool", t, "--error-exitcode", "3", *replay])
             for t in (SANITIZERS if args.sanitize == "all" else (args.sanitize,))]
    worst, times = EXIT_OK, []
    for name, cmd in runs:
        console.print("running: " + " ".join(cmd))
        t0 = time.monotonic()
        rc = subprocess.call(cmd, env=env)
        times.append(f"{name} {time.monotonic() - t0:.1f} s")
        if rc == 3:
            console.print(f"[red]compute-sanitizer {name} reported errors[/]")
            worst = EXIT_FOUND
        elif rc not in (EXIT_OK, EXIT_FOUND):
            console.print(f"[red]{name}: the replay exited with {rc}[/]")
            worst = worst if worst == EXIT_FOUND else rc
    console.print("wall time: " + ", ".join(times))
    return worst


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
    b.add_argument("--json", help="also write the list as JSON")

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
    r.add_argument("--max-cases", type=int, default=None, metavar="N",
                   help="stop each backend after N cases, if the budget lasts (per worker)")
    r.add_argument("--stats-out", help=argparse.SUPPRESS)   # a shard of a sharded run: statistics for its parent

    rp = sub.add_parser("replay", help="rerun report(s); exit 1 while any still fails")
    common(rp)
    rp.add_argument("reports", nargs="+")
    rp.add_argument("--backend", help="replay against another backend than the report's")
    rp.add_argument("--device", choices=("cuda", "cpu"))
    rp.add_argument("--isolate", action="store_true", help="run in a worker process (survives crashes)")
    rp.add_argument("--case-timeout", type=float, default=300.0)
    rp.add_argument("--sanitize", nargs="?", const="memcheck", choices=SANITIZERS + ("all",), metavar="TOOL",
                    help="rerun under compute-sanitizer: memcheck (default), initcheck, racecheck, synccheck or all")

    from fuzz import mutants, onboard
    mutants.add_parser(sub, common)
    onboard.add_parser(sub, common)
    return p


def cmd_mutants(args, console) -> int:
    from fuzz import mutants
    return mutants.run(args, console)


def cmd_onboard(args, console) -> int:
    from fuzz import onboard
    return onboard.run(args, console)


COMMANDS = {"backends": cmd_backends, "run": cmd_run, "replay": cmd_replay, "mutants": cmd_mutants,
            "onboard": cmd_onboard}


def main(argv=None) -> int:
    from rich.console import Console
    from fuzz import stop
    console = Console(stderr=False, highlight=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM ends a run like Ctrl-C: partial summary marked interrupted, reports kept, exit 130
    stop.install(shard=bool(getattr(args, "stats_out", None)))
    handler = COMMANDS[args.command]
    try:
        return handler(args, console)
    except KeyboardInterrupt:      # stopped before a run could write a summary
        print("mhc-fuzz: interrupted", file=sys.stderr)
        return 130
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
