"""One differential check: run a backend on one case and judge it, check by check.

This is the unit everything else is built from: the Hypothesis property, replay of a
report, onboarding and the mutant kill table all call run_case() (or run_inputs() on
tensors given as they are). The checks are the functions listed in CHECKS, in the order
they run; the first that fails gives the case its FailureKind (fuzz/kinds.py). Adding a
check is one function and one entry in that list."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import torch

from fuzz import chunks, poison
from fuzz import compare as cmp
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams, Inputs, make_inputs
from fuzz.context import CallContext
from fuzz.guards import damaged, guarded
from fuzz.kinds import FailureKind
from fuzz.precision import UNIT_ROUNDOFF
from fuzz.truth import magnitudes, truth
from impls.registry import unavailable_reason
from impls.schema import BACKWARD_OUTPUTS, FORWARD_OUTPUTS, output_specs

REFUSAL_ERRORS = (ValueError, TypeError, NotImplementedError)


@dataclass
class CaseResult:
    backend: str
    params: CaseParams
    device: str
    status: str                        # pass | fail | refused
    kind: str = ""                     # a FailureKind when status == fail
    verdicts: list = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0
    backend_stats: dict = field(default_factory=dict)   # e.g. compile counts, from backend.stats()
    history: list = field(default_factory=list)         # earlier calls it needs: [{"backend", "params"}]

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def failing_components(self) -> list:
        return sorted(v.component for v in self.verdicts if not v.passed)

    def worst_ratio(self) -> float:
        return max((v.worst_ratio for v in self.verdicts), default=0.0)

    def signature(self) -> str:
        """Failures with the same signature are the same bug: one report each."""
        return f"{self.backend}|{self.kind}|{','.join(self.failing_components())}"

    def to_dict(self) -> dict:
        return dict(backend=self.backend, params=self.params.to_dict(), device=self.device,
                    status=self.status, kind=self.kind, message=self.message,
                    seconds=round(self.seconds, 4), verdicts=[v.to_dict() for v in self.verdicts],
                    backend_stats=self.backend_stats, history=self.history)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseResult":
        kind = d.get("kind") or ""
        return cls(d["backend"], CaseParams.from_dict(d["params"]), d["device"], d["status"],
                   FailureKind(kind) if kind else "",
                   [cmp.Verdict.from_dict(v) for v in d.get("verdicts", [])], d.get("message", ""),
                   d.get("seconds", 0.0), d.get("backend_stats") or {}, d.get("history") or [])


def _clone(inp: Inputs) -> dict:
    return {k: t.clone() for k, t in inp.tensors().items()}


def _mutated(inp: Inputs, before: dict) -> list:
    return [k for k, t in inp.tensors().items() if not torch.equal(t, before[k]) and not
            (t.is_floating_point() and torch.equal(torch.nan_to_num(t), torch.nan_to_num(before[k])))]


def _judge(outputs, p: CaseParams, device, direction, ref, mags, tols, caps) -> tuple[list, str]:
    """Verdicts for every output of one call, and the failure kind they add up to ('' if none)."""
    names = BACKWARD_OUTPUTS if direction == "backward" else FORWARD_OUTPUTS
    specs = output_specs(p.B, p.S, p.n, p.D, p.x_dtype, direction)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(names):
        got = len(outputs) if isinstance(outputs, (tuple, list)) else type(outputs).__name__
        return ([cmp.contract_verdict(direction, f"{direction} returned {got}, expected {len(names)} tensors")],
                FailureKind.CONTRACT)
    verdicts, sources, compared, kind = [], [], [], ""      # sources: how each verdict was reached
    u_acc = UNIT_ROUNDOFF["fp32"]
    for name, out in zip(names, outputs):
        u_gemm = UNIT_ROUNDOFF[caps.gemm_precision_of(name, p.x_dtype)]
        shape, dtype = specs[name]
        if name == "dgamma" and not p.use_gamma and caps.dgamma_without_gamma != "grad":
            verdicts.append(_dgamma_by_convention(out, caps.dgamma_without_gamma, shape, dtype, device))
            sources.append("convention")
            continue
        problem = cmp.contract_problem(name, out, shape, dtype, device)
        if problem:
            verdicts.append(cmp.contract_verdict(name, problem))
            sources.append("contract")
            continue
        rule = tols.rule(name, p.x_dtype)
        bound = rule.bound(ref[name], mags[name], p.dims(), u_acc, u_gemm)
        compared.append((len(verdicts), (name, out, ref[name], bound, dtype)))
        verdicts.append(None)
        sources.append("compared")
    for (at, _), v in zip(compared, cmp.compare_many([item for _, item in compared])):   # all in one pass
        verdicts[at] = v
    for v, source in zip(verdicts, sources):       # the first failure names the kind; a contract's wins
        if source == "contract":
            kind = FailureKind.CONTRACT
        elif not v.passed and not kind:
            if source == "convention":
                kind = FailureKind.CONTRACT if v.problem else FailureKind.TOLERANCE
            else:
                kind = FailureKind.NONFINITE if v.nonfinite_mismatches else FailureKind.TOLERANCE
    if kind != FailureKind.CONTRACT and any(v.nonfinite_mismatches for v in verdicts):
        kind = FailureKind.NONFINITE
    return verdicts, kind


def _judge_case(c, outputs, direction) -> tuple[list, str]:
    """_judge on the case's truth; a case too big for one float64 pass is judged token chunk by
    token chunk (fuzz/chunks.py). Outputs belong on the inputs' device, index included (cuda:1
    for inputs on cuda:1 while cuda:0 is current)."""
    device = c.inp.x.device
    if chunks.needed(c.res.params):
        return chunks.judge(outputs, c.inp, direction, c.tols, c.caps, device)
    ref, mags = c.truth()
    return _judge(outputs, c.res.params, device, direction, ref, mags, c.tols, c.caps)


def _dgamma_by_convention(out, convention, shape, dtype, device):
    """dgamma of a call without gamma, for a backend that declares it returns zeros or None
    there (Capabilities.dgamma_without_gamma) instead of the gradient of the implicit ones."""
    if convention == "none":
        if out is None:
            return cmp.Verdict("dgamma", True, 0.0, 0.0, 0.0, (), 0)
        return cmp.contract_verdict("dgamma", "dgamma: declared dgamma_without_gamma='none', but returned "
                                              f"{type(out).__name__} for a call without gamma, not None")
    problem = cmp.contract_problem("dgamma", out, shape, dtype, device)
    if problem:
        return cmp.contract_verdict("dgamma", problem)
    zeros = torch.zeros(shape, dtype=torch.float64, device=out.device)
    return cmp.compare("dgamma", out, zeros, zeros, dtype)      # declared zeros: exactly zero


def _verdict_message(verdicts) -> str:
    bad = [v for v in verdicts if not v.passed]
    return "; ".join(
        v.problem or f"{v.component}: worst error/bound {v.worst_ratio:.3g} at {list(v.worst_index)}"
        f" (out {v.out_at_worst:.6g}, truth {v.truth_at_worst:.6g}, bound {v.bound_at_worst:.3g}"
        f"{', %d NaN/Inf mismatches' % v.nonfinite_mismatches if v.nonfinite_mismatches else ''})"
        for v in bad[:3])


@dataclass
class CaseRun:
    """What the checks of one case share: the backend, its inputs, what it returned."""
    backend: object
    res: CaseResult
    inp: Inputs
    tols: object
    check_determinism: bool | None
    check_forward: bool
    refusal: str | None = None         # why the case is outside the declared capabilities
    guards: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    outputs: object = None
    forward_outputs: object = None     # the forward's outputs (or its exception), once called
    ref: dict | None = None
    mags: dict | None = None
    truth_of: object = truth           # inputs -> float64 reference outputs (fuzz/truth.py)
    judged: tuple | None = None        # (verdicts, kind) of call 1's outputs, once judged (repeated_call)
    call2_differences: list | None = None   # what call 2 returned bitwise unlike call 1 (repeated_call made it)

    @property
    def caps(self):
        return self.backend.capabilities

    def fail(self, kind: FailureKind, message: str):
        self.res.status, self.res.kind, self.res.message = "fail", kind, message

    def truth(self):
        if self.ref is None:
            self.ref, self.mags = self.truth_of(self.inp), magnitudes(self.inp)
        return self.ref, self.mags


# ------------------------------------------------------------------ the checks, in order
# Each check looks at one property of the call and either returns quietly or ends the case
# (c.fail(...), or a refusal). They run in CHECKS order, and the first failure is the case's
# kind: e.g. the inputs are checked for changes before the outputs are judged, because the
# truth must be computed from the inputs the backend was given.

def poison_memory(c: CaseRun):
    """From here on, every call of the backend runs on poisoned memory (fuzz/poison.py): what its
    outputs are allocated from holds NaN before its first call, a second fill before later ones."""
    if poison.enabled():
        c.backend = poison.PoisonedBackend(c.backend, c.res.params, c.res.device)


def call_backend(c: CaseRun):
    """The call itself: inside the capabilities it must return, outside them it must refuse."""
    c.refusal = c.caps.refusal(**c.res.params.capability_query(c.res.device))
    for k, t in c.inp.tensors().items():      # every input inside guard regions (fuzz/guards.py)
        view, c.guards[k] = guarded(t)
        setattr(c.inp, k, view)
    c.before = _clone(c.inp)
    try:
        c.outputs = c.backend.backward(*c.inp.backward_args())
    except REFUSAL_ERRORS as exc:
        if c.refusal:
            c.res.status, c.res.message = "refused", f"refused as declared ({c.refusal}): {exc}"
        else:
            c.fail(FailureKind.EXCEPTION, f"raised {type(exc).__name__} on a supported input: {exc}")
        return
    except Exception as exc:  # any other error is a failure, supported input or not
        c.fail(FailureKind.EXCEPTION, f"raised {type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=6))
        return
    if c.refusal:
        c.fail(FailureKind.ACCEPTED_UNSUPPORTED,
               f"computed an input outside its capabilities ({c.refusal}) instead of refusing it")


def guard_regions(c: CaseRun):
    overwritten = [f"{k} ({side})" for k, buf in c.guards.items() if (side := damaged(buf))]
    if overwritten:
        c.fail(FailureKind.OUT_OF_BOUNDS,
               f"wrote outside its buffers: guard regions changed around {', '.join(overwritten)}")


def inputs_unchanged(c: CaseRun):
    mutated = _mutated(c.inp, c.before)
    if mutated:
        c.fail(FailureKind.INPUT_MUTATED, f"modified its input(s): {', '.join(mutated)}")


def unwritten_outputs(c: CaseRun):
    """No output element may still hold the fill its memory had before the call (or be computed
    from memory nobody wrote): confirmed by one rerun on the second fill, made only then."""
    if isinstance(c.backend, poison.PoisonedBackend):
        second = poison.second_word(c.res.device)
        rerun = lambda: c.backend.call("backward", _fresh(c.inp, c.before), second)  # noqa: E731
        found = poison.inspect(c.outputs, "backward", c.res.device, rerun)
        if found:
            c.fail(*found)


def backward_values(c: CaseRun):
    verdicts, kind = c.judged or _judge_case(c, c.outputs, "backward")
    c.res.verdicts = verdicts
    if kind:
        c.fail(kind, _verdict_message(verdicts))


def forward_unwritten(c: CaseRun):
    """The same for the forward's outputs: its first call runs on the NaN fill, and
    forward_values judges that call's outputs (a second call would cost the fuzz a forward
    per case; the rerun on the second fill is made only when a fill shows)."""
    if not (isinstance(c.backend, poison.PoisonedBackend) and c.check_forward and c.caps.has_forward):
        return
    try:
        c.forward_outputs = c.backend.forward(*c.inp.forward_args())
    except Exception as exc:
        c.forward_outputs = exc        # forward_values reports it
        return
    rerun = lambda: c.backend.call("forward", c.inp.forward_args(), poison.second_word(c.res.device))  # noqa: E731
    found = poison.inspect(c.forward_outputs, "forward", c.res.device, rerun)
    if found:
        c.fail(*found)


def forward_values(c: CaseRun):
    if not (c.check_forward and c.caps.has_forward):
        return
    fwd = c.forward_outputs
    if fwd is None:
        try:
            fwd = c.backend.forward(*c.inp.forward_args())
        except Exception as exc:
            fwd = exc
    if isinstance(fwd, Exception):
        c.fail(FailureKind.EXCEPTION, f"forward raised {type(fwd).__name__}: {fwd}")
        return
    verdicts, kind = _judge_case(c, fwd, "forward")
    c.res.verdicts += verdicts
    if kind:
        c.fail(kind, _verdict_message(verdicts))


def repeated_call(c: CaseRun):
    """Call 2 on the same inputs, in the same context, judged like call 1: when the case asks
    for it (calls=2), and, for a backend declared deterministic, whenever call 1 is out of
    bounds (is it only the first call of this shape that is wrong?). For a deterministic
    backend, call 1 wrong and call 2 right is a first-call failure, call 1 right and call 2
    wrong a repeated-call failure (state kept across calls), and both right they must be
    bitwise equal. For one that is not, where two calls may differ by chance, each call must
    be within its bounds. Call 1 wrong is left to backward_values."""
    p = c.res.params
    first, kind1 = c.judged = _judge_case(c, c.outputs, "backward")
    if kind1 == FailureKind.CONTRACT or (p.calls == 1 and not (kind1 and c.caps.deterministic)):
        return
    try:
        again = c.backend.backward(*_fresh(c.inp, c.before))
    except Exception as exc:
        c.fail(FailureKind.EXCEPTION, f"call 2 on the same inputs raised {type(exc).__name__}: {exc}")
        return
    try:
        diff = _bitwise_differences(c.outputs, again) if len(again) == len(c.outputs) else None
    except Exception:               # not tensors where call 1 had them: judged below
        diff = None
    c.call2_differences = diff
    # bitwise what call 1 returned: the same verdicts (judged once)
    second, kind2 = (first, kind1) if diff == [] else _judge_case(c, again, "backward")
    deterministic = c.caps.deterministic
    if kind1 and not kind2 and deterministic:
        c.res.verdicts = first
        c.fail(FailureKind.FIRST_CALL, "call 1 out of bounds, call 2 on the same inputs within them: "
               + _verdict_message(first))
    elif kind2 and not kind1:
        c.res.verdicts = second
        c.fail(FailureKind.REPEATED_CALL if deterministic else kind2,
               "call 1 within bounds, call 2 on the same inputs out of them: " + _verdict_message(second))
    elif not kind1 and deterministic:
        if diff:
            c.fail(FailureKind.NONDETERMINISTIC,
                   f"declared deterministic, but calls 1 and 2 differ bitwise in {', '.join(diff)}")


def determinism(c: CaseRun):
    if not (c.caps.deterministic if c.check_determinism is None else c.check_determinism):
        return
    diff = c.call2_differences       # repeated_call's call 2 serves, when it made one
    if diff is None:
        try:
            again = c.backend.backward(*_fresh(c.inp, c.before))
        except Exception as exc:
            c.fail(FailureKind.EXCEPTION, f"second run (determinism check) raised {type(exc).__name__}: {exc}")
            return
        diff = _bitwise_differences(c.outputs, again)
    if diff:
        c.fail(FailureKind.NONDETERMINISTIC,
               f"declared deterministic, but two runs differ bitwise in {', '.join(diff)}")


def _bitwise_differences(outputs, again) -> list:
    """The backward outputs two calls did not return bitwise equal (None on both sides is equal)."""
    return [n for n, a, b in zip(BACKWARD_OUTPUTS, outputs, again)
            if not (a is None and b is None) and (a is None or b is None or not torch.equal(a, b))]


CHECKS = (poison_memory, call_backend, guard_regions, inputs_unchanged, unwritten_outputs, repeated_call,
          backward_values, forward_unwritten, forward_values, determinism)


def run_case(backend, params: CaseParams, device: str = "cpu", tolerances=None,
             check_determinism: bool | None = None, check_forward: bool = True) -> CaseResult:
    """Run `backend` on `params`, in the case's execution context (fuzz/context.py), and judge
    it. Never raises for a backend's misbehaviour (ValueError when this machine cannot give
    the case its context: fuzz.context.unavailable says so beforehand)."""
    context = CallContext(params, device)
    return run_inputs(context.wrap(backend), make_inputs(params, context.input_device), device, tolerances,
                      check_determinism, check_forward)


def run_inputs(backend, inp: Inputs, device: str = "cpu", tolerances=None,
               check_determinism: bool | None = None, check_forward: bool = True,
               truth_of=truth) -> CaseResult:
    """Run every check of CHECKS on `inp` (a case's tensors), in order, until one fails.
    `truth_of`: fuzz.truth.truth for generated cases, truth_from_saved for given tensors."""
    t0 = time.perf_counter()
    res = CaseResult(backend.name, inp.params, device, "pass")
    c = CaseRun(backend, res, inp, tolerances or tolmod.load(), check_determinism, check_forward,
                truth_of=truth_of)
    for check in CHECKS:
        check(c)
        if res.status != "pass":
            break
    res.seconds = time.perf_counter() - t0
    res.backend_stats = backend_stats(backend)
    return res


def backend_stats(backend) -> dict:
    """What a backend reports about itself (compile counts, ...), if it offers stats()."""
    probe = getattr(backend, "stats", None)
    if not callable(probe):
        return {}
    try:
        out = probe()
        return dict(out) if isinstance(out, dict) else {}
    except Exception:
        return {}


def _fresh(inp: Inputs, before: dict):
    """The original input values in the same layout (for the second, determinism run)."""
    args = []
    for k in Inputs.BACKWARD_ARGS:
        t = getattr(inp, k)
        if t is not None and not torch.equal(t, before[k]):   # (an expanded input cannot be written)
            t.copy_(before[k])
        args.append(t)
    return args


def backend_can_run(backend, device: str) -> str | None:
    """Why this backend cannot run on `device` here, or None."""
    reason = unavailable_reason(backend)
    if reason:
        return reason
    if device not in backend.capabilities.devices:
        return f"runs on {backend.capabilities.devices}, not {device}"
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None
