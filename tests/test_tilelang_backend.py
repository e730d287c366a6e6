"""The TileLang backend (impls/tilelang_mhc.py).

Without a GPU (CI): every kernel the fuzzer can reach lowers to CUDA source for sm_90a and
compiles with nvcc (when nvcc is installed), one compile per kernel and D-class in a process,
the backend says why it is unavailable, and inputs outside its capabilities are refused.
With a CUDA device: the results against the float64 golden with bounds derived from magnitude
companions (docs/ERROR-BOUNDS.md), bitwise determinism, and one compile per (n, D-class,
dtype) across token counts and hidden sizes.
"""
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

tilelang = pytest.importorskip("tilelang", reason="tilelang not installed")

import impls.tilelang_mhc as tlm  # noqa: E402
from impls.golden import HC_EPS, mhc_forward, mhc_pre_backward_manual, mix_width  # noqa: E402
from impls.registry import UnsupportedInputError, check_inputs, validate_backend  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


# ------------------------------------------------------------------ CPU: build and contract

def test_reachable_kernels_are_few():
    keys = tlm.reachable_kernels()
    # K1 per (n, dtype), K3 per n, K2 per (n, D-class, dtype): D itself is a runtime value
    assert len({k for k in keys if k[0] == "tok"}) == len(tlm.N_VALUES) * len(tlm.X_DTYPES)
    assert len({k for k in keys if k[0] == "reduce"}) == len(tlm.N_VALUES)
    assert len(keys) <= 48


def ci_kernel_subset() -> list:
    """Every kernel (K1, K2, K3) at the production shape's keys (n=4, D=7168, bf16), and K2, the
    one whose code changes most with its key, at the other extreme too (n=8, fp32, the smallest
    D-class): the CI's sample of the 41 reachable kernels. The whole set is lowered and compiled
    under -m slow (the nightly)."""
    keys = set(tlm.kernel_keys(4, 7168, "bf16")) | {k for k in tlm.kernel_keys(8, 16, "fp32") if k[0] == "col"}
    assert {k[0] for k in keys} == {"tok", "col", "reduce"} and len(keys) == 4
    return sorted(keys, key=str)


@pytest.mark.parametrize("scope", ["ci-sample", pytest.param("all", marks=pytest.mark.slow)])
def test_kernels_lower_for_sm90a(scope):
    keys = ci_kernel_subset() if scope == "ci-sample" else tlm.reachable_kernels()
    src = tlm.lower_kernels("sm_90a", keys=keys)
    assert set(src) == set(keys)
    for key, low in src.items():
        assert "__global__" in low.source, key
        assert low.smem_bytes <= tlm.SMEM_LIMIT, (key, low.smem_bytes)     # else the launch fails
        assert low.threads <= 1024, key
        if key[0] == "col":          # K2 streams its tiles with TMA on sm_90a (bulk async copies)
            assert "tma_load" in low.source and "tma_store" in low.source, key
        if key[0] == "tok":          # K1 reads x and dh_in in 16-byte (or wider) vectors
            assert "*(uint4*)(x +" in low.source or "*(float4*)(x +" in low.source, key


def test_d_classes_cover_every_admitted_hidden_size():
    for n in tlm.N_VALUES:
        for dt in tlm.X_DTYPES:
            classes = tlm.d_classes(n, dt)
            assert 1 <= len(classes) <= 3, (n, dt, classes)
            for D in (16, 48, 64, 80, 128, 144, 2576, 7168, 16384):
                assert tlm.d_class(n, D, dt) in classes
                assert tlm.kernel_keys(n, D, dt) == tlm.kernel_keys(n, classes[tlm.d_class(n, D, dt)], dt)
    assert tlm.d_class(4, 2560, "bf16") == tlm.d_class(4, 7168, "bf16") == 256
    assert tlm.d_class(4, 80, "bf16") == 128 and tlm.d_class(4, 48, "bf16") == 64


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_every_reachable_kernel_compiles_with_nvcc():
    built = tlm.precompile(arch="sm_90a")           # worker processes; fills TileLang's disk cache
    assert set(built) == set(tlm.reachable_kernels())
    for key, (source, seconds) in built.items():
        assert "__global__" in source and seconds > 0, key


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_one_compile_per_kernel_and_d_class_in_process():
    before = tlm.compile_stats()["compiles"]
    k1, k2, k3 = tlm.get_kernels(4, 64, "bf16", "sm_90a")
    for k in (k1, k2, k3):
        assert "__global__" in k.get_kernel_source()
    first = tlm.compile_stats()["compiles"] - before
    assert first <= 3                                  # fewer if an earlier test compiled K1/K3
    for D in (16, 48, 64):                             # the same D-class: nothing new
        assert tlm.get_kernels(4, D, "bf16", "sm_90a") == (k1, k2, k3)
    assert tlm.compile_stats()["compiles"] - before == first
    o1, o2, o3 = tlm.get_kernels(4, 96, "bf16", "sm_90a")   # next class: only K2 is new
    assert (o1, o3) == (k1, k3) and o2 is not k2
    assert tlm.compile_stats()["compiles"] - before == first + 1


def test_registry_contract():
    validate_backend(tlm.backend, "test")
    caps = tlm.backend.capabilities
    assert tlm.backend.name == "tilelang"
    assert caps.devices == ("cuda",) and caps.deterministic and caps.gemm_precision == "tf32"
    assert set(caps.n_values) == set(tlm.N_VALUES) and caps.d_multiple == 16 and caps.d_max == 16384
    assert set(tlm.compile_stats()) == {"compiles", "compile_seconds"}


@pytest.mark.skipif(HAS_CUDA, reason="checks the report on a machine without CUDA")
def test_unavailable_without_cuda():
    assert tlm.backend.unavailable_reason() == "no CUDA device"


def test_imports_and_reports_without_tilelang():
    code = textwrap.dedent("""
        import sys
        sys.modules["tilelang"] = None          # `import tilelang` now raises ImportError
        import impls.tilelang_mhc as tlm
        r = tlm.backend.unavailable_reason()
        assert r.startswith("tilelang not installed"), r
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def _args(B, S, n, D, dtype=torch.bfloat16, device="cpu", gamma=True, seed=0):
    """Backward arguments from the fp32 golden forward of random inputs."""
    g = torch.Generator().manual_seed(seed)
    F = mix_width(n)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(B, S, n, D).to(dtype)
    phi = r(F, n * D) / (n * D) ** 0.5
    alpha, bias = torch.tensor([0.8, 1.1, 0.9]), r(F) * 0.1
    gam = (1 + 0.25 * r(n, D)) if gamma else None
    _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(x, phi, alpha, bias, gam)
    dh_in, dh_post, dh_res = r(B, S, D).to(dtype), r(B, S, n), r(B, S, n, n)
    args = (x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gam)
    return tuple(a.to(device) if a is not None else None for a in args)


@pytest.mark.parametrize("n,D,dtype,why", [
    (3, 64, torch.bfloat16, "n=3"), (5, 64, torch.bfloat16, "n=5"), (1, 64, torch.float32, "n=1"),
    (4, 40, torch.bfloat16, "multiple of 16"), (4, 16400, torch.bfloat16, "16384"),
    (4, 64, torch.float64, "dtype"),
])
def test_refuses_unsupported_inputs(n, D, dtype, why):
    x = torch.zeros(1, 2, n, D, dtype=dtype)
    anywhere = dataclasses.replace(tlm.CAPABILITIES, devices=("cpu", "cuda"))   # judge shape/dtype on CPU
    with pytest.raises(UnsupportedInputError, match=why):
        check_inputs(anywhere, "tilelang", x)
    if dtype != torch.float64:
        with pytest.raises(UnsupportedInputError, match=why):
            tlm.MHCBackwardTileLang(1, 2, n, D)          # enforced without the registry too


def test_refuses_cpu_tensors():
    args = _args(1, 3, 4, 64)
    with pytest.raises(UnsupportedInputError, match="device cpu"):
        tlm.backend.backward(*args)
    with pytest.raises(UnsupportedInputError, match="must be"):
        tlm.backend.backward(args[0][0], *args[1:])       # x not [B,S,n,D]


# ------------------------------------------------------------------ GPU

def _truth_and_bounds(args, u_out):
    """float64 golden backward of the same (rounded) inputs, and each output's error bound
    tol = u_out*|truth| + k*u*M, M the magnitude companion (every term made non-negative).
    k*u: TF32 rounding of both GEMM operands (2 * 2^-11) plus fp32 sums, taken as 8 * 2^-11
    for the matrix-product outputs; the token sums of dbias/dalpha are fp32 over <= 4096
    tokens in blocks (256 * 2^-24)."""
    x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma = [
        a.double().cpu() if a is not None else None for a in args]
    B, S, n, D = x.shape
    ref = mhc_pre_backward_manual(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)
    T = B * S
    gam = torch.ones(n * D, dtype=torch.float64) if gamma is None else gamma.reshape(n * D)
    xa, dha = x.reshape(T, n * D).abs(), dh_in.reshape(T, D).abs()
    s = h_pre.reshape(T, n) - HC_EPS
    sp = h_post.reshape(T, n) / 2
    gr_m = torch.cat([(s * (1 - s)).abs() * (x.reshape(T, n, D).abs() * dha[:, None]).sum(-1),
                      (dh_post.reshape(T, n) * 2 * sp * (1 - sp)).abs(), dh_res.reshape(T, n * n).abs()], -1)
    a = alpha.abs()
    gs_m = gr_m * torch.cat([a[0].expand(n), a[1].expand(n), a[2].expand(n * n)])
    inv = inv_rms.reshape(T)
    dmix_m = gs_m * inv[:, None]
    coef_m = (gs_m * h_mix.reshape(T, -1).abs()).sum(-1) * inv ** 3 / (n * D)
    mm_m = dmix_m @ phi.abs()
    m_dx = mm_m * gam.abs() + coef_m[:, None] * xa + (h_pre.reshape(T, n).abs()[:, :, None] * dha[:, None]).reshape(T, -1)
    t_m = (h_mix.reshape(T, -1) * inv[:, None]).abs()
    ug, u32 = 8 * 2.0 ** -11, 256 * 2.0 ** -24
    tol = {
        "dx": u_out * ref[0].abs() + ug * m_dx.reshape(ref[0].shape),
        "dphi": ug * (dmix_m.t() @ (xa * gam.abs())),
        "dalpha": u32 * torch.stack([(gr_m[:, :n] * t_m[:, :n]).sum(), (gr_m[:, n:2 * n] * t_m[:, n:2 * n]).sum(),
                                     (gr_m[:, 2 * n:] * t_m[:, 2 * n:]).sum()]),
        "dbias": u32 * gr_m.sum(0),
        "dgamma": ug * (xa * mm_m).sum(0).reshape(n, D),
    }
    return ref, tol


GPU_CASES = [  # (B, S, n, D, dtype, gamma): T=1, token tails, every n, every dtype, gamma None, small tiles
    (1, 1, 4, 7168, torch.bfloat16, True),
    (2, 333, 4, 2560, torch.bfloat16, True),
    (3, 77, 6, 96, torch.float32, True),
    (2, 129, 8, 160, torch.float16, True),
    (1, 50, 2, 48, torch.bfloat16, False),
    (1, 1024, 4, 7168, torch.bfloat16, True),          # several token splits
]


@requires_cuda
@pytest.mark.parametrize("B,S,n,D,dtype,use_gamma", GPU_CASES)
def test_matches_float64_reference(B, S, n, D, dtype, use_gamma):
    args = _args(B, S, n, D, dtype, "cuda", gamma=use_gamma, seed=B * S + D)
    out = tlm.backend.backward(*args)
    u_out = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]
    ref, tol = _truth_and_bounds(args, u_out)
    assert out[0].dtype == dtype and all(o.dtype == torch.float32 for o in out[1:])
    for name, o, r in zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), out, ref):
        assert o.shape == r.shape, name
        err = (o.double().cpu() - r).abs()
        ratio = (err / tol[name].clamp_min(1e-300)).max().item()
        assert torch.isfinite(o).all() and ratio <= 1.0, f"{name}: worst error/bound {ratio:.3g}"


@requires_cuda
def test_bitwise_deterministic_and_layout_independent():
    args = _args(2, 700, 4, 256, torch.bfloat16, "cuda", seed=3)
    a = tlm.backend.backward(*args)
    b = tlm.backend.backward(*args)
    for name, u, v in zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), a, b):
        assert torch.equal(u, v), f"{name} differs between two identical calls"
    # a non-contiguous x / dh_in (made contiguous by the backend) gives the same bits
    x, dh = args[0], args[8]
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    dht = torch.empty(dh.shape[0], dh.shape[1], dh.shape[2] * 2, dtype=dh.dtype, device="cuda")[..., ::2]
    dht.copy_(dh)
    c = tlm.backend.backward(xt, *args[1:8], dht, *args[9:])
    for name, u, v in zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), a, c):
        assert torch.equal(u, v), f"{name} depends on the input layout"


@requires_cuda
def test_one_compile_per_d_class_across_token_counts_and_hidden_sizes():
    n = 6                             # n=6 fp16: no other GPU test compiles its kernels
    before = tlm.compile_stats()["compiles"]
    for T, D in ((1, 80), (37, 128), (1000, 96), (4097, 112), (5, 80)):   # one D-class (NC=128)
        args = _args(1, T, n, D, torch.float16, "cuda", seed=T)
        out = tlm.backend.backward(*args)
        ref, tol = _truth_and_bounds(args, 2.0 ** -11)
        err = (out[0].double().cpu() - ref[0]).abs()
        assert (err <= tol["dx"]).all(), (T, D)        # one kernel, right for every D it serves
    assert tlm.compile_stats()["compiles"] - before <= 3      # K1, K2, K3: compiled once


@requires_cuda
def test_available_on_gpu():
    major, _ = torch.cuda.get_device_capability()
    assert (tlm.backend.unavailable_reason() is None) == (major >= 9)
