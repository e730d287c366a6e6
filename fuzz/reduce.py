"""`mhc-fuzz reduce FILE`: shrink a real failing case to a small failing subset of it, and
write that as a report whose tensors are stored beside it (safetensors).

FILE is a report (generated or itself reduced) or given tensors (fuzz/given.py, with
--backend). Delta debugging (ddmin) runs over the tokens: the batch folded into one
sequence where the failure allows it, else batch entries, then sequence positions. Then,
where the saved activations are the forward of the inputs (always, for a generated case),
over the hidden columns D, in groups of the backend's D multiple and only to sizes it
declares, with the activations recomputed for the smaller inputs (n is structural and kept).
Last, whole incoming gradients are zeroed and gamma is dropped where the case still fails.
A candidate is kept when it fails the same way: the same failure kind, and (for a kind
that names components) at least one of the same failing components."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from impls.golden import mhc_forward
from impls.schema import BACKWARD_ARGS

TOKEN_ARGS = ("x", "inv_rms", "h_mix", "h_pre", "h_post", "dh_in", "dh_post", "dh_res")   # [B, S, ...]
GRADIENTS = ("dh_in", "dh_post", "dh_res")


def ddmin(items: list, fails, budget) -> list:
    """Zeller's delta debugging: a small sublist of `items` for which fails(sublist) holds
    (fails(items) is known to hold). Stops early when budget() is False."""
    granularity = 2
    while len(items) >= 2 and budget():
        size = -(-len(items) // granularity)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        for i, chunk in enumerate(chunks):
            if fails(chunk):
                items, granularity = chunk, 2
                break
            rest = [x for j, c in enumerate(chunks) if j != i for x in c]
            if len(chunks) > 2 and fails(rest):
                items, granularity = rest, max(granularity - 1, 2)
                break
        else:
            if granularity >= len(items):
                break
            granularity = min(len(items), 2 * granularity)
    return items


def with_forward(t: dict) -> dict:
    """The tensors with their activations recomputed: the float64 forward of their inputs,
    rounded to fp32 (as a generated case's, fuzz/cases.py)."""
    f64 = lambda v: None if v is None else v.double()  # noqa: E731
    with torch.no_grad():
        _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(f64(t["x"]), f64(t["phi"]), f64(t["alpha"]),
                                                          f64(t["bias"]), f64(t.get("gamma")))
    return dict(t, inv_rms=inv_rms.float(), h_mix=h_mix.float(), h_pre=h_pre.float(), h_post=h_post.float())


def take_tokens(t: dict, batches=None, positions=None) -> dict:
    out = dict(t)
    for k in TOKEN_ARGS:
        v = t[k]
        if batches is not None:
            v = v[torch.tensor(batches)]
        if positions is not None:
            v = v[:, torch.tensor(positions)]
        out[k] = v.contiguous()
    return out


def fold_batch(t: dict) -> dict:
    """[B, S, ...] -> [1, B*S, ...]: the same tokens as one sequence."""
    return {k: (v.reshape(1, v.shape[0] * v.shape[1], *v.shape[2:]) if k in TOKEN_ARGS else v)
            for k, v in t.items()}


def take_columns(t: dict, columns) -> dict:
    """The hidden columns `columns` of every stream (x, dh_in, gamma, and phi's matching
    columns), with the activations recomputed."""
    n, D = t["x"].shape[2], t["x"].shape[3]
    idx = torch.tensor(columns)
    phi_cols = torch.cat([i * D + idx for i in range(n)])
    out = dict(t, x=t["x"][..., idx].contiguous(), dh_in=t["dh_in"][..., idx].contiguous(),
               phi=t["phi"][:, phi_cols].contiguous())
    if t.get("gamma") is not None:
        out["gamma"] = t["gamma"][:, idx].contiguous()
    return with_forward(out)


def same_failure(res, ref) -> bool:
    if not res.failed or res.kind != ref.kind:
        return False
    want = set(ref.failing_components())
    return not want or bool(want & set(res.failing_components()))


class Reducer:
    """Runs candidates (through an executor: a worker process by default) and keeps the
    smallest that fails the same way."""

    def __init__(self, executor, backend, device: str, layout: str = "contiguous", max_tests: int = 400,
                 context: dict | None = None):
        self.ex, self.backend, self.device, self.layout = executor, backend, device, layout
        # what the tensors do not say about the case: the other inputs' layouts, the call's context
        self.context = dict(context or {})
        self.max_tests, self.tests = max_tests, 0
        self.ref = None                 # the failure to keep
        self.best = None                # (tensors, result) of the smallest failing candidate
        self._dir = tempfile.TemporaryDirectory(prefix="mhc-reduce-")

    def params(self, t: dict):
        from fuzz.given import describe
        return dataclasses.replace(describe(t), layout=self.layout, **self.context)

    def run(self, t: dict):
        from safetensors.torch import save_file
        self.tests += 1
        path = Path(self._dir.name) / f"candidate-{self.tests}.safetensors"
        save_file({k: v.contiguous() for k, v in t.items() if v is not None}, str(path))
        try:
            return self.ex.run(self.backend.name, self.params(t), tensors=str(path))
        finally:
            path.unlink()

    def refused(self, t: dict) -> bool:
        return self.backend.capabilities.refusal(**self.params(t).capability_query(self.device)) is not None

    def fails(self, t: dict) -> bool:
        if self.refused(t) or not self.budget():
            return False
        res = self.run(t)
        if same_failure(res, self.ref):
            self.best = (t, res)
            return True
        return False

    def budget(self) -> bool:
        return self.tests < self.max_tests

    def reduce(self, t: dict, consistent: bool) -> tuple:
        """(tensors, result) of the smallest failing case found; (None, result) when the case
        does not fail at all."""
        res = self.run(t)
        if not res.failed:
            return None, res
        self.ref, self.best = res, (t, res)
        for _ in range(2):          # a smaller D can let fewer tokens fail, and the reverse
            before = self._size()
            self._tokens()
            if consistent:
                self._columns()
            if self._size() == before:
                break
        self._simplify(consistent)
        return self.best

    def _size(self):
        t = self.best[0]
        return t["x"].numel(), t["x"].shape[3]

    def _tokens(self):
        t = self.best[0]
        if t["x"].shape[0] > 1 and not self.fails(fold_batch(t)):
            ddmin(list(range(t["x"].shape[0])), lambda bs: self.fails(take_tokens(t, batches=bs)), self.budget)
        t = self.best[0]
        ddmin(list(range(t["x"].shape[1])), lambda ss: self.fails(take_tokens(t, positions=ss)), self.budget)

    def _columns(self):
        t = self.best[0]
        D = t["x"].shape[3]
        m = self.backend.capabilities.d_multiple
        if D % m or D // m < 2:
            return
        groups = [list(range(g * m, (g + 1) * m)) for g in range(D // m)]
        ddmin(groups, lambda gs: self.fails(take_columns(t, [d for g in gs for d in g])), self.budget)

    def _simplify(self, consistent: bool):
        for k in GRADIENTS:
            t = self.best[0]
            if bool(t[k].any()):
                self.fails(dict(t, **{k: torch.zeros_like(t[k])}))
        t = self.best[0]
        if consistent and t.get("gamma") is not None:
            self.fails(with_forward(dict(t, gamma=None)))

    def close(self):
        self._dir.cleanup()


# ------------------------------------------------------------------ `mhc-fuzz reduce FILE`
def add_parser(sub, common):
    r = sub.add_parser("reduce", help="shrink a failing case (a report or saved tensors) to a small failing "
                                      "subset, written as a tensor-backed report")
    common(r)
    r.add_argument("case", help="a report (.json), or saved tensors (.safetensors, torch.save .pt) with --backend")
    r.add_argument("--backend", help="the backend it fails on (default: the report's)")
    r.add_argument("--device", choices=("cuda", "cpu"))
    r.add_argument("--reports", default="reports", help="where the reduced report goes (default reports/)")
    r.add_argument("--in-process", action="store_true",
                   help="run the candidates in this process (no containment of crashes and hangs)")
    r.add_argument("--case-timeout", type=float, default=None,
                   help="seconds before a candidate counts as hung (default: the report's, else 300)")
    r.add_argument("--max-tests", type=int, default=400, help="most candidates to run (default 400)")


CONTEXT_FIELDS = ("arg_layouts", "grad_mode", "stream", "placement", "calls")


def _original(args):
    """(tensors on the CPU, params of the case or None, report or None, backend name) of the case
    to reduce."""
    from fuzz.cases import CaseParams, make_inputs
    from fuzz.errors import HarnessError
    from fuzz.given import GivenTensorsError, load_tensors
    from fuzz.reports import ReportError, load_report, tensors_path
    from fuzz.sizes import too_big
    path = Path(args.case)
    if path.suffix == ".json":
        try:
            rep = load_report(path)
        except ReportError as exc:
            raise HarnessError(str(exc)) from None
        params = CaseParams.from_dict(rep["params"])
        if rep.get("history") or params.first_call:
            raise HarnessError(f"{path}: its failure needs its process (earlier calls, or a first call): "
                               f"replay it (mhc-fuzz replay); reduce runs its candidates one after another")
        stored = tensors_path(path, rep)
        why = too_big(params, "cpu")          # the candidates are cut from tensors held on the CPU
        if why:
            raise HarnessError(f"{path}: {why}")
        if stored is None:
            inp = make_inputs(params, "cpu")
            t = {k: (None if v is None else v.contiguous()) for k, v in
                 ((k, getattr(inp, k)) for k in BACKWARD_ARGS)}
        else:
            try:
                t = load_tensors(stored, "cpu")
            except GivenTensorsError as exc:
                raise HarnessError(str(exc)) from None
        return {k: v for k, v in t.items() if v is not None}, params, rep, args.backend or rep["backend"]
    if not args.backend:
        raise HarnessError(f"{path}: saved tensors: say which backend they fail on (--backend NAME)")
    try:
        t = load_tensors(path, "cpu")
    except GivenTensorsError as exc:
        raise HarnessError(str(exc)) from None
    return {k: t[k] for k in BACKWARD_ARGS if t.get(k) is not None}, None, None, args.backend


def run(args, console) -> int:
    from fuzz.plan import load_registry, pick_device, prepare_device_env, writable_dir
    from fuzz.errors import EXIT_FOUND, EXIT_OK, HarnessError
    from fuzz.executor import CaseLoadError, InProcessExecutor, SubprocessExecutor, WorkerStartError
    from fuzz.given import GivenTensorsError, consistency, describe, to_inputs
    from fuzz.check import backend_can_run
    from fuzz.replay import DEFAULT_CASE_TIMEOUT_S, missing_backend, print_result
    from fuzz.reports import build_report, environment, write_report
    from fuzz.sizes import too_big

    device = pick_device(args.device, console)
    prepare_device_env(device)
    t, original, rep, name = _original(args)
    layout = "contiguous" if original is None else original.layout
    context = {} if original is None else {k: getattr(original, k) for k in CONTEXT_FIELDS}
    try:
        params = describe(t, args.case)
    except GivenTensorsError as exc:
        raise HarnessError(str(exc)) from None
    why = too_big(params, device)
    if why:
        raise HarnessError(f"{args.case}: {why}")
    reg = load_registry(args.plugin, console)
    if name not in reg.backends:
        raise HarnessError(missing_backend(args.case, rep or {"backend": name}, name, reg.names(), "reduce"))
    backend = reg.get(name)
    why = backend_can_run(backend, device)
    if why:
        raise HarnessError(f"{args.case}: backend {name} cannot run on {device}: {why}")
    reports = writable_dir(args.reports, "--reports")
    consistent = all(a.consistent for a in consistency(to_inputs(t, "cpu")))
    timeout = args.case_timeout or (rep or {}).get("case_timeout_s") or DEFAULT_CASE_TIMEOUT_S
    ex = InProcessExecutor(reg, device, args.tolerances) if args.in_process else \
        SubprocessExecutor(args.plugin, device, args.tolerances, timeout)
    if original is not None:
        from fuzz.context import unavailable
        why = unavailable(original, device)
        if why:
            raise HarnessError(f"{args.case}: cannot reduce here: its context is unavailable: {why}")
    reducer = Reducer(ex, backend, device, layout, args.max_tests, context)
    try:
        with console.status(f"reducing {params.T} tokens x n={params.n} x D={params.D} on {name}"):
            small, res = reducer.reduce(t, consistent)
    except (WorkerStartError, CaseLoadError) as exc:
        raise HarnessError(f"{args.case}: {exc}") from None
    finally:
        ex.close()
        reducer.close()
    if small is None:
        console.print(f"[green]the case passes on {name}[/] ({res.status}): nothing to reduce")
        return EXIT_OK
    report = build_report(res, plugins=args.plugin, env=environment(device))
    report["reduced_from"] = {"case": str(args.case), "tokens": params.T, "D": params.D,
                              "elements": params.T * params.n * params.D, "tests": reducer.tests}
    if rep is not None and rep.get("expected_failure") and rep["backend"] == name:
        report["expected_failure"] = rep["expected_failure"]
    path, written = write_report(report, reports, tensors=small)
    p = res.params
    console.print(f"reduced {params.T} tokens, D={params.D} ({params.T * params.n * params.D} elements) to "
                  f"{p.T} tokens, D={p.D} ({p.T * p.n * p.D} elements) in {reducer.tests} runs"
                  + ("" if consistent else " (tokens only: the saved activations are not the forward of "
                                           "the inputs, so D and gamma were kept)"))
    print_result(console, f"{path}: {name} on {device}: B={p.B} S={p.S} n={p.n} D={p.D} {p.x_dtype}", res)
    if written:
        console.print(f"report: {path}\nreplay: {report['replay'].replace('{path}', str(path))}")
    else:
        console.print(f"{path} already holds a case as small; not replaced")
    return EXIT_FOUND
