"""`mhc-fuzz replay REPORT...`: rerun reports, with the verdict of the run that found them.

A report is data (fuzz/reports.py): its backend comes from this machine's registry (built-ins,
entry points) and the --plugin options of the person replaying, never from the report. A
backend that is not loaded is one line with the command that loads it, and exit 2. The case
runs in a worker process (fuzz/executor.py), so a segfault or a hang is a verdict (crash,
timeout) and not the end of the harness; --in-process runs it here instead.

A report whose case needs its process (a history-dependent failure's earlier calls, a
first_call case) replays in a new worker process of its own, which makes those calls first,
whatever --in-process says. One whose context this machine cannot give (a side stream
without CUDA, another device with one GPU) is one line saying so, and exit 2."""
from __future__ import annotations

SANITIZERS = ("memcheck", "initcheck", "racecheck", "synccheck")

import argparse

from fuzz.tables import FitTable

DEFAULT_CASE_TIMEOUT_S = 300.0      # as `mhc-fuzz run`


def add_arguments(rp):
    rp.add_argument("reports", nargs="+")
    rp.add_argument("--backend", help="replay against another backend than the report's")
    rp.add_argument("--device", choices=("cuda", "cpu"))
    rp.add_argument("--in-process", action="store_true",
                    help="run the backend in this process (no containment of crashes and hangs)")
    rp.add_argument("--isolate", action="store_true", help=argparse.SUPPRESS)   # the default now (old scripts)
    rp.add_argument("--case-timeout", type=float, default=None,
                    help="seconds before the case counts as hung (default: the report's, else 300)")
    rp.add_argument("--sanitize", nargs="?", const=("memcheck",), type=sanitizer_tools, metavar="TOOL[,TOOL]",
                    help="rerun under compute-sanitizer: memcheck (default), initcheck, racecheck, synccheck, "
                         "several (comma-separated) or all")


def sanitizer_tools(text: str) -> tuple:
    """--sanitize's value: 'all' (a plain replay first, for the baseline time, then every tool)
    or tools named with commas."""
    if text == "all":
        return ("all",)
    tools = tuple(t.strip() for t in text.split(","))
    bad = [t for t in tools if t not in SANITIZERS]
    if bad or not tools:
        raise argparse.ArgumentTypeError(f"invalid choice: {', '.join(map(repr, bad)) or repr(text)} "
                                         f"(choose from {', '.join(SANITIZERS)}, or all)")
    return tools


def missing_backend(path, rep: dict, name: str, registered, command: str = "replay") -> str:
    """One line: the report's backend is not loaded here, and the command that loads it."""
    from fuzz.reports import replay_command
    known = ", ".join(registered) or "none"
    if name != rep["backend"] or not rep.get("plugins"):
        return (f"{path}: backend {name!r} is not registered here (registered: {known}); install the package "
                f"that provides it, or load it with: {replay_command(path, ['MODULE:ATTR'], command)}")
    return (f"{path}: backend {name!r} is not loaded (the run that found it loaded it with --plugin); "
            f"run: {replay_command(path, rep['plugins'], command)}")


def run(args, console) -> int:
    from fuzz.cases import CaseParams
    from fuzz.check import backend_can_run
    from fuzz.plan import cuda_available, load_registry, prepare_device_env
    from fuzz.errors import EXIT_FOUND, EXIT_OK, HarnessError
    from fuzz.given import shape_line
    from fuzz.executor import CaseLoadError, InProcessExecutor, SubprocessExecutor, WorkerStartError
    from fuzz.reports import ReportError, load_report, tensors_path
    from fuzz.sizes import too_big
    from fuzz.context import unavailable
    from fuzz.history import needs_fresh_worker, replay_in_fresh_worker

    worst = EXIT_OK
    executors = {}          # one worker per device for all the reports, replaced when it dies
    reg = None
    try:
        for path in args.reports:
            try:
                rep = load_report(path)
            except ReportError as exc:
                raise HarnessError(str(exc)) from None
            device = args.device or rep["device"]
            if device == "cuda" and not cuda_available():
                raise HarnessError(f"{path}: the report ran on cuda and no CUDA device is visible (use --device cpu)")
            prepare_device_env(device)
            reg = reg or load_registry(args.plugin, console)   # never what the report names
            name = args.backend or rep["backend"]
            if name not in reg.backends:
                raise HarnessError(missing_backend(path, rep, name, reg.names()))
            why = backend_can_run(reg.get(name), device)
            if why:
                raise HarnessError(f"{path}: backend {name} cannot run on {device}: {why}")
            params = CaseParams.from_dict(rep["params"])
            why = too_big(params, device)
            if why:
                raise HarnessError(f"{path}: {why}")
            why = unavailable(params, device)
            if why:
                raise HarnessError(f"{path}: cannot replay here: its context is unavailable: {why}")
            for earlier in dict.fromkeys(h["backend"] for h in rep.get("history") or []):
                if earlier not in reg.backends:     # its earlier calls are made by their own backends
                    raise HarnessError(missing_backend(path, rep, earlier, reg.names())
                                       .replace(f"{path}: ", f"{path}: an earlier call's ", 1))
            tensors = tensors_path(path, rep)
            timeout = args.case_timeout or rep.get("case_timeout_s") or DEFAULT_CASE_TIMEOUT_S
            if needs_fresh_worker(rep):     # earlier calls, or the first call in a process
                try:
                    res = replay_in_fresh_worker(rep, name, device, args.plugin, args.tolerances, timeout,
                                                 None if tensors is None else str(tensors))
                except (WorkerStartError, CaseLoadError) as exc:
                    raise HarnessError(f"{path}: {exc}") from None
                history = len(rep.get("history") or [])
                print_result(console, f"{path}: {res.backend} on {res.device}: {res.params.short()}, in a fresh "
                             f"process" + (f" after {history} earlier call(s)" if history else ""), res)
                if res.failed:
                    worst = EXIT_FOUND
                continue
            if device not in executors:
                executors[device] = InProcessExecutor(reg, device, args.tolerances) if args.in_process else \
                    SubprocessExecutor(args.plugin, device, args.tolerances)
            ex = executors[device]
            ex.case_timeout_s = timeout
            try:
                res = ex.run(name, params, tensors=None if tensors is None else str(tensors))
            except (WorkerStartError, CaseLoadError) as exc:
                raise HarnessError(f"{path}: {exc}") from None
            case = res.params.short() if tensors is None else \
                f"tensors {tensors.name} ({shape_line(res.params)}, layout={res.params.layout})"
            print_result(console, f"{path}: {res.backend} on {res.device}: {case}", res)
            if res.failed:
                worst = EXIT_FOUND
    finally:
        for ex in executors.values():
            ex.close()
    return worst


def verdict_table(title: str, res) -> FitTable:
    t = FitTable(title, ("component", "verdict", "max |err|", "bound at worst", "worst err/bound", "at index",
                         "NaN/Inf mism."), keep=2)
    for v in res.verdicts:
        t.add_row(v.component, "[green]pass[/]" if v.passed else "[red]FAIL[/]", f"{v.max_abs_err:.3g}",
                  f"{v.bound_at_worst:.3g}", f"{v.worst_ratio:.3g}", str(list(v.worst_index)),
                  str(v.nonfinite_mismatches) if not v.problem else v.problem)
    return t


def print_result(console, title: str, res):
    """The verdict table of one case, and one line: PASS, REFUSED or FAIL (kind) and why."""
    if res.verdicts:
        console.print(verdict_table(title, res))
    else:
        console.print(title)
    tag = {"pass": "[green]PASS[/]", "refused": "[green]REFUSED (as declared)[/]"}.get(
        res.status, f"[red]FAIL ({res.kind})[/]")
    console.print(f"{tag} {res.message}", markup=True)
