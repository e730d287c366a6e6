"""What the fuzzer varies besides values and shapes: every input's layout and dtype, the
declarations that bound them, and the call's context (grad mode, repeated calls). The
stream and device contexts need a GPU: tests/test_context_gpu.py."""
import hashlib
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.cases import ARG_LAYOUTS, GRAD_MODES, CaseParams, make_inputs
from fuzz import tolerances as tolmod
from fuzz.check import run_case
from fuzz.kinds import FailureKind
from fuzz.strategies import ContextSpace, arg_layouts, cases, contexts, outside_limits
from impls.golden import backward_terms
from impls.golden_backend import GoldenBackend
from impls.registry import BackendContractError, Capabilities, UnsupportedInputError, check_inputs
from impls.schema import layout_of, tensor_layout
import tests.mutants as M
from tests.mutants.context import FirstCallWrong

golden = GoldenBackend()


def _digest(inp) -> str:
    h = hashlib.sha256()
    for k, t in inp.tensors().items():
        h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.stride())).encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def test_default_cases_build_the_same_tensors_as_before():
    """The new case fields default to what cases were before them: same values, same layouts
    (digests taken before the fields existed)."""
    assert _digest(make_inputs(CaseParams(2, 3, 4, 33, "bf16", seed=5, zero_tokens=1, outliers=2,
                                          x_scale=1.5, bias_shift=4.0, alpha=(0.5, -1.0, 2.0)))) == "5279c878da2f2e25"
    assert _digest(make_inputs(CaseParams(1, 4, 2, 16, "fp16", seed=9, layout="transposed",
                                          use_gamma=False))) == "2280ecf52d6da3c3"


def test_new_fields_round_trip_and_are_validated():
    p = CaseParams(1, 2, 4, 8, arg_layouts=(("dh_res", "transposed"), ("phi", "expanded")),
                   arg_dtypes=(("gamma", "fp16"), ("phi", "bf16")), grad_mode="autograd", calls=2, first_call=True)
    d = p.to_dict()
    assert d["arg_layouts"] == {"dh_res": "transposed", "phi": "expanded"} and d["calls"] == 2
    assert CaseParams.from_dict(d) == p
    assert CaseParams.from_dict(dict(d, arg_layouts={"phi": "expanded", "dh_res": "transposed"})) == p
    for bad, match in ((dict(arg_layouts={"h_mix": "expanded"}), "cannot be 'expanded'"),
                       (dict(arg_layouts={"bias": "transposed"}), "cannot be 'transposed'"),
                       (dict(arg_dtypes={"h_mix": "bf16"}), "arg_dtypes"), (dict(grad_mode="eager"), "grad_mode"),
                       (dict(stream="other"), "stream"), (dict(calls=3), "calls")):
        with pytest.raises(ValueError, match=match):
            CaseParams.from_dict(dict(d, **bad))


@pytest.mark.parametrize("name", sorted(ARG_LAYOUTS))
def test_every_input_is_made_in_each_of_its_layouts(name):
    for lay in ARG_LAYOUTS[name]:
        p = CaseParams(2, 3, 4, 8, seed=1, alpha=(0.5, 2.0, -1.0), arg_layouts=((name, lay),))
        inp, base = make_inputs(p), make_inputs(CaseParams(2, 3, 4, 8, seed=1, alpha=(0.5, 2.0, -1.0)))
        t = getattr(inp, name)
        assert tensor_layout(t) == (lay,), (name, lay, t.stride())
        assert p.capability_query("cpu")["layouts"] == {name: (lay,)}
        if lay != "expanded":           # same values, other memory
            assert torch.equal(t, getattr(base, name))
        else:                           # one slice repeated, and the saved activations follow it
            assert 0 in t.stride() and not torch.equal(t, getattr(base, name))


def test_a_layout_that_vanishes_on_a_small_shape_is_not_claimed():
    """Padded rows of a one-row gamma are contiguous: the query says so, as check_inputs would."""
    p = CaseParams(1, 2, 1, 8, arg_layouts=(("gamma", "strided"),))
    assert tensor_layout(make_inputs(p).gamma) == ("contiguous",)
    assert "gamma" not in p.capability_query("cpu")["layouts"]


def test_layout_names():
    assert layout_of((4, 8), (8, 1), 0) == ("contiguous",)
    assert layout_of((4, 8), (8, 1), 4) == ("offset",)
    assert layout_of((4, 8), (11, 1), 0) == ("strided",)
    assert layout_of((4, 8), (1, 4), 0) == ("transposed",)
    assert layout_of((4, 8), (0, 1), 0) == ("expanded",)
    assert layout_of((4, 8), (11, 1), 2) == ("strided", "offset")
    assert layout_of((1, 8), (99, 1), 0) == ("contiguous",)          # a dimension of size 1 has no stride


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4).flatmap(
    lambda shape: st.tuples(st.just(tuple(shape)), st.lists(st.integers(0, 40), min_size=len(shape), max_size=len(shape)),
                            st.integers(0, 7))))
def test_a_tensor_s_layout_is_layout_of_its_sizes_strides_and_address(spec):
    """tensor_layout's shortcut for contiguous, aligned tensors gives what layout_of gives, for
    any sizes (0 and 1 included), strides (0 included) and storage offset."""
    shape, stride, offset = spec
    base = torch.zeros(offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n), dtype=torch.float32)
    t = base.as_strided(shape, stride, offset)
    assert tensor_layout(t) == layout_of(t.shape, t.stride(), t.data_ptr())
    dense = torch.zeros(shape)[(...,)]                      # contiguous, each stride as torch makes it
    assert tensor_layout(dense) == layout_of(dense.shape, dense.stride(), dense.data_ptr())


def test_small_inputs_in_other_dtypes_feed_the_forward():
    p = CaseParams(1, 3, 4, 8, seed=2, arg_dtypes=(("dh_res", "fp16"), ("phi", "bf16")))
    inp = make_inputs(p)
    assert inp.phi.dtype == torch.bfloat16 and inp.dh_res.dtype == torch.float16 and inp.gamma.dtype == torch.float32
    assert run_case(golden, p).status == "pass"


def test_golden_passes_every_layout_dtype_and_cpu_context():
    tols = tolmod.load()
    for i, (name, lay) in enumerate((n, lay) for n, lays in sorted(ARG_LAYOUTS.items()) for lay in lays):
        p = CaseParams(2, 3, 3, 9, seed=i, arg_layouts=((name, lay),), grad_mode=GRAD_MODES[i % 4],
                       calls=1 + i % 2, arg_dtypes=((name, "bf16"),) if name in ("phi", "gamma", "dh_res") else ())
        res = run_case(golden, p, tolerances=tols)
        assert res.status == "pass", (p.short(), res.kind, res.message)


class _Probe:
    """Golden that records the grad mode and thread it was called in."""
    name = "probe"
    capabilities = Capabilities(deterministic=True)

    def __init__(self):
        self.seen = []

    def backward(self, *args):
        self.seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                          torch._C._current_graph_task_id() != -1, threading.get_ident()))
        return tuple(backward_terms(*args)[k] for k in ("dx", "dphi", "dalpha", "dbias", "dgamma"))


def test_each_grad_mode_is_the_one_the_backend_runs_in():
    expected = {"enabled": (True, False, False), "no_grad": (False, False, False),
                "inference_mode": (False, True, False), "autograd": (False, False, True)}
    for mode, want in expected.items():
        probe = _Probe()
        assert run_case(probe, CaseParams(1, 2, 2, 4, grad_mode=mode)).status == "pass"
        assert {s[:3] for s in probe.seen} == {want}, mode


def test_a_refusal_raised_inside_autograd_backward_is_still_a_refusal():
    narrow = M.accepts_unsupported.capabilities      # n=4 only

    class Refuses(_Probe):
        capabilities = narrow

        def backward(self, *args):
            check_inputs(narrow, "refuses", args[0])
            return super().backward(*args)

    res = run_case(Refuses(), CaseParams(1, 2, 3, 4, grad_mode="autograd"))
    assert res.status == "refused", res.message


def test_declarations_are_validated():
    for bad, match in ((dict(input_dtypes={"phi": ("bf16",)}), "includes 'fp32'"),
                       (dict(input_dtypes={"h_mix": ("fp32", "bf16")}), "'h_mix' is not one of"),
                       (dict(input_layouts={"phi": ("strided",)}), "includes 'contiguous'"),
                       (dict(input_layouts={"phi": ("diagonal", "contiguous")}), "input_layouts"),
                       (dict(input_dtypes={"phi": "fp32"}), "tuple")):
        with pytest.raises(BackendContractError, match=match):
            Capabilities(**bad)


def test_refusal_and_check_inputs_follow_the_declarations():
    caps = Capabilities(gamma_required=True, input_dtypes={"phi": ("fp32", "bf16")},
                        input_layouts={"phi": ("contiguous",), "dh_post": ("contiguous", "offset")})
    base = dict(device="cpu", x_dtype="bf16", n=4, D=8, T=2)
    assert caps.refusal(**base) is None
    assert "gamma=None" in caps.refusal(**base, gamma=False)
    assert caps.refusal(**base, dtypes={"phi": "bf16"}) is None
    assert "phi dtype fp16" in caps.refusal(**base, dtypes={"phi": "fp16"})
    assert "dh_res dtype bf16" in caps.refusal(**base, dtypes={"dh_res": "bf16"})   # not declared: fp32 only
    assert "phi layout transposed" in caps.refusal(**base, layouts={"phi": ("transposed",)})
    assert caps.refusal(**base, layouts={"dh_post": ("offset",), "h_mix": ("expanded",)}) is None
    for p, match in ((CaseParams(1, 2, 4, 8, arg_layouts=(("phi", "transposed"),)), "phi layout transposed"),
                     (CaseParams(1, 2, 4, 8, arg_dtypes=(("phi", "fp16"),)), "phi dtype fp16"),
                     (CaseParams(1, 2, 4, 8, use_gamma=False), "gamma=None"),
                     (CaseParams(1, 2, 4, 8, arg_layouts=(("dh_post", "strided"),)), "dh_post layout strided")):
        with pytest.raises(UnsupportedInputError, match=match):
            check_inputs(caps, "mine", *make_inputs(p).backward_args())
        assert match in caps.refusal(**p.capability_query("cpu"))
    check_inputs(caps, "mine", *make_inputs(CaseParams(1, 2, 4, 8, arg_dtypes=(("phi", "bf16"),))).backward_args())


def test_probes_cover_each_declared_limit_and_are_refused_or_caught():
    caps = Capabilities(gamma_required=True, input_dtypes={"phi": ("fp32", "bf16")},
                        input_layouts={"phi": ("contiguous",), "x": ("contiguous", "offset")})
    labels = [label for label, _ in outside_limits(caps)]
    assert labels.count("gamma") == 1 and labels.count("phi dtype") == 1
    assert labels.count("phi layout") == 4 and labels.count("x layout") == 2     # strided, transposed
    assert outside_limits(golden.capabilities) == []                            # golden accepts everything

    class Checks(_Probe):
        capabilities = caps

        def backward(self, *args):
            check_inputs(caps, "checks", *args)
            return super().backward(*args)

    class DoesNotCheck(_Probe):
        capabilities = caps

    for _, fields in outside_limits(caps):
        p = CaseParams(**fields, seed=1)
        assert run_case(Checks(), p).status == "refused", p.short()
        assert run_case(DoesNotCheck(), p).kind == FailureKind.ACCEPTED_UNSUPPORTED, p.short()


def _drawn(strategy, n=150):
    """n draws of `strategy`, the same ones on every run: a rate or a coverage checked on them
    does not depend on luck (one run in a few hundred drew no 1-in-512 value in 3000 draws)."""
    seen = []

    @settings(max_examples=n, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(p):
        seen.append(p)
    collect()
    return seen


def test_cpu_runs_draw_no_cuda_context_and_stay_inside_declarations():
    caps = Capabilities(gamma_required=True, input_dtypes={"phi": ("fp32", "bf16")},
                        input_layouts={"phi": ("contiguous", "offset"), "x": ("contiguous",)})
    drawn = _drawn(cases(caps, space=ContextSpace()))
    assert {(p.stream, p.placement, p.first_call) for p in drawn} == {("default", "current", False)}
    assert all(caps.refusal(**p.capability_query("cpu")) is None for p in drawn)
    assert {p.grad_mode for p in drawn} == set(GRAD_MODES) and {p.calls for p in drawn} == {1, 2}
    assert {dict(p.arg_dtypes).get("phi") for p in drawn} == {None, "bf16"}
    assert all(p.use_gamma and p.layout == "contiguous" for p in drawn)


def test_a_gpu_run_draws_every_context():
    drawn = _drawn(contexts(ContextSpace(cuda=True, gpus=2, fresh_workers=True)), 600)
    assert {c["stream"] for c in drawn} == {"default", "side"} and {c["placement"] for c in drawn} == {"current", "other"}
    assert 0 < sum(c["first_call"] for c in drawn) < 60         # about one case in 64
    rare = _drawn(contexts(ContextSpace(cuda=True, gpus=1, fresh_workers=True, fresh_one_in=512)), 3000)
    assert 0 < sum(c["first_call"] for c in rare) < 40          # about one case in 512 (a GPU's)
    from fuzz.strategies import context_space

    class WithFreshProcesses:
        def run_fresh(self):
            pass
    assert context_space("cpu", executor=object()).fresh_workers is False
    cpu = context_space("cpu", executor=WithFreshProcesses())
    assert cpu.fresh_workers and cpu.fresh_one_in == 64 and not cpu.cuda
    layouts = _drawn(arg_layouts(golden.capabilities), 100)
    assert {lay for v in layouts for _, lay in v} == {"offset", "strided", "transposed", "expanded"}


class _WrongAfterFirst(_Probe):
    """Right on its first call, wrong (dx doubled) on every later one: state kept across calls."""
    capabilities = Capabilities(deterministic=False)

    def backward(self, *args):
        out = list(super().backward(*args))
        if len(self.seen) > 1:
            out[0] = out[0] * 2
        return tuple(out)


def test_repeated_calls_tell_first_call_and_repeated_call_failures_apart():
    p = CaseParams(1, 2, 4, 8, seed=3)
    assert run_case(FirstCallWrong(), p).kind == FailureKind.FIRST_CALL          # call 1 is diagnosed
    again = run_case(FirstCallWrong(), CaseParams(1, 2, 4, 8, seed=3, calls=2))
    assert again.kind == FailureKind.FIRST_CALL and "call 2" in again.message
    assert run_case(_WrongAfterFirst(), p).status == "pass"                          # not deterministic: one call
    twice = run_case(_WrongAfterFirst(), CaseParams(1, 2, 4, 8, seed=3, calls=2))     # each within bounds
    assert twice.kind == FailureKind.TOLERANCE and "call 2" in twice.message
    deterministic = _WrongAfterFirst()
    deterministic.capabilities = Capabilities(deterministic=True)
    assert run_case(deterministic, CaseParams(1, 2, 4, 8, seed=3, calls=2)).kind == FailureKind.REPEATED_CALL
    assert run_case(M.stream0_only, CaseParams(1, 2, 4, 8, seed=3, calls=2)).kind == FailureKind.TOLERANCE
    assert run_case(M.Nondeterministic(), CaseParams(1, 2, 4, 8, seed=3, calls=2)).kind in (
        FailureKind.NONDETERMINISTIC, "")         # equal by chance one time in two


def test_small_inputs_assumed_contiguous_is_caught():
    p = CaseParams(1, 2, 4, 8, seed=3, arg_layouts=(("phi", "transposed"),))
    assert run_case(M.small_inputs_assumed_contiguous, p).kind == FailureKind.TOLERANCE
    assert run_case(M.small_inputs_assumed_contiguous, CaseParams(1, 2, 4, 8, seed=3)).status == "pass"


def test_the_pending_writes_cover_exactly_each_inputs_elements():
    """The side-stream context overwrites every element of every input (and nothing around
    it) before writing the values back: checked here on the CPU, where the same bytes are used."""
    from fuzz.context import POISON, _byte_span
    inp = make_inputs(CaseParams(2, 3, 4, 8, seed=1, layout="strided", arg_layouts=(
        ("alpha", "strided"), ("dh_res", "transposed"), ("gamma", "offset"), ("phi", "expanded"))))
    for name, t in inp.tensors().items():
        whole = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
        before, saved = whole.clone(), _byte_span(t).clone()
        _byte_span(t).fill_(POISON)
        assert torch.isnan(t.float()).all(), name
        changed = (whole != before).nonzero()
        last = sum((size - 1) * st for size, st in zip(t.shape, t.stride()))
        start, end = t.storage_offset() * t.element_size(), (t.storage_offset() + last + 1) * t.element_size()
        assert start <= int(changed.min()) and int(changed.max()) < end, name     # nothing outside its span
        _byte_span(t).copy_(saved)
        assert torch.equal(whole, before), name
