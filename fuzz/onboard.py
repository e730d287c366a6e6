"""`mhc-fuzz onboard module:attr` (or --backend NAME): a conformance run for a new backend.

The report card: contract, availability, refusal of unsupported inputs, a shape sweep
inside the declared capabilities, a short fuzz, determinism as declared, input
immutability, guard regions (no out-of-bounds writes), and a speed line against golden
and the other available backends."""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from rich.table import Table


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
    o.add_argument("--json", help="write the report card as JSON")


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


def run(args, console) -> int:
    from fuzz import engine
    from fuzz.check import backend_can_run
    from fuzz.kinds import FailureKind
    from fuzz.errors import HarnessError
    from fuzz.plan import parse_budget, pick_device
    from fuzz.plan import prepare_device_env as _prepare_cpu_env
    from fuzz.plan import writable_dir as _writable_dir
    from fuzz.executor import SubprocessExecutor
    from fuzz.profiles import get_profile
    from fuzz.summary import format_stats
    from impls.registry import default_registry, warm_up

    if bool(args.target) == bool(args.backend):
        raise HarnessError("onboard: give either module:attr or --backend NAME")
    budget = parse_budget(args.budget)
    device = pick_device(args.device, console)
    _prepare_cpu_env(device)
    plugins = list(args.plugin) + ([args.target] if args.target else [])
    reg = default_registry(plugins)
    card = []    # (check, ok, detail)

    def line(check, ok, detail=""):
        card.append({"check": check, "ok": ok, "detail": detail})

    if args.target:
        err = reg.errors.get(f"--plugin {args.target}")
        if err:
            line("contract", False, err)
            return _finish(console, card, args, None)
        name = next(n for n, src in reg.sources.items() if src == f"--plugin {args.target}")
    else:
        if args.backend not in reg.backends:
            raise HarnessError(f"--backend {args.backend}: no such backend (registered: {', '.join(reg.names())})")
        name = args.backend
    b = reg.get(name)
    caps = b.capabilities
    line("contract", True, f"name {name!r}, backward takes the 12 arguments, capabilities valid: "
         f"devices {caps.devices}, dtypes {caps.x_dtypes}, n {caps.n_values or 'any'}, "
         f"D multiple of {caps.d_multiple}{', <= %d' % caps.d_max if caps.d_max else ''}, "
         f"GEMM {caps.gemm_summary()}, {'deterministic' if caps.deterministic else 'not deterministic'}")
    why = backend_can_run(b, device)
    line("available", why is None, why or f"runs on {device}")
    if why:
        return _finish(console, card, args, name)
    warmed = warm_up(b)
    if warmed is not None:
        line("warm-up", "error" not in warmed, format_stats(warmed))

    executor = SubprocessExecutor(plugins, device, args.tolerances, 300.0)
    try:
        refusals = [(lim, executor.run(name, p)) for lim, p in refusal_cases(caps)]
        bad = [f"{lim}: {r.kind} {r.message[:120]}" for lim, r in refusals if r.status != "refused"]
        line("refuses unsupported inputs", not bad,
             "; ".join(bad) or (f"{len(refusals)} out-of-capability inputs refused" if refusals
                                else "declares no limits (nothing to refuse)"))

        sweep = [executor.run(name, p) for p in sweep_cases(caps, device)]
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
            line(check, not hit, hit[0].message[:150] if hit else ("checked on every sweep case" if kind != FailureKind.NONDETERMINISTIC
                 or caps.deterministic else "declares non-deterministic: not required"))

        profile = get_profile(args.profile)
        opts = engine.FuzzOptions(device=device, chunk_examples=profile.chunk_examples, limits=profile.limits(device),
                                  seed=args.seed, reports_dir=_writable_dir(args.reports, "--reports"),
                                  plugins=tuple(plugins))
        stats = engine.fuzz_backend(name, caps, executor, budget, opts)
        line("short fuzz", not stats.findings,
             f"{stats.cases} cases in {stats.seconds:.0f} s, worst error/bound {max(stats.worst.values(), default=0):.3g}"
             + "".join(f"; {f.result.kind} {','.join(f.result.failing_components())} -> {f.path}"
                       for f in stats.findings.values()))
    finally:
        executor.close()
    line("speed", True, _speed(reg, name, device))
    return _finish(console, card, args, name)


def _speed(reg, name, device) -> str:
    """Median backward time at one representative shape, for this backend and the others."""
    import torch
    from fuzz.cases import CaseParams, make_inputs
    from fuzz.check import backend_can_run
    p = CaseParams(2, 2048, 4, 2560, "bf16") if device == "cuda" else CaseParams(1, 16, 4, 64, "bf16")
    inp = make_inputs(p, device)
    times = {}
    for other, b in reg.backends.items():
        if backend_can_run(b, device) or b.capabilities.refusal(device=device, x_dtype="bf16", n=p.n, D=p.D, T=p.T):
            continue
        try:
            samples = []
            for _ in range(5):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                b.backward(*inp.backward_args())
                if device == "cuda":
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - t0)
            times[other] = sorted(samples)[len(samples) // 2]
        except Exception as exc:
            times[other] = f"error: {type(exc).__name__}"
    ref = times.get("golden")
    parts = []
    for other, t in times.items():
        if isinstance(t, str):
            parts.append(f"{other} {t}")
        else:
            rel = f" ({ref / t:.2f}x golden)" if isinstance(ref, float) and other != "golden" else ""
            parts.append(f"{other} {t * 1e3:.2f} ms{rel}")
    return f"T={p.T} n={p.n} D={p.D} bf16 on {device}: " + ", ".join(parts)


def _finish(console, card, args, name) -> int:
    t = Table(title=f"onboarding report card: {name or args.target}")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail")
    for c in card:
        t.add_row(c["check"], "[green]PASS[/]" if c["ok"] else "[red]FAIL[/]", c["detail"])
    console.print(t)
    ok = all(c["ok"] for c in card)
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": name, "passed": ok, "checks": card}, indent=2) + "\n")
    console.print("[green]onboarding passed[/]" if ok else "[red]onboarding failed[/]")
    return 0 if ok else 1
