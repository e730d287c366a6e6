"""run_case(), the unit every job is built from: one verdict per output, and each kind of
misbehaviour reported as its own failure kind, in process (the planted bugs of tests/mutants
and a few backends written here)."""
import json
import re
import time

import pytest
import torch

from fuzz.cases import CaseParams
from fuzz.check import CaseResult, backend_can_run, backend_stats, run_case
from fuzz.compare import Verdict
from fuzz.kinds import FailureKind
from fuzz.truth import BACKWARD, FORWARD
from impls.golden_backend import GoldenBackend
from impls.registry import Capabilities
import tests.mutants as M

P = CaseParams(1, 2, 4, 8, seed=1)


class Wrapping(GoldenBackend):
    """Golden with its outputs passed through `fix(outputs, args)`."""
    name = "wrapping"
    capabilities = Capabilities(deterministic=True, has_forward=False)

    def __init__(self, fix=None, forward_fix=None, **caps):
        self.fix, self.forward_fix = fix, forward_fix
        if caps or forward_fix:
            self.capabilities = Capabilities(**{"deterministic": True, "has_forward": forward_fix is not None,
                                                **caps})
        self.calls = 0

    def backward(self, *args):
        self.calls += 1
        out = super().backward(*args)
        return self.fix(list(out), args, self.calls) if self.fix else out

    def forward(self, *args):
        return self.forward_fix(list(super().forward(*args)))


def test_golden_passes_with_one_verdict_per_output():
    t0 = time.perf_counter()
    res = run_case(GoldenBackend(), P)                          # on the CPU by default
    elapsed = time.perf_counter() - t0
    assert (res.status, res.kind, res.message, res.backend, res.device) == ("pass", "", "", "golden", "cpu")
    assert [v.component for v in res.verdicts] == list(BACKWARD + FORWARD)
    assert all(v.passed and v.worst_ratio < 1 for v in res.verdicts) and not res.failed
    assert res.failing_components() == [] and 0 < res.worst_ratio() < 1
    assert 0 < res.seconds <= elapsed                          # the time of the call itself


def test_cases_are_judged_by_the_tolerances_given(tmp_path):
    """Zero bounds everywhere (no rounding allowed): golden's fp32 arithmetic fails them."""
    import yaml
    from fuzz import tolerances
    doc = yaml.safe_load(tolerances.DEFAULT_PATH.read_text())
    doc["lambda"], doc["underflow"] = 0.0, 0.0
    for entry in doc["components"].values():
        entry.update(roundings=0, gemm_operands=0)
        entry["per_dtype"] = {dt: {"output_ulps": 0} for dt in entry["per_dtype"]}
    path = tmp_path / "exact.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = run_case(GoldenBackend(), P, "cpu", tolerances=tolerances.load(path))
    assert res.kind == "tolerance" and "dx" in res.failing_components()
    assert [v.component for v in run_case(GoldenBackend(), P, "cpu", check_forward=False).verdicts] == list(BACKWARD)


def test_a_wrong_output_is_a_tolerance_failure_of_that_output():
    res = run_case(M.stream0_only, CaseParams(1, 1, 2, 3, seed=1), "cpu")
    assert res.failed and res.kind == "tolerance" and res.failing_components() == ["dx"]
    assert res.signature() == "stream0_only|tolerance|dx"
    dx = res.verdicts[0]
    assert res.worst_ratio() == dx.worst_ratio > 1 and dx.worst_index[2] == 1     # stream 1 was dropped
    assert re.fullmatch(rf"dx: worst error/bound {dx.worst_ratio:.3g} at \[0, 0, 1, \d\] \(out 0, truth -?[0-9.]+, "
                        r"bound [0-9.e-]+\)", res.message), res.message


def test_nan_where_the_truth_is_finite_is_nonfinite():
    res = run_case(M.nan_without_eps, CaseParams(1, 3, 2, 4, seed=2, zero_tokens=1), "cpu")
    assert res.failed and res.kind == "nonfinite"
    assert any(v.nonfinite_mismatches for v in res.verdicts)
    assert re.search(r"\(out nan, truth [^,]+, bound [^,]+, [1-9]\d* NaN/Inf mismatches\)", res.message), res.message


def test_nonfinite_wins_over_tolerance_in_another_output():
    def fix(out, args, calls):
        out[1] = out[1] * 2                      # dphi off
        out[4] = out[4].clone()
        out[4].view(-1)[0] = float("nan")        # dgamma NaN
        return out
    res = run_case(Wrapping(fix), P, "cpu")
    assert res.kind == "nonfinite" and res.failing_components() == ["dgamma", "dphi"]


def test_the_message_names_the_first_three_failing_outputs():
    res = run_case(Wrapping(lambda out, args, calls: [o * 2 for o in out]), P, "cpu")
    assert res.failing_components() == ["dalpha", "dbias", "dgamma", "dphi", "dx"]
    assert [part.split(":")[0] for part in res.message.split("; ")] == ["dx", "dphi", "dalpha"]


def test_exceptions():
    res = run_case(M.raises, CaseParams(1, 2, 4, 8, seed=1, layout="offset"), "cpu")
    assert res.failed and res.kind == "exception"
    assert res.message.startswith("raised RuntimeError: CUDA error: misaligned address\nTraceback")

    def refuses(out, args, calls):
        raise ValueError("D too small")
    res = run_case(Wrapping(refuses), P, "cpu")
    assert (res.kind, res.message) == ("exception", "raised ValueError on a supported input: D too small")


def test_declared_limits_refusal_and_acceptance():
    class Refuses(GoldenBackend):
        name = "refuses"
        capabilities = Capabilities(n_values=(4,))
    res = run_case(Refuses(), CaseParams(1, 2, 2, 8), "cpu")
    assert (res.status, res.kind, res.failed) == ("refused", "", False)
    assert res.message == "refused as declared (n=2 not in (4,)): refuses: unsupported input: n=2 not in (4,)"
    res = run_case(M.accepts_unsupported, CaseParams(1, 2, 2, 8), "cpu")
    assert (res.status, res.kind) == ("fail", "accepted-unsupported")
    assert res.message == "computed an input outside its capabilities (n=2 not in (4,)) instead of refusing it"
    assert run_case(M.accepts_unsupported, CaseParams(1, 2, 4, 8), "cpu").status == "pass"

    class FewTokens(GoldenBackend):
        name = "few_tokens"
        capabilities = Capabilities(max_tokens=2, d_multiple=4)
    assert run_case(FewTokens(), CaseParams(1, 3, 2, 8), "cpu").message.startswith("refused as declared (T=3 > 2)")
    assert run_case(FewTokens(), CaseParams(1, 2, 2, 6), "cpu").message.startswith(
        "refused as declared (D=6 is not a multiple of 4)")
    assert run_case(FewTokens(), CaseParams(2, 1, 2, 8), "cpu").status == "pass"


def test_writes_outside_the_inputs_and_into_them():
    res = run_case(M.writes_out_of_bounds, P, "cpu")
    assert (res.kind, res.message) == ("out-of-bounds",
                                       "wrote outside its buffers: guard regions changed around dh_in (after)")
    res = run_case(M.mutates_input, P, "cpu")
    assert (res.kind, res.message) == ("input-mutated", "modified its input(s): dh_post")

    def nan_into_x(out, args, calls):           # NaN written over a NaN-free input counts
        args[0].view(-1)[0] = float("nan")
        args[9].mul_(2)
        return out
    assert run_case(Wrapping(nan_into_x), P, "cpu").message == "modified its input(s): x, dh_post"

    def past_x_and_dh_in(out, args, calls):     # 16 bytes past the end of two inputs
        for t in (args[0], args[8]):
            end = (t.storage_offset() + t.numel()) * t.element_size()
            torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage(), end, (16,), (1,)).fill_(0)
        return out
    assert run_case(Wrapping(past_x_and_dh_in), P, "cpu").message == \
        "wrote outside its buffers: guard regions changed around x (after), dh_in (after)"


def test_contract_failures():
    res = run_case(M.wrong_dtype, P, "cpu")
    assert res.kind == "contract" and res.failing_components() == ["dx"]
    assert res.verdicts[0].problem == "dx: dtype torch.float32, expected torch.bfloat16"
    assert res.message == "dx: dtype torch.float32, expected torch.bfloat16"
    assert all(v.passed for v in res.verdicts[1:])              # the others are still judged

    res = run_case(Wrapping(lambda out, args, calls: out[:4]), P, "cpu")
    assert res.kind == "contract" and res.message == "backward returned 4, expected 5 tensors"
    assert [v.component for v in res.verdicts] == ["backward"]
    res = run_case(Wrapping(lambda out, args, calls: out[0]), P, "cpu")
    assert res.message == "backward returned Tensor, expected 5 tensors"

    def shape_and_nan(out, args, calls):
        out[0] = out[0][:, :1]
        out[1] = out[1].clone()
        out[1].view(-1)[0] = float("inf")
        return out
    res = run_case(Wrapping(shape_and_nan), P, "cpu")
    assert res.kind == "contract" and res.failing_components() == ["dphi", "dx"]
    assert res.message.startswith("dx: shape (1, 1, 4, 8), expected (1, 2, 4, 8); dphi: worst error/bound ")


def test_bitwise_determinism_is_checked_when_declared():
    def second_differs(out, args, calls):       # the last bit of one dbias element, on the second call
        if calls == 2:
            out[3] = out[3].clone()
            out[3][0] = torch.nextafter(out[3][0], torch.tensor(1e30))
        return out
    res = run_case(Wrapping(second_differs), P, "cpu")
    assert (res.kind, res.message) == ("nondeterministic",
                                       "declared deterministic, but two runs differ bitwise in dbias")

    def two_differ(out, args, calls):
        if calls == 2:
            out[1], out[4] = -out[1], -out[4]
        return out
    assert run_case(Wrapping(two_differ), P, "cpu").message == \
        "declared deterministic, but two runs differ bitwise in dphi, dgamma"
    assert run_case(Wrapping(second_differs), P, "cpu", check_determinism=False).status == "pass"
    assert run_case(Wrapping(second_differs, deterministic=False), P, "cpu").status == "pass"
    assert run_case(Wrapping(second_differs, deterministic=False), P, "cpu", check_determinism=True).kind == \
        "nondeterministic"

    def second_raises(out, args, calls):
        if calls == 2:
            raise RuntimeError("out of memory")
        return out
    res = run_case(Wrapping(second_raises), P, "cpu")
    assert (res.kind, res.message) == ("exception", "second run (determinism check) raised RuntimeError: out of memory")


def test_the_second_run_gets_the_original_inputs():
    seen = []

    def record(out, args, calls):
        seen.append([a.clone() if a is not None else None for a in args])
        return out
    assert run_case(Wrapping(record), P, "cpu").status == "pass" and len(seen) == 2
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(*seen))


def test_forward_is_judged_when_the_backend_has_one():
    def halve_h_post(out):
        out[1] = out[1] / 2
        return out
    res = run_case(Wrapping(forward_fix=halve_h_post), P, "cpu")
    assert res.kind == "tolerance" and res.failing_components() == ["h_post"]
    assert [v.component for v in res.verdicts] == list(BACKWARD + FORWARD)
    assert run_case(Wrapping(forward_fix=halve_h_post), P, "cpu", check_forward=False).status == "pass"

    def raises(out):
        raise IndexError("block too large")
    res = run_case(Wrapping(forward_fix=raises), P, "cpu")
    assert (res.kind, res.message) == ("exception", "forward raised IndexError: block too large")
    res = run_case(Wrapping(forward_fix=lambda out: out[:2]), P, "cpu")
    assert (res.kind, res.message) == ("contract", "forward returned 2, expected 6 tensors")


def test_a_failing_backward_skips_the_forward():
    calls = []

    def fwd(out):
        calls.append(1)
        return out
    res = run_case(Wrapping(lambda out, args, c: [out[0] * 3] + out[1:], forward_fix=fwd), P, "cpu")
    assert res.kind == "tolerance" and not calls and len(res.verdicts) == len(BACKWARD)


def test_backend_statistics_are_optional_and_contained():
    class Stats(GoldenBackend):
        def __init__(self, stats):
            self.stats = stats
    assert backend_stats(GoldenBackend()) == {}
    assert backend_stats(Stats(lambda: {"compiles": 3})) == {"compiles": 3}
    assert backend_stats(Stats(lambda: [("compiles", 3)])) == {}
    assert backend_stats(Stats(lambda: 1 / 0)) == {}
    assert backend_stats(Stats(7)) == {}
    res = run_case(Stats(lambda: {"compiles": 3}), P, "cpu")
    assert res.backend_stats == {"compiles": 3} and res.to_dict()["backend_stats"] == {"compiles": 3}


def test_why_a_backend_cannot_run():
    class CudaOnly(GoldenBackend):
        capabilities = Capabilities(devices=("cuda",))

    class Unavailable(GoldenBackend):
        def unavailable_reason(self):
            return "driver too old"
    assert backend_can_run(GoldenBackend(), "cpu") is None
    assert backend_can_run(CudaOnly(), "cpu") == "runs on ('cuda',), not cpu"
    assert backend_can_run(Unavailable(), "cpu") == "driver too old"
    if not torch.cuda.is_available():
        assert backend_can_run(GoldenBackend(), "cuda") == "no CUDA device"


def test_results_round_trip_through_json():
    res = run_case(M.stream0_only, CaseParams(1, 1, 2, 3, seed=1), "cpu")
    res.backend_stats = {"compiles": 2}
    d = json.loads(json.dumps(res.to_dict()))
    assert d["seconds"] == round(res.seconds, 4) and d["params"] == res.params.to_dict()
    back = CaseResult.from_dict(d)
    assert (back.backend, back.params, back.device, back.status, back.kind, back.message) == \
        (res.backend, res.params, res.device, res.status, res.kind, res.message)
    assert back.verdicts == [Verdict.from_dict(v.to_dict()) for v in res.verdicts] and back.seconds == d["seconds"]
    assert back.backend_stats == {"compiles": 2}
    minimal = CaseResult.from_dict({"backend": "b", "params": P.to_dict(), "device": "cpu", "status": "pass"})
    assert (minimal.kind, minimal.verdicts, minimal.message, minimal.seconds, minimal.backend_stats,
            minimal.history) == ("", [], "", 0.0, {}, [])
    earlier = [{"backend": "b", "params": CaseParams(1, 1, 1, 2).to_dict()}]
    res.history = earlier
    assert res.to_dict()["history"] == earlier
    assert CaseResult.from_dict(json.loads(json.dumps(res.to_dict()))).history == earlier


def test_worst_ratio_and_failing_components_of_a_result():
    vs = [Verdict("dx", True, 0, 1, 0.5, (), 0), Verdict("dphi", False, 0, 1, 3.0, (), 0),
          Verdict("dbias", False, 0, 1, 2.0, (), 0)]
    res = CaseResult("b", P, "cpu", "fail", "tolerance", vs)
    assert res.worst_ratio() == 3.0 and res.failing_components() == ["dbias", "dphi"]
    assert res.signature() == "b|tolerance|dbias,dphi"
    assert CaseResult("b", P, "cpu", "pass").worst_ratio() == 0.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_each_x_dtype_is_judged_in_its_own_storage(dtype):
    res = run_case(GoldenBackend(), CaseParams(1, 2, 2, 8, dtype, seed=3), "cpu")
    assert res.status == "pass", res.message


def test_without_gamma_both_runs_get_gamma_none():
    seen = []

    def record(out, args, calls):
        seen.append(args[-1])
        return out
    res = run_case(Wrapping(record), CaseParams(1, 2, 2, 8, seed=3, use_gamma=False), "cpu")
    assert res.status == "pass", res.message
    assert seen == [None, None]


class _Counting(GoldenBackend):
    """Golden that counts its backward calls."""
    name = "counting"

    def __init__(self):
        self.calls = 0

    def backward(self, *args):
        self.calls += 1
        return super().backward(*args)


def test_a_repeated_call_is_also_the_determinism_rerun():
    """A deterministic backend is called twice per case: calls=2's call 2 is the bitwise
    comparison the determinism check would otherwise make with a third call. Forcing the check
    on a backend not declared deterministic compares that same call 2."""
    for calls in (1, 2):
        probe = _Counting()
        assert run_case(probe, CaseParams(1, 2, 4, 8, seed=3, calls=calls)).status == "pass"
        assert probe.calls == 2, (calls, probe.calls)
    flaky = M.Nondeterministic()
    flaky.capabilities = Capabilities(deterministic=False)      # calls differ in dphi's last bit
    cases = [CaseParams(1, 2, 4, 8, seed=s, calls=2) for s in range(8)]
    assert {run_case(flaky, p).status for p in cases} == {"pass"}
    assert FailureKind.NONDETERMINISTIC in {run_case(flaky, p, check_determinism=True).kind for p in cases}


class _Forward(GoldenBackend):
    """Golden whose forward leaves h_mix unwritten ("unwritten"), adds uninitialised scratch to it
    ("scratch"), or raises ("raises"); it counts its forward calls."""
    name = "forward_probe"

    def __init__(self, bug: str):
        self.bug, self.forward_calls = bug, 0

    def forward(self, *args):
        self.forward_calls += 1
        if self.bug == "raises":
            raise RuntimeError("forward broke")
        out = list(super().forward(*args))
        h_mix = out[4]
        out[4] = torch.empty_like(h_mix) if self.bug == "unwritten" else h_mix + torch.empty_like(h_mix)
        return tuple(out)


def test_the_forward_runs_once_on_the_nan_fill_and_its_unwritten_outputs_are_their_own_kind():
    from fuzz import poison
    from impls.schema import FORWARD_OUTPUTS
    assert FORWARD_OUTPUTS[4] == "h_mix"
    p = CaseParams(1, 2, 2, 4, seed=5)
    first, second = poison.nan_word("cpu"), poison.second_word("cpu")
    numel = 1 * 2 * (2 * 2 + 2 * 2)          # h_mix: (B, S, 2n + n^2)
    b = _Forward("unwritten")
    res = run_case(b, p)
    assert res.kind == FailureKind.UNWRITTEN and b.forward_calls == 2      # the call, and the rerun on the second fill
    assert res.message == (f"output elements never written (they hold the memory fill: {first:#010x}, then "
                           f"{second:#010x} on a rerun): h_mix: {numel} of {numel} elements, first at [0, 0, 0]")
    b = _Forward("scratch")
    res = run_case(b, p)
    assert res.kind == FailureKind.UNINITIALIZED and b.forward_calls == 2
    assert res.message.startswith(f"outputs computed from memory nobody wrote (NaN on a NaN fill, other values "
                                  f"on a {second:#010x} fill): h_mix: ")
    b = _Forward("unwritten")
    assert run_case(b, p, check_forward=False).status == "pass" and b.forward_calls == 0
    b = _Forward("raises")
    res = run_case(b, p)
    assert res.kind == FailureKind.EXCEPTION and res.message == "forward raised RuntimeError: forward broke"
    assert b.forward_calls == 1                                            # not called again to be judged


def test_a_correct_forward_is_called_once_and_judged(monkeypatch):
    from impls.schema import BACKWARD_OUTPUTS, FORWARD_OUTPUTS
    p = CaseParams(1, 2, 2, 4, seed=5)
    for fill in ("on", "off"):
        monkeypatch.setenv("MHC_FUZZ_POISON", fill)
        b = _Forward("none")
        b.forward = lambda *a, _b=b: (setattr(_b, "forward_calls", _b.forward_calls + 1),
                                      GoldenBackend.forward(_b, *a))[1]
        res = run_case(b, p)
        assert res.status == "pass" and b.forward_calls == 1, fill
        assert [v.component for v in res.verdicts] == list(BACKWARD_OUTPUTS + FORWARD_OUTPUTS), fill


class _CallTwoWrong(_Counting):
    """Golden whose call 2 (and later) doubles dx, or raises, or returns another count of tensors."""
    name = "call_two"

    def __init__(self, how: str, deterministic: bool = True):
        super().__init__()
        self.how = how
        self.capabilities = Capabilities(deterministic=deterministic)

    def backward(self, *args):
        out = list(super().backward(*args))
        if self.calls == 1:
            return tuple(out)
        if self.how == "raises":
            raise RuntimeError("no second time")
        if self.how == "short":
            return tuple(out[:4])
        if self.how == "ulp":          # within bounds, not bitwise equal
            return tuple(torch.nextafter(t, torch.full_like(t, float("inf"))) if i < 2 else t for i, t in enumerate(out))
        out[0] = out[0] * 2
        return tuple(out)


def test_repeated_call_verdicts_and_messages():
    p = CaseParams(1, 2, 4, 8, seed=3, calls=2)
    res = run_case(_CallTwoWrong("raises"), p)
    assert (res.kind, res.message) == (FailureKind.EXCEPTION, "call 2 on the same inputs raised RuntimeError: no second time")
    res = run_case(_CallTwoWrong("double"), p)
    assert res.kind == FailureKind.REPEATED_CALL and res.failing_components() == ["dx"]
    assert res.message.startswith("call 1 within bounds, call 2 on the same inputs out of them: dx: worst error/bound ")
    res = run_case(_CallTwoWrong("double", deterministic=False), p)
    assert res.kind == FailureKind.TOLERANCE and res.failing_components() == ["dx"]
    assert res.message.startswith("call 1 within bounds, call 2 on the same inputs out of them: dx: ")
    res = run_case(_CallTwoWrong("short"), p)      # call 2 returns 4 tensors: judged (a contract problem)
    assert res.kind == FailureKind.REPEATED_CALL and res.message.endswith("backward returned 4, expected 5 tensors")
    ok = run_case(GoldenBackend(), p)
    assert ok.status == "pass" and len(ok.verdicts) == 11
    from tests.mutants.context import FirstCallWrong
    wrong_once = run_case(FirstCallWrong(), p)
    assert wrong_once.kind == FailureKind.FIRST_CALL and wrong_once.failing_components() == ["dx"]
    assert wrong_once.message.startswith("call 1 out of bounds, call 2 on the same inputs within them: dx: worst ")
    res = run_case(_CallTwoWrong("ulp"), p)
    assert (res.kind, res.message) == (FailureKind.NONDETERMINISTIC,
                                       "declared deterministic, but calls 1 and 2 differ bitwise in dx, dphi")


def test_without_the_fill_a_raising_forward_is_an_exception(monkeypatch):
    monkeypatch.setenv("MHC_FUZZ_POISON", "off")
    b = _Forward("raises")
    res = run_case(b, CaseParams(1, 2, 2, 4, seed=5))
    assert (res.kind, res.message, b.forward_calls) == (FailureKind.EXCEPTION,
                                                        "forward raised RuntimeError: forward broke", 1)


def test_bitwise_differences_name_each_output_that_differs_or_is_missing_on_one_side():
    from fuzz.check import _bitwise_differences
    a = [torch.ones(2), torch.zeros(3), None, torch.ones(1), None]
    assert _bitwise_differences(a, [t.clone() if t is not None else None for t in a]) == []
    b = [torch.ones(2), torch.zeros(3), torch.ones(1), None, None]
    assert _bitwise_differences(a, b) == ["dalpha", "dbias"]
    c = [torch.ones(2), torch.full((3,), -0.0), None, torch.ones(1) * 2, None]
    assert _bitwise_differences(a, c) == ["dbias"]          # (torch.equal takes -0.0 for 0.0)


def test_fresh_arguments_are_the_original_values_in_the_same_tensors():
    from fuzz.cases import make_inputs
    from fuzz.check import _clone, _fresh, _mutated
    inp = make_inputs(CaseParams(1, 2, 2, 4, seed=9))
    before = _clone(inp)
    inp.x.mul_(2)
    inp.dh_res.zero_()
    assert _mutated(inp, before) == ["x", "dh_res"]
    ids = [id(getattr(inp, k)) for k in inp.BACKWARD_ARGS]
    args = _fresh(inp, before)
    assert [id(t) for t in args] == ids                      # the same tensors (layouts kept), restored
    assert all(t is None or torch.equal(t, before[k]) for k, t in zip(inp.BACKWARD_ARGS, args))
    assert _mutated(inp, before) == []
    inp.dh_in[0, 0, 0] = float("nan")                       # NaN where it was NaN is unchanged
    before = _clone(inp)
    assert _mutated(inp, before) == []


class _RaisesDeep(GoldenBackend):
    name = "raises_deep"

    def backward(self, *args):
        return self._a(12)

    def _a(self, depth):            # two functions in turn: a traceback never folds repeated lines
        return self._b(depth - 1)

    def _b(self, depth):
        if depth <= 0:
            raise RuntimeError("deep down")
        return self._a(depth)


def test_an_exception_s_traceback_is_cut_to_six_frames():
    res = run_case(_RaisesDeep(), CaseParams(1, 1, 1, 2))
    assert res.kind == FailureKind.EXCEPTION and res.message.startswith("raised RuntimeError: deep down\n")
    assert res.message.count('  File "') == 6


def test_contract_problem_of_one_output_leaves_the_others_judged():
    class WrongDtype(GoldenBackend):
        name = "wrong_dtype"

        def backward(self, *args):
            out = list(super().backward(*args))
            out[1] = out[1].double()
            return tuple(out)
    res = run_case(WrongDtype(), CaseParams(1, 2, 2, 4, seed=1))
    assert res.kind == FailureKind.CONTRACT and res.failing_components() == ["dphi"]
    assert [v.component for v in res.verdicts] == ["dx", "dphi", "dalpha", "dbias", "dgamma"]


def test_run_inputs_defaults_to_the_cpu_and_judges_the_forward():
    from fuzz.cases import make_inputs
    from fuzz.check import run_inputs
    res = run_inputs(GoldenBackend(), make_inputs(CaseParams(1, 2, 2, 4, seed=2)))
    assert res.status == "pass" and res.device == "cpu" and len(res.verdicts) == 11
