"""Cases rebuild bit-exactly from their parameters, in every layout, on every device."""
import pytest
import torch

from conftest import requires_cuda
from fuzz.cases import LAYOUTS, CaseParams, make_inputs, uniform


def _same(a, b):
    return all(torch.equal(getattr(a, k).cpu(), getattr(b, k).cpu()) for k in a.tensors())


def test_same_params_same_tensors():
    p = CaseParams(2, 5, 4, 33, "bf16", seed=11, outliers=2, zero_tokens=2, x_scale=1.5)
    assert _same(make_inputs(p), make_inputs(p))


def test_seed_changes_values():
    a = make_inputs(CaseParams(1, 4, 2, 16, seed=1))
    b = make_inputs(CaseParams(1, 4, 2, 16, seed=2))
    assert not torch.equal(a.x, b.x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_change_memory_not_values(layout):
    base = make_inputs(CaseParams(2, 3, 4, 9, "fp16", seed=5))
    other = make_inputs(CaseParams(2, 3, 4, 9, "fp16", seed=5, layout=layout))
    assert _same(base, other)
    if layout == "contiguous":
        assert other.x.is_contiguous()
    elif layout == "offset":
        assert other.x.storage_offset() == 1
    else:
        assert not other.x.is_contiguous()


def test_uniform_is_in_range_and_exact_in_fp32():
    u = uniform(3, "x", (10000,), "cpu")
    assert u.min() >= -1 and u.max() < 1
    assert torch.equal(u.float().double(), u)            # multiples of 2^-23: exact in fp32
    assert abs(float(u.mean())) < 0.05


def test_zero_tokens_are_zero_and_inputs_finite():
    p = CaseParams(1, 6, 2, 8, "fp16", seed=1, zero_tokens=3, x_scale=3.0, outliers=4, outlier_factor=64.0)
    inp = make_inputs(p)
    zero_rows = (inp.x.reshape(6, -1) == 0).all(-1)
    assert 1 <= int(zero_rows.sum()) <= 3
    assert torch.isfinite(inp.x).all()


def test_from_dict_rejects_unknown_and_invalid():
    with pytest.raises(ValueError, match="unknown case parameter"):
        CaseParams.from_dict({"B": 1, "S": 1, "n": 1, "D": 1, "colour": 3})
    with pytest.raises(ValueError, match="D must be a positive int"):
        CaseParams.from_dict({"B": 1, "S": 1, "n": 1, "D": 0})


@requires_cuda
def test_cpu_and_gpu_build_identical_inputs():
    p = CaseParams(3, 7, 4, 130, "bf16", seed=42, outliers=3, zero_tokens=2, layout="strided")
    a, b = make_inputs(p, "cpu"), make_inputs(p, "cuda")
    for k in ("x", "phi", "alpha", "bias", "gamma", "dh_in", "dh_post", "dh_res"):
        assert torch.equal(getattr(a, k), getattr(b, k).cpu()), k


@pytest.mark.parametrize("fields, message", [
    (dict(B=10**12, S=10**12), "B=1000000000000 is larger than"),
    (dict(B=1 << 20, S=1 << 20, n=8, D=8), "elements: more than"),
    (dict(n=1000), "n=1000 is larger than"),
    (dict(B=True), "B must be a positive int"),
    (dict(x_scale=1e6), "x_scale must be a number within"),
    (dict(x_scale=float("nan")), "x_scale must be a number within"),
    (dict(alpha=(1.0, float("inf"), 1.0)), "alpha must be 3 numbers"),
    (dict(zero_tokens=-1), "zero_tokens must be an int"),
    (dict(use_gamma="yes"), "use_gamma must be true or false"),
])
def test_case_parameters_are_bounded_so_building_a_case_cannot_overflow(fields, message):
    with pytest.raises(ValueError, match=message):
        CaseParams(**{**dict(B=1, S=2, n=2, D=3), **fields}).validated()


def test_a_case_too_big_for_the_device_is_named_before_anything_is_allocated():
    from fuzz.sizes import case_bytes, too_big
    p = CaseParams(4096, 4096, 4, 8192)
    assert case_bytes(p) > 1 << 40
    why = too_big(p, "cpu", available=64 << 30)
    assert why.startswith("case B=4096 S=4096 n=4 D=8192 needs about") and "64 GiB of available memory" in why
    assert too_big(CaseParams(1, 16, 4, 64), "cpu", available=64 << 30) is None
