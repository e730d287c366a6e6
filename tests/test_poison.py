"""Poisoned output memory (fuzz/poison.py): an output element the backend never writes holds
the fill and is reported as UNWRITTEN, an output computed from memory nobody wrote as
UNINITIALIZED; correct backends raise no alarm, whatever the layout."""
import pytest
import torch

from conftest import requires_cuda
from fuzz import poison
from fuzz.cases import CaseParams
from fuzz.check import run_case
from fuzz.kinds import FailureKind
from impls.golden_backend import backend as golden
from impls.registry import Capabilities
import tests.mutants as M

SMALL = [CaseParams(1, 1, 1, 1, "bf16"), CaseParams(2, 9, 4, 33, "bf16", seed=4, layout="strided"),
         CaseParams(1, 17, 3, 8, "fp16", seed=1, layout="transposed"), CaseParams(1, 32, 2, 8, "fp32", layout="offset")]


def test_cpu_fills_are_available_and_fill_every_fresh_allocation():
    for word in poison.FILLS["cpu"]:
        assert poison.unavailable("cpu", word) is None
        with poison.filled("cpu", word, 0):
            made = [torch.empty(n, dtype=dt) for n in (1, 7, 1000, 1 << 20) for dt in (torch.bfloat16, torch.float32)]
        assert all(bool(poison.holds(t, word).all()) for t in made), word
        assert not poison._fill_of("cpu").flags[word].value      # off again once the call is over


def test_a_lone_value_equal_to_half_the_fill_word_is_a_value():
    t = torch.full((6,), -0.466796875, dtype=torch.bfloat16)       # 0xBEEF, the junk word's first half
    assert t.view(torch.int16)[0] == -16657 and not poison.holds(t, poison.CPU_NAN).any()
    with poison.filled("cpu", poison.CPU_NAN, 0):
        f = torch.empty(6, dtype=torch.bfloat16)
    f[2] = 1.0                                                     # a written element breaks its word only
    assert poison.holds(f, poison.CPU_NAN).tolist() == [True, True, False, False, True, True]
    assert poison.holds(f[1:].view(5), poison.CPU_NAN).tolist() == [True, False, False, True, True]


@pytest.mark.parametrize("p", SMALL, ids=lambda p: p.short())
def test_unwritten_tile_and_uninitialised_read_get_their_own_kinds(p):
    res = run_case(M.last_tile_unwritten, p)
    assert res.kind == FailureKind.UNWRITTEN and "dx:" in res.message, res.message
    res = run_case(M.uninitialized_scratch_read, p)
    assert res.kind == FailureKind.UNINITIALIZED and "dx:" in res.message, res.message
    assert run_case(golden, p).status == "pass"


def test_without_poison_an_unwritten_tile_is_only_a_value_miss(monkeypatch):
    monkeypatch.setenv("MHC_FUZZ_POISON", "off")
    res = run_case(M.last_tile_unwritten, CaseParams(1, 1, 2, 8, "bf16"))
    assert res.kind != FailureKind.UNWRITTEN


class _AlwaysNaN:
    """A backend whose dbias is NaN on every call: a value fault, not the fill's doing."""
    name = "always_nan"
    capabilities = Capabilities(deterministic=True)

    def backward(self, *args):
        out = list(golden.backward(*args))
        out[3] = out[3].clone()
        out[3][0] = float("nan")
        return tuple(out)


def test_a_nan_the_backend_computes_is_left_to_the_value_checks():
    res = run_case(_AlwaysNaN(), CaseParams(1, 3, 2, 8, "bf16"))
    assert res.kind == FailureKind.NONFINITE and res.failing_components() == ["dbias"]


def test_outputs_needing_no_rerun_cost_no_rerun():
    calls = []

    class Counting:
        name, capabilities = "counting", Capabilities(deterministic=False)

        def backward(self, *args):
            calls.append(1)
            return golden.backward(*args)

    assert run_case(Counting(), CaseParams(2, 4, 2, 8, "bf16")).status == "pass"
    assert len(calls) == 1


@requires_cuda
@pytest.mark.parametrize("p", SMALL, ids=lambda p: p.short())
def test_on_the_gpu_outputs_come_from_filled_memory(p):
    """The private pool: golden's and the mutants' outputs land in memory filled before the call."""
    res = run_case(M.last_tile_unwritten, p, "cuda")
    assert res.kind == FailureKind.UNWRITTEN, res.message
    res = run_case(M.uninitialized_scratch_read, p, "cuda")
    assert res.kind == FailureKind.UNINITIALIZED, res.message
    assert run_case(golden, p, "cuda").status == "pass"
    from fuzz.cases import make_inputs
    inp = make_inputs(p, "cuda")
    wrapped = poison.PoisonedBackend(golden, p, "cuda")
    outs = wrapped.backward(*inp.backward_args())
    assert all(poison.covered("cuda", t) for t in outs)
    assert poison.holds(outs[0], poison.CUDA_NAN).sum() == 0


@requires_cuda
def test_a_pool_fragmented_by_many_shapes_starts_afresh_and_still_catches_unwritten_outputs(monkeypatch):
    """Cases of ever other shapes split the private pool into free blocks, every one of which is
    filled before every call: past MAX_FREE_BLOCKS (here 3, to get there in a few cases) the pool
    is replaced by an empty one, so a fill stays a few launches, and the new pool is filled
    like the old."""
    monkeypatch.setattr(poison, "MAX_FREE_BLOCKS", 3)
    fill = poison._fill_of("cuda")
    renewed = fill.renewals
    shapes = [CaseParams(b, s, n, d, dt, seed=s) for b, s, n, d, dt in
              ((1, 5, 2, 8, "bf16"), (2, 300, 4, 64, "fp32"), (1, 1, 1, 1, "fp16"), (3, 700, 4, 96, "bf16"),
               (1, 33, 3, 17, "fp32"), (2, 1500, 4, 128, "fp16"), (1, 9, 2, 5, "bf16"), (4, 64, 4, 256, "fp32"))] * 2
    most = 0
    for p in shapes:
        assert run_case(golden, p, "cuda").status == "pass"
        most = max(most, len(fill._free_blocks()))
    assert fill.renewals > renewed
    assert most <= 3 + 6          # + what one case's calls split off after the last renewal
    for p in shapes[:4]:
        res = run_case(M.last_tile_unwritten, p, "cuda")
        assert res.kind == FailureKind.UNWRITTEN, res.message
