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


# ------------------------------------------------------------------ run
def cmd_run(args, console) -> int:
    from fuzz import pipeline
    return pipeline.run(args, console)


# ------------------------------------------------------------------ replay
def cmd_replay(args, console) -> int:
    if args.sanitize:
        return _replay_sanitized(args, console)
    from fuzz import replay
    return replay.run(args, console)


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
    # --in-process: the kernels must run in the process the sanitizer watches
    replay = [sys.executable, "-m", "fuzz.cli", "replay", *args.reports, "--device", args.device or "cuda",
              "--in-process"]
    for p in args.plugin:
        replay += ["--plugin", p]
    if args.backend:
        replay += ["--backend", args.backend]
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", MHC_FUZZ_POISON="off")
    every = args.sanitize == ("all",)
    runs = [("no sanitizer", replay)] if every else []
    from fuzz.replay import SANITIZERS
    runs += [(t, [tool, "--tool", t, "--error-exitcode", "3", *replay])
             for t in (SANITIZERS if every else args.sanitize)]
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
    r.add_argument("--shrink-budget", default="120s", metavar="DURATION",
                   help="how long a failure is shrunk before the search goes on with the smallest case so far "
                        "(default 120s; a hang or a crash costs a timeout or a new worker per step)")
    r.add_argument("--no-isolate", action="store_true", help="run backends in this process (no crash containment)")
    r.add_argument("--stop-on-first-failure", action="store_true")
    r.add_argument("--workers", default=None, help="N or auto: two workers per GPU (default 1)")
    r.add_argument("--no-warm-up", action="store_true",
                   help="skip the backends' warm_up() (by default it runs before the budget starts)")
    r.add_argument("--max-cases", type=int, default=None, metavar="N",
                   help="stop each backend after N cases, if the budget lasts (per worker)")
    r.add_argument("--stats-out", help=argparse.SUPPRESS)   # a shard of a sharded run: statistics for its parent

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


def main(argv=None) -> int:
    from rich.console import Console
    import fuzz
    from fuzz import stop
    # the command line's budget counts from the process's start (imports included); a Python
    # program's call, main([...]), or a second command in one process, from its own start
    if argv is not None or getattr(main, "called", False):
        fuzz.STARTED = time.monotonic()
    main.called = True
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
