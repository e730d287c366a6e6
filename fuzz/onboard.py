"""`mhc-fuzz onboard module:attr` (or --backend NAME): a conformance run for a new backend.

The report card: contract, availability, the backend's warm_up(), refusal of unsupported
inputs, a shape sweep inside the declared capabilities, a short fuzz, determinism as
declared, input immutability, guard regions (no out-of-bounds writes), and its speed beside
golden, torch.compile(golden), the other built-in backends and the memory roofline
(fuzz/speed.py). build_card() runs the checks; fuzz/card.py shows the result (terminal, CI
log, Markdown); fuzz/pytest_onboard.py makes each check a test item of a backend's own suite."""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

# Every line a card can have, in order ("warm-up" only for a backend with a warm_up()).
CHECKS = ("contract", "available", "warm-up", "refuses unsupported inputs", "shape sweep within tolerance",
          "inputs left unchanged", "no writes outside its buffers", "determinism as declared",
          "stays within its claims", "short fuzz", "speed")


def add_parser(sub, common):
    o = sub.add_parser("onboard", help="conformance report card for a new backend")
    common(o)
    o.add_argument("target", nargs="?", help="module:attr of the backend (or use --backend)")
    o.add_argument("--backend", help="an already registered backend")
    o.add_argument("--device", choices=("cuda", "cpu"))
    o.add_argument("--budget", default="60s", help="time for the short fuzz (default 60s)")
    o.add_argument("--profile", default="ci")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--reports", default="fuzz-out/onboard-reports")
    o.add_argument("--max-cases", type=int, default=None, metavar="N",
                   help="end the short fuzz after N cases, if the budget lasts (a fixed amount of work)")
    o.add_argument("--hypothesis-seed", type=int, default=None, metavar="S",
                   help="seed Hypothesis: the short fuzz tries the same cases on every run")
    o.add_argument("--json", help="write the report card as JSON")
    o.add_argument("--markdown", metavar="FILE",
                   help="write the report card as a Markdown page for a pull request (plot beside it)")


def sweep_cases(caps, device: str):
    """A fixed, small sweep inside the capabilities: every n and dtype, tails, T=1, layouts."""
    from fuzz.cases import LAYOUTS, CaseParams
    m = caps.d_multiple
    top = min(caps.d_max or 4096, 4096 if device == "cuda" else 256)
    ds = sorted({m, 3 * m, (top // m) * m} | ({m * (128 // m + 1)} if m * (128 // m + 1) <= top else set()))
    ns = list(caps.n_values or (1, 2, 4, 8))
    tokens = [(1, 1), (2, 3), (1, 129)] if device == "cuda" else [(1, 1), (2, 3), (1, 17)]
    if caps.max_tokens:
        tokens = [t for t in tokens if t[0] * t[1] <= caps.max_tokens]
    for i, (n, D, (B, S), dt) in enumerate(itertools.product(ns, ds, tokens, caps.x_dtypes)):
        if device == "cpu" and B * S * n * D > 1 << 14:
            continue
        yield CaseParams(B, S, n, D, dt, seed=i, layout=LAYOUTS[i % len(LAYOUTS)], zero_tokens=int(i % 5 == 0))


def refusal_cases(caps):
    """One small case just outside each declared limit (the first two for n, one per other limit)."""
    from fuzz.cases import CaseParams
    from fuzz.strategies import outside_limits
    seen, out = {}, []
    for limit, fields in outside_limits(caps):
        seen[limit] = seen.get(limit, 0) + 1
        if seen[limit] <= (2 if limit in ("n", "x dtype") else 1):
            out.append((limit, CaseParams(**fields)))
    return out


def build_card(args, console) -> dict:
    """Run every check on the backend named by args (the onboard command's arguments) and
    return the card (see fuzz/card.py). Bad arguments raise HarnessError."""
    from fuzz import card as cardmod
    from fuzz import engine, speed
    from fuzz.check import backend_can_run
    from fuzz.errors import HarnessError
    from fuzz.executor import SubprocessExecutor
    from fuzz.kinds import FailureKind
    from fuzz.plan import load_profile, parse_budget, pick_device, plugin_path_env, prepare_device_env, writable_dir
    from fuzz.reports import build_report, case_size, environment, write_report
    from fuzz.summary import format_stats
    from impls.registry import default_registry, warm_up

    if bool(args.target) == bool(args.backend):
        raise HarnessError("onboard: give either module:attr or --backend NAME")
    budget = parse_budget(args.budget)
    profile = load_profile(args.profile)
    device = pick_device(args.device, console)
    prepare_device_env(device)
    reports_dir = writable_dir(args.reports, "--reports")
    plugins = list(dict.fromkeys(list(args.plugin) + ([args.target] if args.target else [])))
    worker_env = plugin_path_env() if plugins else {}     # module:attr from the working directory too
    reg = default_registry(plugins)
    card = {"backend": None, "target": args.target or args.backend, "device": device, "gpu": None,
            "command": "mhc-fuzz onboard " + (args.target or f"--backend {args.backend}"),
            "declared": {}, "checks": [], "findings": [], "speed": None, "_plot": []}
    if device == "cuda":
        import torch
        card["gpu"] = torch.cuda.get_device_name()

    def line(check, ok, detail=""):
        card["checks"].append({"check": check, "ok": ok, "detail": detail})

    def done():
        card["passed"] = all(c["ok"] for c in card["checks"])
        return card

    if args.target:
        # An installed package's entry point and the same module:attr load one backend.
        source = f"--plugin {args.target}"
        if source in reg.errors:
            line("contract", False, reg.errors[source])
            return done()
        name = reg.loaded[source]
    else:
        if args.backend not in reg.backends:
            raise HarnessError(f"--backend {args.backend}: no such backend (registered: {', '.join(reg.names())})")
        name = args.backend
    b = reg.get(name)
    caps = b.capabilities
    card["backend"] = name
    card["declared"] = cardmod.declared(caps)
    line("contract", True, f"name {name!r}, backward takes the 12 arguments, capabilities valid"
         + (f"; declares {', '.join(card['declared'])}" if card["declared"] else "; declares nothing beyond the defaults"))
    why = backend_can_run(b, device)
    line("available", why is None, why or f"runs on {device}")
    if why:
        return done()
    if getattr(b, "warm_up", None) is not None:
        with console.status(f"onboarding {name}: its warm_up()"):
            warmed = warm_up(b)
        line("warm-up", "error" not in warmed, format_stats(warmed))

    env = environment(device)
    findings = {}      # signature -> [checks that saw it, its smallest case, its report]

    def found(check, res, path=None):
        if path is None:       # the fuzz writes its own; one file per signature keeps the smallest case
            try:
                path, _ = write_report(build_report(res, plugins=plugins, env=env), reports_dir)
            except OSError:
                path = None
        f = findings.setdefault(res.signature(), [[], res, path])
        if check not in f[0]:
            f[0].append(check)
        if case_size(res.params) < case_size(f[1].params):
            f[1] = res
        f[2] = f[2] or path

    executor = SubprocessExecutor(plugins, device, args.tolerances, 300.0, env=worker_env)
    try:
        with console.status(f"onboarding {name}: inputs outside its capabilities"):
            refusals = [(lim, executor.run(name, p)) for lim, p in refusal_cases(caps)]
        bad = [f"{lim}: {r.kind} {r.message[:120]}" for lim, r in refusals if r.status != "refused"]
        line("refuses unsupported inputs", not bad,
             "; ".join(bad) or (f"{len(refusals)} out-of-capability inputs refused" if refusals
                                else "declares no limits (nothing to refuse)"))
        for _, r in refusals:
            if r.failed:
                found("refuses unsupported inputs", r)

        cases = list(sweep_cases(caps, device))
        with console.status(f"onboarding {name}: shape sweep ({len(cases)} cases)"):
            sweep = [executor.run(name, p) for p in cases]
        sweep_stats = engine.BackendStats(f"{name}, shape sweep", device)
        for r in sweep:
            sweep_stats.record(r)
            if r.failed:
                found("shape sweep within tolerance", r)
        fails = [r for r in sweep if r.failed]
        line("shape sweep within tolerance", not fails,
             f"{len(sweep) - len(fails)}/{len(sweep)} cases pass, worst error/bound "
             f"{max((r.worst_ratio() for r in sweep), default=0):.3g}"
             + ("" if not fails else f"; first failure: {fails[0].params.short()}: {fails[0].kind} {fails[0].message[:150]}"))
        for kind, check in ((FailureKind.INPUT_MUTATED, "inputs left unchanged"),
                            (FailureKind.OUT_OF_BOUNDS, "no writes outside its buffers"),
                            (FailureKind.NONDETERMINISTIC, "determinism as declared"),
                            (FailureKind.ACCEPTED_UNSUPPORTED, "stays within its claims")):
            hit = [r for r in sweep + [r for _, r in refusals] if r.kind == kind]
            line(check, not hit, hit[0].message[:150] if hit else ("checked on every sweep case"
                 if kind != FailureKind.NONDETERMINISTIC or caps.deterministic
                 else "declares non-deterministic: not required"))

        opts = engine.FuzzOptions(device=device, chunk_examples=profile.chunk_examples, limits=profile.limits(device),
                                  seed=args.seed, reports_dir=reports_dir, plugins=tuple(plugins),
                                  max_cases=args.max_cases, hypothesis_seed=args.hypothesis_seed)
        with console.status(f"onboarding {name}: short fuzz ({budget:.0f} s)"):
            stats = engine.fuzz_backend(name, caps, executor, budget, opts)
        for f in stats.findings.values():
            found("short fuzz", f.result, f.path)
        line("short fuzz", not stats.findings,
             f"{stats.cases} cases in {stats.seconds:.0f} s, worst error/bound {max(stats.worst.values(), default=0):.3g}"
             + "".join(f"; {f.result.kind} {','.join(f.result.failing_components())} -> {f.path}"
                       for f in stats.findings.values()))
    finally:
        executor.close()
    card["_plot"] = [sweep_stats, dataclasses.replace(stats, name=f"{name}, short fuzz")]
    flags = "".join(f" --plugin {p}" for p in plugins)
    card["findings"] = [{"checks": checks, "kind": r.kind, "components": r.failing_components(),
                         "case": r.params.short(), "message": r.message.splitlines()[0][:300] if r.message else "",
                         "report": str(path) if path else None,
                         "replay": f"mhc-fuzz replay {path}{flags}" if path else None}
                        for checks, r, path in findings.values()]

    # Timing runs in this process: a backend that crashed or hung above is not timed.
    if any(r.kind in (FailureKind.CRASH, FailureKind.TIMEOUT) for _, r, _ in findings.values()):
        card["speed"] = {"measured": False, "why": "not measured: the backend crashed or hung in the checks above"}
    else:
        with console.status(f"onboarding {name}: timing it beside the built-in backends"):
            card["speed"] = speed.section(reg, name, device)
    line("speed", True, speed.summary(card["speed"]))
    return done()


def run(args, console) -> int:
    from fuzz import card as cardmod
    card = build_card(args, console)
    cardmod.print_card(console, card)
    write(card, args.json, args.markdown)
    return 0 if card["passed"] else 1


def write(card, json_path=None, markdown_path=None) -> None:
    from fuzz import card as cardmod
    if json_path:
        doc = {k: v for k, v in card.items() if not k.startswith("_")}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if markdown_path:
        cardmod.write_markdown(card, markdown_path)
