"""One differential check: run a backend on one case and judge every output.

This is the unit everything else is built from: the Hypothesis property, replay of a
report, onboarding and the mutant kill table all call run_case()."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import torch

from fuzz import compare as cmp
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams, Inputs, make_inputs
from fuzz.guards import damaged, guarded
from fuzz.precision import TORCH_DTYPE, UNIT_ROUNDOFF
from fuzz.truth import BACKWARD, FORWARD, magnitudes, truth
from impls.registry import unavailable_reason

# Failure kinds, each its own signature in reports.
TOLERANCE = "tolerance"              # an output outside its derived bound
NONFINITE = "nonfinite"              # NaN/Inf where the truth is finite, or the reverse
EXCEPTION = "exception"              # raised on an input inside its capabilities
CONTRACT = "contract"                # wrong number/shape/dtype/device of outputs
ACCEPTED_UNSUPPORTED = "accepted-unsupported"  # computed an input it declares unsupported
INPUT_MUTATED = "input-mutated"      # changed one of its inputs
NONDETERMINISTIC = "nondeterministic"  # declared deterministic, two runs differ bitwise
CRASH = "crash"                      # killed its process (segfault, CUDA context lost)
TIMEOUT = "timeout"                  # did not return within the per-case limit
OUT_OF_BOUNDS = "out-of-bounds"      # wrote outside its buffers (guard regions changed)

REFUSAL_ERRORS = (ValueError, TypeError, NotImplementedError)


@dataclass
class CaseResult:
    backend: str
    params: CaseParams
    device: str
    status: str                        # pass | fail | refused
    kind: str = ""                     # failure kind when status == fail
    verdicts: list = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0
    backend_stats: dict = field(default_factory=dict)   # e.g. compile counts, from backend.stats()

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
                    backend_stats=self.backend_stats)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseResult":
        return cls(d["backend"], CaseParams.from_dict(d["params"]), d["device"], d["status"], d.get("kind", ""),
                   [cmp.Verdict.from_dict(v) for v in d.get("verdicts", [])], d.get("message", ""),
                   d.get("seconds", 0.0), d.get("backend_stats") or {})


def _clone(inp: Inputs) -> dict:
    return {k: t.clone() for k, t in inp.tensors().items()}


def _mutated(inp: Inputs, before: dict) -> list:
    return [k for k, t in inp.tensors().items() if not torch.equal(t, before[k]) and not
            (t.is_floating_point() and torch.equal(torch.nan_to_num(t), torch.nan_to_num(before[k])))]


def _expected_specs(p: CaseParams, direction: str):
    xdt = TORCH_DTYPE[p.x_dtype]
    B, S, n, D, F = p.B, p.S, p.n, p.D, p.F
    f32 = torch.float32
    if direction == "backward":
        return {"dx": ((B, S, n, D), xdt), "dphi": ((F, n * D), f32), "dalpha": ((3,), f32),
                "dbias": ((F,), f32), "dgamma": ((n, D), f32)}
    return {"h_in": ((B, S, D), xdt), "h_post": ((B, S, n), f32), "h_res": ((B, S, n, n), f32),
            "inv_rms": ((B, S), f32), "h_mix": ((B, S, F), f32), "h_pre": ((B, S, n), f32)}


def _judge(outputs, p: CaseParams, device, direction, ref, mags, tols, caps) -> tuple[list, str]:
    names = BACKWARD if direction == "backward" else FORWARD
    specs = _expected_specs(p, direction)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(names):
        got = len(outputs) if isinstance(outputs, (tuple, list)) else type(outputs).__name__
        return [cmp.contract_verdict(direction, f"{direction} returned {got}, expected {len(names)} tensors")], CONTRACT
    verdicts, kind = [], ""
    u_acc = UNIT_ROUNDOFF["fp32"]
    for name, out in zip(names, outputs):
        u_gemm = UNIT_ROUNDOFF[caps.gemm_precision_of(name, p.x_dtype)]
        shape, dtype = specs[name]
        problem = cmp.contract_problem(name, out, shape, dtype, device)
        if problem:
            verdicts.append(cmp.contract_verdict(name, problem))
            kind = CONTRACT
            continue
        rule = tols.rule(name, p.x_dtype)
        bound = rule.bound(ref[name], mags[name], p.dims(), u_acc, u_gemm)
        v = cmp.compare(name, out, ref[name], bound, dtype)
        verdicts.append(v)
        if not v.passed and not kind:
            kind = NONFINITE if v.nonfinite_mismatches else TOLERANCE
    if kind != CONTRACT and any(v.nonfinite_mismatches for v in verdicts):
        kind = NONFINITE
    return verdicts, kind


def run_case(backend, params: CaseParams, device: str = "cpu", tolerances=None,
             check_determinism: bool | None = None, check_forward: bool = True) -> CaseResult:
    """Run `backend` on `params` and judge it. Never raises for a backend's misbehaviour."""
    t0 = time.perf_counter()
    res = CaseResult(backend.name, params, device, "pass")
    _run_and_judge(backend, res, tolerances or tolmod.load(), check_determinism, check_forward)
    res.seconds = time.perf_counter() - t0
    res.backend_stats = backend_stats(backend)
    return res


def _run_and_judge(backend, res: CaseResult, tols, check_determinism, check_forward) -> None:
    """Fill `res` in place; each early return is one failure kind, judged in this order."""
    params, device, caps = res.params, res.device, backend.capabilities

    def fail(kind, message):
        res.status, res.kind, res.message = "fail", kind, message

    refusal = caps.refusal(device=device, x_dtype=params.x_dtype, n=params.n, D=params.D, T=params.T)
    inp = make_inputs(params, device)
    guards = {}
    for k, t in inp.tensors().items():      # every input inside guard regions (see fuzz/guards.py)
        view, guards[k] = guarded(t)
        setattr(inp, k, view)
    before = _clone(inp)
    try:
        outputs = backend.backward(*inp.backward_args())
    except REFUSAL_ERRORS as exc:
        if refusal:
            res.status, res.message = "refused", f"refused as declared ({refusal}): {exc}"
        else:
            fail(EXCEPTION, f"raised {type(exc).__name__} on a supported input: {exc}")
        return
    except Exception as exc:  # any other error is a failure, supported input or not
        return fail(EXCEPTION, f"raised {type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=6))
    if refusal:
        return fail(ACCEPTED_UNSUPPORTED,
                    f"computed an input outside its capabilities ({refusal}) instead of refusing it")

    overwritten = [f"{k} ({side})" for k, buf in guards.items() if (side := damaged(buf))]
    if overwritten:
        return fail(OUT_OF_BOUNDS, f"wrote outside its buffers: guard regions changed around {', '.join(overwritten)}")
    mutated = _mutated(inp, before)
    if mutated:      # judged first: the truth below must see the inputs the backend was given
        return fail(INPUT_MUTATED, f"modified its input(s): {', '.join(mutated)}")

    ref, mags = truth(inp), magnitudes(inp)
    verdicts, kind = _judge(outputs, params, device, "backward", ref, mags, tols, caps)
    if check_forward and caps.has_forward and not kind:
        try:
            fwd = backend.forward(*inp.forward_args())
            fv, kind = _judge(fwd, params, device, "forward", ref, mags, tols, caps)
            verdicts += fv
        except Exception as exc:
            kind = EXCEPTION
            res.message = f"forward raised {type(exc).__name__}: {exc}"
    res.verdicts = verdicts
    if kind:
        bad = [v for v in verdicts if not v.passed]
        return fail(kind, res.message or "; ".join(
            v.problem or f"{v.component}: worst error/bound {v.worst_ratio:.3g} at {list(v.worst_index)}"
            f" (out {v.out_at_worst:.6g}, truth {v.truth_at_worst:.6g}, bound {v.bound_at_worst:.3g}"
            f"{', %d NaN/Inf mismatches' % v.nonfinite_mismatches if v.nonfinite_mismatches else ''})"
            for v in bad[:3]))
    if caps.deterministic if check_determinism is None else check_determinism:
        try:
            again = backend.backward(*_fresh(inp, before))
        except Exception as exc:
            return fail(EXCEPTION, f"second run (determinism check) raised {type(exc).__name__}: {exc}")
        diff = [n for n, a, b in zip(BACKWARD, outputs, again) if not torch.equal(a, b)]
        if diff:
            fail(NONDETERMINISTIC, f"declared deterministic, but two runs differ bitwise in {', '.join(diff)}")


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
        if t is not None:
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
