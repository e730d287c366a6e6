"""Cases rebuild bit-exactly from their parameters, in every layout, on every device."""
import hashlib

import pytest
import torch

from conftest import requires_cuda
from fuzz.cases import ARG_LAYOUTS, LAYOUTS, CaseParams, make_inputs, uniform
from fuzz.reports import SCHEMA, SCHEMAS
from fuzz.truth import truth

# A report stores a case's parameters, not its tensors: what it means is whatever make_inputs()
# builds from them. These sha256 sums of fixed cases' tensors pin the generator, per report
# schema; every schema still read (fuzz.reports.SCHEMAS) must still build its cases' tensors.
# Parameters added later must default to what these cases build.
PINNED_CASES = {
    "defaults": CaseParams(B=2, S=3, n=4, D=33, seed=11),
    "every option": CaseParams(B=2, S=5, n=3, D=17, x_dtype="fp16", seed=7, x_scale=1.5, phi_scale=-1.0,
                               grad_scale=-2.0, gamma_scale=1.0, alpha=(0.5, -1.0, 2.0), bias_shift=4.0,
                               zero_tokens=2, outliers=3, outlier_factor=64.0),
    # schema 2: every input's layout and dtype, and the call's context (which leaves the tensors be)
    "every input's layout and dtype": CaseParams(
        B=2, S=3, n=4, D=24, seed=5, layout="offset",
        arg_layouts=(("bias", "strided"), ("dh_res", "transposed"), ("gamma", "expanded"), ("h_mix", "offset"),
                     ("phi", "expanded")),
        arg_dtypes=(("alpha", "fp16"), ("dh_post", "bf16"), ("phi", "bf16")), grad_mode="no_grad", calls=2),
}
TENSORS = ("x", "phi", "alpha", "bias", "gamma", "inv_rms", "h_mix", "h_pre", "h_post", "dh_in", "dh_post", "dh_res")
_SCHEMA1 = {"defaults": "3594224fc0038f3749890c5d836270ebe812eaf0a79c90ff770cdbd00178fdf1",
            "every option": "ae10270e2bf6009523696c6a0fe088dc60784cd8b02e2561aec1452c8972d4e1"}
PINNED = {1: _SCHEMA1,
          2: dict(_SCHEMA1, **{
              "every input's layout and dtype": "0fb0c522e81f36e9ba3fcbb29193eebcd514e101cfb653782bf6737b4e9ecb5b"})}


def _same(a, b):
    return all(torch.equal(getattr(a, k).cpu(), getattr(b, k).cpu()) for k in a.tensors())


def checksum(inp) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes (values in logical order)."""
    h = hashlib.sha256()
    for name in TENSORS:
        t = getattr(inp, name)
        if t is None:
            h.update(f"{name}:None;".encode())
            continue
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_every_schema_read_is_pinned():
    assert SCHEMA == max(SCHEMAS) and set(PINNED) == set(SCHEMAS)


@pytest.mark.parametrize("schema, which", [(s, w) for s in SCHEMAS for w in sorted(PINNED[s])])
def test_same_params_same_tensors_as_when_reports_were_written(schema, which):
    got = checksum(make_inputs(PINNED_CASES[which], "cpu"))
    assert got == PINNED[schema][which], (
        f"make_inputs({which!r} case) no longer builds the tensors it built for report schema {schema}: "
        f"every stored report would now replay other data. If the change is deliberate, bump "
        f"fuzz.reports.SCHEMA (old reports are then refused, not silently reinterpreted) and pin "
        f"PINNED[{SCHEMA + 1}][{which!r}] = {got!r}; otherwise keep the generator as it was "
        f"(a new CaseParams field must default to the old behaviour).")


def test_seed_changes_values():
    a = make_inputs(CaseParams(1, 4, 2, 16, seed=1))
    b = make_inputs(CaseParams(1, 4, 2, 16, seed=2))
    assert not torch.equal(a.x, b.x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_change_memory_not_values(layout):
    base = make_inputs(CaseParams(2, 3, 4, 9, "fp16", seed=5))
    other = make_inputs(CaseParams(2, 3, 4, 9, "fp16", seed=5, layout=layout))
    assert _same(base, other)
    assert other.x.dtype == other.dh_in.dtype == torch.float16
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
    assert all(t.device.type == "cuda" for t in b.tensors().values())
    for k in ("x", "phi", "alpha", "bias", "gamma", "dh_in", "dh_post", "dh_res"):
        assert torch.equal(getattr(a, k), getattr(b, k).cpu()), k


def test_case_parameters_derived_sizes_and_dict_round_trip():
    p = CaseParams(2, 3, 4, 5, "fp16", seed=9, alpha=(1.0, -0.5, 2.0))
    assert (p.T, p.F, p.dims()) == (6, 24, dict(T=6, n=4, D=5, F=24))
    d = p.to_dict()
    assert d["alpha"] == [1.0, -0.5, 2.0] and d["B"] == 2 and d["x_dtype"] == "fp16"
    assert CaseParams.from_dict(d) == p
    q = CaseParams.from_dict({"B": 1, "S": 1, "n": 2, "D": 3, "alpha": [1, 2, 3]})
    assert q.alpha == (1.0, 2.0, 3.0) and all(isinstance(a, float) for a in q.alpha)
    assert CaseParams.from_dict({"B": 1, "S": 1, "n": 2, "D": 3}).alpha == (1.0, 1.0, 1.0)
    assert set(p.short().split()) >= {"B=2", "S=3", "n=4", "D=5", "fp16", "seed=9", "layout=contiguous"}


@pytest.mark.parametrize("fields, message", [
    (dict(B=0), "case parameter B must be a positive int, got 0"),
    (dict(S=-1), "case parameter S must be a positive int, got -1"),
    (dict(n=2.0), "case parameter n must be a positive int, got 2.0"),
    (dict(D="8"), "case parameter D must be a positive int, got '8'"),
    (dict(x_dtype="int8"), "x_dtype must be bf16, fp16 or fp32, got 'int8'"),
    (dict(layout="diagonal"), f"layout must be one of {LAYOUTS}, got 'diagonal'"),
    (dict(alpha=(1.0, 1.0)), "alpha must have 3 values"),
])
def test_invalid_parameters_are_named(fields, message):
    d = {"B": 1, "S": 2, "n": 2, "D": 8, **fields}
    with pytest.raises(ValueError) as err:
        CaseParams.from_dict(d)
    assert str(err.value) == message


def test_without_gamma_there_is_no_gamma_tensor():
    p = CaseParams(1, 2, 2, 4, use_gamma=False, seed=1)
    inp = make_inputs(p)
    assert inp.params == p and inp.gamma is None and "gamma" not in inp.tensors()
    assert inp.backward_args()[-1] is None and inp.forward_args()[-1] is None
    assert [t is getattr(inp, k) for k, t in zip(inp.BACKWARD_ARGS, inp.backward_args())] == [True] * 12
    assert set(inp.tensors()) == set(inp.BACKWARD_ARGS) - {"gamma"}
    with_gamma = make_inputs(CaseParams(1, 2, 2, 4, seed=1))
    assert with_gamma.forward_args()[:4] == (with_gamma.x, with_gamma.phi, with_gamma.alpha, with_gamma.bias)
    assert with_gamma.forward_args()[4] is with_gamma.gamma and len(with_gamma.tensors()) == 12


def test_scales_and_shifts_do_what_their_names_say():
    base = make_inputs(CaseParams(1, 4, 2, 16, "fp32", seed=4))
    big = make_inputs(CaseParams(1, 4, 2, 16, "fp32", seed=4, x_scale=2.0, grad_scale=-1.0, gamma_scale=1.0,
                                 phi_scale=1.0, bias_shift=3.0, alpha=(0.5, 2.0, -1.0)))
    assert torch.allclose(big.x, base.x * 100) and torch.allclose(big.dh_in, base.dh_in / 10)
    assert torch.allclose(big.dh_post, base.dh_post / 10) and torch.allclose(big.dh_res, base.dh_res / 10)
    assert torch.allclose(big.gamma, base.gamma * 10) and torch.allclose(big.phi, base.phi * 10)
    assert torch.equal(big.bias[:4], base.bias[:4] + 3) and torch.equal(big.bias[4:], base.bias[4:])
    assert big.alpha.tolist() == [0.5, 2.0, -1.0] and base.alpha.tolist() == [1.0, 1.0, 1.0]
    # magnitudes the docs promise: phi ~ 1/sqrt(n*D), gamma = 1 + 0.25*u, bias = 0.5*u
    assert base.phi.abs().max() <= 1 / (2 * 16) ** 0.5 and base.phi.abs().max() > 0.5 / (2 * 16) ** 0.5
    assert 0.75 <= base.gamma.min() and base.gamma.max() <= 1.25 and base.bias.abs().max() <= 0.5
    assert base.phi.dtype == base.gamma.dtype == base.bias.dtype == base.dh_post.dtype == torch.float32


def test_saved_activations_are_the_float64_forward_rounded_to_fp32():
    inp = make_inputs(CaseParams(2, 2, 3, 5, "bf16", seed=6))
    ref = truth(inp)
    for k in ("inv_rms", "h_mix", "h_pre", "h_post"):
        saved = getattr(inp, k)
        assert saved.dtype == torch.float32 and torch.equal(saved, ref[k].float()), k


def test_outliers_multiply_x_and_are_clamped_to_the_dtype():
    base = make_inputs(CaseParams(1, 2, 2, 8, "fp16", seed=2))
    out = make_inputs(CaseParams(1, 2, 2, 8, "fp16", seed=2, outliers=3, outlier_factor=64.0))
    changed = (out.x != base.x).reshape(-1)
    assert 1 <= int(changed.sum()) <= 3
    assert torch.equal(out.x.reshape(-1)[changed], (base.x.float() * 64).half().reshape(-1)[changed])
    huge = make_inputs(CaseParams(1, 2, 2, 8, "fp16", seed=2, x_scale=6.0, grad_scale=6.0))   # 1e6 > 65504
    for t in (huge.x, huge.dh_in):
        assert torch.isfinite(t).all() and (t.max(), t.min()) == (65504, -65504)


def test_uniform_depends_on_seed_stream_and_index_only():
    a = uniform(3, "x", (4, 5), "cpu")
    assert a.shape == (4, 5) and a.dtype == torch.float64
    assert torch.equal(a.reshape(-1)[:7], uniform(3, "x", (7,), "cpu"))       # element i is element i
    assert not torch.equal(a, uniform(3, "phi", (4, 5), "cpu")) and not torch.equal(a, uniform(4, "x", (4, 5), "cpu"))
    assert len(set(a.reshape(-1).tolist())) == 20


def test_zero_tokens_can_fall_on_any_token_even_the_only_one():
    only = make_inputs(CaseParams(1, 1, 2, 4, seed=3, zero_tokens=1))
    assert not only.x.any() and not only.dh_in.any()
    zeroed = set()
    for seed in range(12):
        inp = make_inputs(CaseParams(1, 3, 2, 4, seed=seed, zero_tokens=1))
        rows = (inp.x.reshape(3, -1) == 0).all(-1)
        assert int(rows.sum()) == 1
        zeroed.add(int(rows.nonzero()[0]))
    assert zeroed == {0, 1, 2}


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


def test_each_layout_is_the_memory_it_names():
    from fuzz.cases import _layout, _layout_made
    t = torch.arange(24, dtype=torch.bfloat16).reshape(2, 3, 4)
    v = torch.arange(5, dtype=torch.float16)
    for lay in ("contiguous", "offset", "strided", "transposed", "expanded"):
        for src in (t, v) if lay != "transposed" else (t,):      # (a vector has no two dimensions to swap)
            out = _layout(src.clone(), lay)
            assert out.dtype == src.dtype and out.device == src.device and out.shape == src.shape, lay
    assert _layout(t, "contiguous").stride() == (12, 4, 1)
    off = _layout(t, "offset")
    assert off.storage_offset() == 1 and torch.equal(off, t)
    assert _layout(v, "strided").stride() == (2,) and torch.equal(_layout(v, "strided"), v)   # every other element
    padded = _layout(t, "strided")
    assert padded.stride() == (21, 7, 1) and torch.equal(padded, t)                        # rows padded by 3
    assert _layout(t, "transposed").stride() == (12, 1, 3) and torch.equal(_layout(t, "transposed"), t)
    same = t.narrow(0, 0, 1).expand(t.shape).contiguous()
    assert _layout(same, "expanded").stride() == (0, 4, 1) and torch.equal(_layout(same, "expanded"), same)
    rows = torch.arange(3.0).reshape(1, 3).expand(4, 3).contiguous().reshape(1, 4, 3)   # first dim 1: the next repeats
    assert _layout(rows, "expanded").stride() == (12, 0, 1)
    assert _layout(torch.tensor(2.0), "expanded").shape == ()
    with pytest.raises(ValueError, match="^unknown layout 'diagonal'$"):
        _layout(t, "diagonal")
    # the names the capability queries see: an fp16 phi one element off is not 16-byte aligned,
    # an fp32 one is off by 4 bytes; x follows x_dtype
    p = CaseParams(1, 2, 4, 8, x_dtype="fp16", arg_dtypes=(("phi", "fp16"),))
    from impls.schema import layout_of
    assert _layout_made("phi", "offset", p) == layout_of((2 * 4 + 4 * 4, 32), (32, 1), 2)
    assert _layout_made("phi", "offset", CaseParams(1, 2, 4, 8)) == layout_of((24, 32), (32, 1), 4)
    assert _layout_made("x", "offset", p) == layout_of((1, 2, 4, 8), (64, 32, 8, 1), 2)


def test_picked_indices_are_inside_and_none_for_nothing():
    from fuzz.cases import _pick
    for count, high in ((0, 5), (3, 0), (-1, 5), (3, -2)):
        idx = _pick(1, "outliers", count, high, "cpu")
        assert idx.dtype == torch.int64 and idx.shape == (0,), (count, high)
    idx = _pick(1, "outliers", 4000, 3, "cpu")
    assert idx.dtype == torch.int64 and set(idx.tolist()) == {0, 1, 2}
    assert torch.equal(_pick(1, "outliers", 1, 1, "cpu"), torch.zeros(1, dtype=torch.int64))


def test_each_range_rule_admits_its_edge_and_refuses_past_it():
    from fuzz.cases import MAX_D, MAX_ELEMENTS, MAX_LOG_SCALE, MAX_N, MAX_TOKENS_PER_DIM
    ok = [dict(B=MAX_TOKENS_PER_DIM, S=1, n=1, D=1), dict(B=1, S=MAX_TOKENS_PER_DIM, n=1, D=1),
          dict(B=1, S=1, n=MAX_N, D=1), dict(B=1, S=1, n=1, D=MAX_D),
          dict(B=1, S=MAX_ELEMENTS // (4 * MAX_D), n=4, D=MAX_D),
          dict(B=1, S=1, n=1, D=1, x_scale=MAX_LOG_SCALE), dict(B=1, S=1, n=1, D=1, bias_shift=-1e6),
          dict(B=1, S=1, n=1, D=1, outlier_factor=1e6), dict(B=1, S=1, n=1, D=1, alpha=(1e6, -1e6, 0))]
    for fields in ok:
        CaseParams(**fields).validated()
    too_many = MAX_ELEMENTS // (4 * MAX_D) + 1
    bad = [(dict(B=MAX_TOKENS_PER_DIM + 1, S=1, n=1, D=1), f"case parameter B={MAX_TOKENS_PER_DIM + 1} is larger than "),
           (dict(B=1, S=too_many, n=4, D=MAX_D),
            f"case of B*S*n*D = {too_many * 4 * MAX_D} elements: more than {MAX_ELEMENTS}"),
           (dict(B=1, S=1, n=1, D=1, bias_shift=1e6 + 0.5), "case parameter bias_shift must be a number within +-1e+06, got 1000000.5"),
           (dict(B=1, S=1, n=1, D=1, outlier_factor=1e6 + 0.5), "case parameter outlier_factor must be a number within"),
           (dict(B=1, S=1, n=1, D=1, x_scale=True), "case parameter x_scale must be a number within"),
           (dict(B=1, S=1, n=1, D=1, alpha=(True, 1.0, 1.0)), "alpha must be 3 numbers within +-1e6, got (True, 1.0, 1.0)"),
           (dict(B=1, S=1, n=1, D=1, alpha=(1.0, 1e6 + 0.5, 1.0)), "alpha must be 3 numbers within +-1e6")]
    for fields, message in bad:
        with pytest.raises(ValueError) as err:
            CaseParams(**fields).validated()
        assert str(err.value).startswith(message), (fields, str(err.value))


def test_expanded_inputs_repeat_along_their_outermost_dimension_longer_than_one():
    from fuzz.cases import _expand_dim
    assert [_expand_dim(torch.zeros(s)) for s in ((2, 3), (1, 2, 3), (1, 1, 3), (1, 1), ())] == [0, 1, 2, 0, 0]


def test_rounding_to_a_narrow_dtype_clamps_into_its_range_and_fp32_is_not_clamped():
    from fuzz.cases import _rounded
    big = torch.tensor([1e300, -1e300, 1.5], dtype=torch.float64)
    for dt in (torch.bfloat16, torch.float16):
        m = torch.finfo(dt).max
        assert torch.equal(_rounded(big, dt), torch.tensor([m, -m, 1.5], dtype=dt))
    assert torch.equal(_rounded(big, torch.float32), torch.tensor([float("inf"), -float("inf"), 1.5]))


def test_a_long_malformed_mapping_is_cut_to_two_hundred_characters():
    with pytest.raises(ValueError) as err:
        CaseParams.from_dict(dict(CaseParams(1, 1, 1, 2).to_dict(), arg_layouts=[["phi", "x" * 300]]))
    assert len(str(err.value)) == 200 and str(err.value).startswith("arg_layouts must map input names to names, got ")


def test_context_lists_only_the_fields_off_their_defaults():
    assert CaseParams(1, 1, 1, 2).context() == {}
    assert CaseParams(1, 1, 1, 2, grad_mode="no_grad", calls=2, first_call=True).context() == \
        {"grad_mode": "no_grad", "calls": 2, "first_call": True}


def test_capability_queries_name_dtypes_layouts_and_gamma():
    p = CaseParams(1, 2, 4, 8, use_gamma=False, arg_dtypes=(("phi", "bf16"),), layout="offset",
                   arg_layouts=(("bias", "strided"),))
    q = p.capability_query("cpu")
    assert (q["device"], q["x_dtype"], q["n"], q["D"], q["T"], q["dtypes"], q["gamma"]) == \
        ("cpu", "bf16", 4, 8, 2, {"phi": "bf16"}, False)
    assert set(q["layouts"]) == {"x", "dh_in", "bias"} and all(v != ("contiguous",) for v in q["layouts"].values())
    assert CaseParams(1, 2, 4, 8).capability_query("cpu")["layouts"] == {}
    # padded rows of a one-row gamma (n = 1) are contiguous: the layout vanished, nothing to refuse
    assert CaseParams(1, 2, 1, 8, arg_layouts=(("gamma", "strided"),)).capability_query("cpu")["layouts"] == {}


def test_values_past_two_to_the_thirty_two_have_their_own_stream():
    from fuzz.cases import uniform
    low = uniform(3, "x", (4,), "cpu", start=0)
    high = uniform(3, "x", (4,), "cpu", start=1 << 32)
    assert not torch.equal(low, high)
    # pinned: a change here changes every large-tier report's tensors
    assert high.tolist() == [0.21526074409484863, 0.9579895734786987, 0.06370294094085693, 0.7901060581207275]


def test_integer_ranges_admit_their_edge_and_refuse_past_it():
    base = dict(B=1, S=1, n=1, D=2)
    for k, top in (("seed", 1 << 62), ("zero_tokens", 1 << 24), ("outliers", 1 << 24)):
        CaseParams(**base, **{k: top}).validated()
        with pytest.raises(ValueError) as err:
            CaseParams(**base, **{k: top + 1}).validated()
        assert str(err.value) == f"case parameter {k} must be an int in [0, {top}], got {top + 1}"
        with pytest.raises(ValueError, match=f"case parameter {k} must be an int"):
            CaseParams(**base, **{k: True}).validated()


def test_arg_lists_must_name_each_input_once_in_sorted_order():
    for pairs in ((("phi", "offset"), ("phi", "strided")), (("phi", "offset"), ("bias", "offset"))):
        with pytest.raises(ValueError) as err:
            CaseParams(1, 2, 2, 4, arg_layouts=pairs).validated()
        assert str(err.value) == f"arg_layouts must name each input once, in sorted order, got {pairs!r}"
    with pytest.raises(ValueError) as err:
        CaseParams(1, 2, 2, 4, arg_layouts=(("phi", "diagonal"),)).validated()
    assert str(err.value) == f"arg_layouts: phi cannot be 'diagonal' (allowed: {ARG_LAYOUTS['phi']})"
    with pytest.raises(ValueError, match="^calls must be 1 or 2"):
        CaseParams(1, 2, 2, 4, calls=3).validated()


def test_short_names_every_departure_once():
    p = CaseParams(1, 2, 2, 4, seed=3, layout="offset", arg_layouts=(("bias", "strided"), ("phi", "offset")),
                   arg_dtypes=(("phi", "bf16"),), calls=2, grad_mode="no_grad")
    assert p.short() == ("B=1 S=2 n=2 D=4 bf16 seed=3 layout=offset bias:strided phi:offset phi:bf16 "
                         "grad_mode=no_grad calls=2")
    assert CaseParams(1, 2, 2, 4).input_layouts() == {}
    assert CaseParams(1, 2, 2, 4, layout="strided").input_layouts() == {"x": "strided", "dh_in": "strided"}


def test_an_expanded_input_with_every_dimension_one_is_itself():
    from fuzz.cases import _layout
    t = torch.full((1, 1), 3.0)
    assert torch.equal(_layout(t, "expanded"), t)
