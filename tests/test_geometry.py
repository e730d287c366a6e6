"""The large tier's shapes (fuzz/geometry.py): past 32-bit offsets and grid limits, inside
each backend's declared capabilities, at its declared limits, and read from the kernels."""
import pytest
from hypothesis import given, settings, HealthCheck

from fuzz.geometry import GRID_Y_LIMIT, INDEX_LIMIT, large_shapes, token_axes
from fuzz.profiles import PROFILES, get_profile
from fuzz.strategies import cases
from impls.golden_backend import backend as golden
from impls.tilelang_mhc import backend as tilelang
from impls.triton_mhc import backend as triton

LARGE = PROFILES["large"].cuda
BACKENDS = [triton, tilelang, golden]


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_every_large_shape_is_inside_the_capabilities_and_limits(b):
    shapes = large_shapes(b.capabilities, LARGE)
    assert shapes
    for B, S, n, D, dt in shapes:
        assert b.capabilities.refusal(device="cuda", x_dtype=dt, n=n, D=D, T=B * S) is None
        assert B * S * n * D <= LARGE.max_elements and B * S <= LARGE.max_tokens


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_offsets_past_int32_and_grids_past_65535_blocks_are_reached(b):
    shapes = large_shapes(b.capabilities, LARGE)
    elements = [B * S * n * D for B, S, n, D, _ in shapes]
    assert shapes[0][1] * shapes[0][2] * shapes[0][3] > INDEX_LIMIT       # first (what a failure shrinks to)
    assert any(INDEX_LIMIT // 2 < e <= INDEX_LIMIT for e in elements)     # 16-bit byte offsets past 2^31
    tokens = {B * S for B, S, *_ in shapes}
    # every grid axis of a built-in kernel that grows with T: the first T past 65,535 blocks
    # is tried, unless the backend declares fewer tokens (then it is held to its max_tokens)
    for axis in token_axes():
        if axis.backend == b.name and axis.axis == "y":
            t = axis.first_t_past_limit()
            cap = b.capabilities.max_tokens
            assert t in tokens or (cap is not None and t > cap), axis
    assert GRID_Y_LIMIT * 16 + 1 in tokens or (b.capabilities.max_tokens or 1 << 62) < GRID_Y_LIMIT * 16 + 1


def test_declared_limits_are_held_to():
    shapes = large_shapes(triton.capabilities, LARGE)
    assert any(B * S == triton.capabilities.max_tokens for B, S, *_ in shapes)
    assert any(D == triton.capabilities.d_max for *_, D, _ in shapes)
    assert all(B * S <= triton.capabilities.max_tokens for B, S, *_ in shapes)


def test_geometry_is_read_from_the_triton_launch_configuration():
    from impls import triton_mhc as tm
    dx = [a for a in token_axes() if a.kernel.startswith("_bwd_dx_kernel")]
    assert {a.tokens_per_block for a in dx} == {tm._bwd_config(4, p, 1 << 20, 4096)["bt2"] for p in ("tf32", "tf32x3")}


def test_the_large_profile_draws_only_large_tier_shapes():
    allowed = {(B, S, n, D, dt) for B, S, n, D, dt in large_shapes(tilelang.capabilities, LARGE)}
    seen = []

    @settings(max_examples=30, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases(tilelang.capabilities, get_profile("large").cuda))
    def draw(p):
        seen.append((p.B, p.S, p.n, p.D, p.x_dtype))

    draw()
    assert seen and set(seen) <= allowed
    assert not get_profile("large").cpu.large          # on the CPU it is the nightly profile


def test_a_profile_file_may_switch_the_large_tier_on(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("base: large\ncuda: {large: false, max_elements: 4096}\n")
    prof = get_profile(str(f))
    assert not prof.cuda.large and prof.cuda.max_elements == 4096
    f.write_text("base: dev\ncuda: {large: 1}\n")
    with pytest.raises(ValueError, match="large: must be true or false"):
        get_profile(str(f))
