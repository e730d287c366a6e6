"""Judge given tensors: the backward's twelve arguments saved from elsewhere (a failing
training step, a reduced report), with the same checks and verdict table as a replay.

    from fuzz.given import judge
    j = judge("step_1234.safetensors", backends=["golden", "triton"], device="cuda")
    j.failed, j.results["triton"].verdicts, j.activations

Input: a dict {argument name: tensor} (gamma may be absent or None), or a file holding
one: safetensors, or torch.save of a dict (loaded with weights_only=True: no code runs).
The truth is the SPEC backward in float64 on the saved activations as given
(fuzz/truth.py: truth_from_saved), since that is what a backend is handed. Separately,
each saved activation is compared with the forward of the given inputs: a mismatch is an
upstream problem (a bug in the forward, or a different forward) and is reported as that,
with a guess at its cause, not as a failure of the backward under test."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fuzz import compare as cmp
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams, Inputs, _layout
from fuzz.check import backend_can_run, run_inputs
from fuzz.precision import UNIT_ROUNDOFF
from fuzz.sizes import too_big
from fuzz.truth import magnitudes, truth_from_saved
from impls.golden import mhc_forward
from impls.schema import BACKWARD_ARGS, DTYPE_NAMES, DTYPES, SMALL_ARGS, X_DTYPE_ARGS, input_shapes

ACTIVATIONS = ("inv_rms", "h_mix", "h_pre", "h_post")
# The saved activations may come from any forward: one whose GEMM rounds its operands to bf16
# is still "the forward of the inputs", so they are held to the loosest GEMM precision.
ACTIVATION_GEMM = "bf16"


class GivenTensorsError(ValueError):
    """The given tensors are not the backward's arguments; the message says what is wrong."""


# ------------------------------------------------------------------ loading and checking
def load_tensors(path, device: str | None = None) -> dict:
    """{name: tensor} from a safetensors file or a torch.save'd dict, checked (names, shapes,
    dtypes, size against the device's memory) before the tensors are read into memory."""
    path = Path(path)
    if not path.is_file():
        raise GivenTensorsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as fh:      # shapes first, data after the checks
                lazy = {k: fh.get_slice(k) for k in fh.keys()}
                describe({k: _Shape(s.get_shape(), s.get_dtype()) for k, s in lazy.items()}, str(path), device)
                return {k: fh.get_tensor(k) for k in lazy}
        try:   # memory-mapped: the checks below run before the data is read
            doc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:          # the legacy (non-zip) format cannot be mapped
            doc = torch.load(path, map_location="cpu", weights_only=True)
    except GivenTensorsError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise GivenTensorsError(f"{path}: cannot load tensors ({type(exc).__name__}: {first}); expected a "
                                "safetensors file or torch.save of a dict of the backward's arguments") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise GivenTensorsError(f"{path}: expected a dict of the backward's arguments by name, "
                                f"got {type(doc).__name__}")
    describe(doc, str(path), device)
    return doc


@dataclass
class _Shape:
    """A tensor's shape and dtype as a safetensors header states them (nothing loaded)."""
    shape: list
    st_dtype: str

    @property
    def dtype(self):
        return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                "F64": torch.float64}.get(self.st_dtype, self.st_dtype)


def describe(tensors: dict, where: str = "tensors", device: str | None = None) -> CaseParams:
    """The case the tensors are (B, S, n, D, x's dtype, gamma or not), after checking every
    name, shape and dtype against the contract (impls/schema.py); GivenTensorsError if not."""
    missing = [k for k in BACKWARD_ARGS if k != "gamma" and k not in tensors]
    if missing:
        raise GivenTensorsError(f"{where}: missing {', '.join(missing)} (expected the backward's arguments "
                                f"{', '.join(BACKWARD_ARGS)}; gamma may be left out)")
    for k in BACKWARD_ARGS:
        t = tensors.get(k)
        if not (t is None and k == "gamma") and not isinstance(t, (torch.Tensor, _Shape)):
            raise GivenTensorsError(f"{where}: {k} must be a tensor, got {type(t).__name__}")
    x = tensors["x"]
    if len(x.shape) != 4 or min(x.shape) < 1:
        raise GivenTensorsError(f"{where}: x must be a non-empty [B,S,n,D] tensor, got shape {list(x.shape)}")
    if x.dtype not in DTYPE_NAMES:
        raise GivenTensorsError(f"{where}: x has dtype {x.dtype}; the SPEC's x is one of {', '.join(DTYPES)}")
    B, S, n, D = (int(v) for v in x.shape)
    # the parameters and incoming gradients may also come in bf16 or fp16 (Capabilities.input_dtypes)
    other = tuple(sorted((k, DTYPE_NAMES[tensors[k].dtype]) for k in SMALL_ARGS if tensors.get(k) is not None
                         and tensors[k].dtype in DTYPE_NAMES and tensors[k].dtype != torch.float32))
    try:
        p = CaseParams(B, S, n, D, DTYPE_NAMES[x.dtype], use_gamma=tensors.get("gamma") is not None,
                       arg_dtypes=other).validated()
    except ValueError as exc:
        raise GivenTensorsError(f"{where}: {exc}") from None
    shapes = input_shapes(B, S, n, D)
    for k in BACKWARD_ARGS:
        t = tensors.get(k)
        if t is None:
            continue
        if tuple(t.shape) != shapes[k]:
            raise GivenTensorsError(f"{where}: {k} has shape {list(t.shape)}; with x of shape {[B, S, n, D]} "
                                    f"the SPEC's {k} is {list(shapes[k])}")
        want = x.dtype if k in X_DTYPE_ARGS else torch.float32
        if t.dtype != want and not (k in SMALL_ARGS and t.dtype in DTYPE_NAMES):
            raise GivenTensorsError(f"{where}: {k} has dtype {t.dtype}; the SPEC's {k} is {want}"
                                    + (" (x's dtype)" if k in X_DTYPE_ARGS else
                                       " (or bf16, fp16 where a backend declares it)" if k in SMALL_ARGS else ""))
    if device is not None:
        why = too_big(p, device)
        if why:
            raise GivenTensorsError(f"{where}: {why}")
    return p


def to_inputs(tensors: dict, device: str, params: CaseParams | None = None) -> Inputs:
    """An Inputs (fuzz/cases.py) of the given tensors on `device`; the layouts of `params` (a
    reduced report's: `layout` for x and dh_in, `arg_layouts` for the others) are applied as for a
    generated case."""
    p = describe(tensors)
    if params is not None and (p.B, p.S, p.n, p.D, p.x_dtype, p.use_gamma, p.arg_dtypes) != (
            params.B, params.S, params.n, params.D, params.x_dtype, params.use_gamma, params.arg_dtypes):
        raise GivenTensorsError(f"the tensors are {shape_line(p)}, not {shape_line(params)}")
    p = params or p
    t = {k: (None if tensors.get(k) is None else tensors[k].to(device)) for k in BACKWARD_ARGS}
    for k, layout in p.input_layouts().items():     # a reduced report's layouts, as a generated case's
        if t.get(k) is not None:
            t[k] = _layout(t[k], layout)
    return Inputs(p, **t)


def shape_line(p: CaseParams) -> str:
    """What given tensors are, in one line (their parameters beyond these mean nothing)."""
    return (f"B={p.B} S={p.S} n={p.n} D={p.D} {p.x_dtype}, gamma {'given' if p.use_gamma else 'None'}"
            + "".join(f", {k} {dt}" for k, dt in p.arg_dtypes))


def inputs_from_file(path, device: str, params: CaseParams | None = None) -> Inputs:
    return to_inputs(load_tensors(path), device, params)


# ------------------------------------------------------------------ are the activations the forward's?
@dataclass
class ActivationCheck:
    """How far a saved activation is from the float64 forward of the given inputs."""
    name: str
    consistent: bool
    max_rel: float              # max |saved - forward| / max |forward|
    worst_ratio: float          # worst |saved - forward| / bound (the forward's own tolerance)
    note: str = ""

    def line(self) -> str:
        if self.consistent:
            return f"{self.name}: the forward of the given inputs (worst {self.worst_ratio:.3g} of its bound)"
        return (f"{self.name} differs from the forward of the given inputs by {self.max_rel:.3g} relative "
                f"({self.worst_ratio:.3g}x its bound){': ' + self.note if self.note else ''}")


def _forward(inp: Inputs, gamma="given") -> dict:
    g = inp.gamma if gamma == "given" else gamma
    f64 = lambda t: None if t is None else t.detach().to(torch.float64)  # noqa: E731
    with torch.no_grad():
        out = mhc_forward(f64(inp.x), f64(inp.phi), f64(inp.alpha), f64(inp.bias), f64(g))
    return dict(zip(("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"), out))


def _activation_verdicts(inp: Inputs, fwd: dict, mags: dict, tols) -> dict:
    p = inp.params
    out = {}
    for name in ACTIVATIONS:
        bound = tols.rule(name, p.x_dtype).bound(fwd[name], mags[name], p.dims(), UNIT_ROUNDOFF["fp32"],
                                                 UNIT_ROUNDOFF[ACTIVATION_GEMM])
        out[name] = cmp.compare(name, getattr(inp, name), fwd[name], bound, torch.float32)
    return out


def consistency(inp: Inputs, tolerances=None) -> list:
    """One ActivationCheck per saved activation, with a guess at the cause of a mismatch."""
    tols = tolerances or tolmod.load()
    mags = magnitudes(inp)
    fwd = _forward(inp)
    verdicts = _activation_verdicts(inp, fwd, mags, tols)
    bad = [k for k, v in verdicts.items() if not v.passed]
    note = ""
    if bad:
        note = "an upstream bug, or the activations of a different forward"
        if inp.gamma is not None:
            without = _activation_verdicts(inp, _forward(inp, gamma=None), mags, tols)
            if all(without[k].passed for k in bad):
                note = "they match the forward without gamma: were the activations saved from a forward without gamma?"
        else:
            note += " (no gamma was given: was the forward run with one?)"
    checks = []
    for name, v in verdicts.items():
        scale = float(fwd[name].abs().max()) if fwd[name].numel() else 0.0
        rel = v.max_abs_err / scale if scale > 0 else v.max_abs_err
        if v.nonfinite_mismatches:
            rel = float("inf")
        checks.append(ActivationCheck(name, v.passed, rel, v.worst_ratio, "" if v.passed else note))
    return checks


# ------------------------------------------------------------------ the verdicts
@dataclass
class Judgement:
    params: CaseParams                                  # the case the tensors are
    results: dict = field(default_factory=dict)         # backend name -> CaseResult
    skipped: dict = field(default_factory=dict)         # backend name -> why it did not run
    activations: list = field(default_factory=list)     # ActivationCheck per saved activation

    @property
    def consistent(self) -> bool:
        return all(a.consistent for a in self.activations)

    @property
    def failed(self) -> bool:
        """A backend failed, or the saved activations are not the forward of the inputs."""
        return any(r.failed for r in self.results.values()) or not self.consistent

    def to_dict(self) -> dict:
        return {"case": self.params.to_dict(), "consistent": self.consistent,
                "activations": [a.__dict__ for a in self.activations], "skipped": self.skipped,
                "results": {k: r.to_dict() for k, r in self.results.items()}}


def _default_device(tensors: dict) -> str:
    x = tensors.get("x")
    return x.device.type if isinstance(x, torch.Tensor) else "cpu"


def judge(tensors, backends=None, device: str | None = None, tolerances=None, plugins=()) -> Judgement:
    """Judge backends on given tensors, in this process.

    tensors: a dict {argument name: tensor} or the path of a file holding one.
    backends: names of registered backends, backend objects, or None for every registered
    backend that can run on the device (plugins: extra module:attr targets to load).
    device: where the backends run (default: where x is)."""
    if not isinstance(tensors, dict):
        tensors = load_tensors(tensors, device)
    device = device or _default_device(tensors)
    params = describe(tensors, device=device)
    tols = tolerances if tolerances is not None and not isinstance(tolerances, (str, Path)) \
        else tolmod.load(tolerances)
    j = Judgement(params)
    j.activations = consistency(to_inputs(tensors, device), tols)
    for b in _backends(backends, plugins):
        why = backend_can_run(b, device)
        if why:
            j.skipped[b.name] = why
            continue
        j.results[b.name] = run_inputs(b, to_inputs(tensors, device), device, tols, truth_of=truth_from_saved)
    return j


def _backends(backends, plugins) -> list:
    """Backend objects from names (looked up in the registry), objects, or None (all)."""
    if isinstance(backends, str):
        backends = [backends]
    if backends is not None and not any(isinstance(b, str) for b in backends):
        return list(backends)
    from impls.registry import default_registry
    reg = default_registry(plugins)
    if backends is None:
        return list(reg.backends.values())
    for b in backends:
        if isinstance(b, str) and b not in reg.backends:
            raise GivenTensorsError(f"no backend named {b!r} (registered: {', '.join(reg.names())})")
    return [reg.get(b) if isinstance(b, str) else b for b in backends]


# ------------------------------------------------------------------ `mhc-fuzz check FILE`
def add_parser(sub, common):
    c = sub.add_parser("check", help="judge backends on saved tensors (the backward's twelve arguments)")
    common(c)
    c.add_argument("tensors", help="a .safetensors file, or torch.save of a dict {argument name: tensor}")
    c.add_argument("--backend", default="all", help="NAME, NAME,NAME or all (default: every one that can run)")
    c.add_argument("--device", choices=("cuda", "cpu"))
    c.add_argument("--in-process", action="store_true",
                   help="run the backends in this process (no containment of crashes and hangs)")
    c.add_argument("--case-timeout", type=float, default=300.0, help="seconds before a backend counts as hung")
    c.add_argument("--json", help="write the verdicts as JSON")


def run(args, console) -> int:
    import json
    from fuzz.plan import load_registry, pick_device, prepare_device_env, select_backends
    from fuzz.errors import EXIT_FOUND, EXIT_OK, HarnessError
    from fuzz.executor import CaseLoadError, InProcessExecutor, SubprocessExecutor, WorkerStartError
    from fuzz.replay import print_result
    from fuzz.tables import FitTable

    device = pick_device(args.device, console)
    prepare_device_env(device)
    try:
        tensors = load_tensors(args.tensors, device)
        params = describe(tensors, args.tensors)
    except GivenTensorsError as exc:
        raise HarnessError(str(exc)) from None
    reg = load_registry(args.plugin, console)
    names = select_backends(reg, args.backend)
    tols = tolmod.load(args.tolerances)
    j = Judgement(params)
    j.activations = consistency(to_inputs(tensors, device), tols)
    t = FitTable(f"{args.tensors}: saved activations against the forward of the given inputs",
                 ("activation", "verdict", "max rel. difference", "worst diff/bound", "likely cause"), keep=2)
    for a in j.activations:
        t.add_row(a.name, "[green]consistent[/]" if a.consistent else "[yellow]DIFFERS[/]", f"{a.max_rel:.3g}",
                  f"{a.worst_ratio:.3g}", a.note)
    console.print(t)
    ex = InProcessExecutor(reg, device, args.tolerances) if args.in_process else \
        SubprocessExecutor(args.plugin, device, args.tolerances, args.case_timeout)
    try:
        for name in names:
            why = backend_can_run(reg.get(name), device)
            if why:
                j.skipped[name] = why
                console.print(f"[yellow]skip[/] {name}: {why}")
                continue
            try:
                res = ex.run(name, params, tensors=str(args.tensors))
            except (WorkerStartError, CaseLoadError) as exc:
                raise HarnessError(f"{args.tensors}: {exc}") from None
            j.results[name] = res
            print_result(console, f"{args.tensors}: {name} on {device}: {shape_line(params)}", res)
    finally:
        ex.close()
    if not j.consistent:
        console.print("[yellow]the saved activations are not the forward of the given inputs[/]: an upstream "
                      "problem, not one of the backward (which is judged on the activations as given)")
    if args.json:
        Path(args.json).write_text(json.dumps(j.to_dict(), indent=2, default=str) + "\n")
    return EXIT_FOUND if j.failed else EXIT_OK
