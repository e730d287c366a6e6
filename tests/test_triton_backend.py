"""The Triton backend (impls/triton_mhc.py) against the float64 truth.

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton), so shapes stay small: the interpreter
costs ~2 ms per program and loop step. With a GPU the same tests run on CUDA.

Correctness goes through fuzz.check.run_case: it runs the float64 golden forward and
torch.autograd for the truth, derives each element's bound from the magnitude companion and
tolerances.yaml, and also checks the forward, input mutation and bitwise determinism."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

import impls.triton_mhc as tm  # noqa: E402
from fuzz.cases import CaseParams, make_inputs  # noqa: E402
from fuzz.check import run_case  # noqa: E402
from impls.golden import mhc_forward, mhc_pre_backward_manual  # noqa: E402
from impls.registry import UnsupportedInputError, validate_backend  # noqa: E402

DEVICE = "cpu" if tm.INTERPRET else "cuda"
if tm.backend.unavailable_reason():
    pytest.skip(f"triton backend unavailable: {tm.backend.unavailable_reason()}", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small cases covering: T=1, odd D (1, 3, 17, 33), n in 1..8, all x dtypes, gamma=None,
# non-contiguous x/dh_in (padded rows, inner stride != 1, misaligned storage offset), large
# and tiny scales, zero tokens, and T > 512 so dphi uses several token splits and the token
# kernel's grid-stride loop runs several blocks per program.
CASES = [
    CaseParams(1, 1, 4, 33, "bf16"),                                   # T = 1
    CaseParams(2, 3, 1, 1, "fp32"),                                    # n = 1, D = 1
    CaseParams(2, 5, 2, 3, "fp16"),
    CaseParams(1, 7, 8, 33, "bf16", use_gamma=False),                  # n = 8, gamma None
    CaseParams(3, 4, 4, 20, "fp32", layout="transposed"),              # inner stride != 1
    CaseParams(2, 6, 3, 17, "bf16", layout="strided", seed=3),         # padded rows
    CaseParams(1, 40, 4, 16, "fp16", layout="offset", seed=4),         # misaligned pointer
    CaseParams(2, 9, 6, 5, "bf16", x_scale=2.0, grad_scale=-3.0, zero_tokens=2, outliers=3),
    CaseParams(1, 600, 2, 8, "bf16", seed=5),                          # several dphi splits
]


def _ids(p):
    return f"B{p.B}S{p.S}n{p.n}D{p.D}-{p.x_dtype}-{p.layout}{'' if p.use_gamma else '-nogamma'}"


def test_registry_contract():
    validate_backend(tm.backend, "test")
    caps = tm.backend.capabilities
    assert tm.backend.name == "triton" and caps.deterministic and caps.has_forward
    assert DEVICE in caps.devices
    assert tm.backend.unavailable_reason() is None
    # one TF32 product only where declared: dx of 16-bit x (unless MHC_TRITON_DOT=tf32 says all)
    if tm.DOT_PRECISION != "tf32":
        assert caps.gemm_precision_of("dx", "fp32") == caps.gemm_precision_of("dphi", "bf16") == "fp32"
        assert caps.gemm_precision_of("dx", "bf16") == ("tf32" if tm.DX16_DOT_PRECISION == "tf32" else "fp32")


@pytest.mark.parametrize("params", CASES, ids=_ids)
def test_matches_float64_truth(params):
    res = run_case(tm.backend, params, DEVICE)   # backward, forward, determinism, no mutation
    assert res.status == "pass", res.message
    assert res.worst_ratio() < 1.0


@pytest.mark.parametrize("overrides", [dict(min_tokens3=32), dict(min_tokens3=32, bs4=4, prefetch2=False),
                                       dict(min_tokens3=32, bk4=16)],
                         ids=["19-splits", "no-prefetch", "3-finalize-blocks"])
def test_many_token_splits(monkeypatch, overrides):
    """More dphi token splits than kernel (4) loads at once (BLOCK_S), masked last chunk;
    kernel (4) with several column blocks."""
    monkeypatch.setattr(tm, "BWD_OVERRIDES", dict(overrides))
    p = CaseParams(1, 600, 2, 24, "fp32", seed=9)           # K = 48: 3 column blocks of 16
    inp = make_inputs(p, DEVICE)
    assert tm._BackwardPlan(*inp.backward_args()).nsplit == 19
    res = run_case(tm.backend, p, DEVICE)
    assert res.status == "pass", res.message


def test_direct_float64_reference():
    """Independent of fuzz/: the golden forward and manual backward on float64 copies.
    fp32 outputs must agree normwise to a few fp32 ulps of the sums' length (here <= 600 terms:
    bound 600 * 2^-24 ~ 3.6e-5); dx in bf16 to one bf16 rounding (2^-8) normwise."""
    torch.manual_seed(0)
    B, S, n, D = 2, 37, 4, 45
    F = n * n + 2 * n
    x = torch.randn(B, S, n, D).to(torch.bfloat16)
    phi, alpha, bias = torch.randn(F, n * D) / (n * D) ** 0.5, torch.tensor([0.9, 1.1, 0.7]), torch.randn(F) * 0.1
    gamma = torch.rand(n, D) + 0.5
    dh_in, dh_post, dh_res = torch.randn(B, S, D).to(torch.bfloat16), torch.randn(B, S, n), torch.randn(B, S, n, n)
    f64 = [t.double() for t in (x, phi, alpha, bias, gamma)]
    _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(*f64)
    saved = [t.float() for t in (inv_rms, h_mix, h_pre, h_post)]
    ref = mhc_pre_backward_manual(f64[0], f64[1], f64[2], f64[3], *[t.double() for t in saved],
                                  dh_in.double(), dh_post.double(), dh_res.double(), f64[4])
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    got = tm.mhc_backward_triton(*map(dev, (x, phi, alpha, bias, *saved, dh_in, dh_post, dh_res, gamma)))
    for name, g, r in zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), got, ref):
        bound = 2.0 ** -8 if name == "dx" else 600 * 2.0 ** -24
        rel = ((g.double().cpu() - r).norm() / r.norm()).item()
        assert rel <= bound, f"{name}: normwise error {rel:.3g} > {bound:.3g}"
    fwd = tm.mhc_forward_pre_triton_optimized(*map(dev, (x, phi, alpha, bias, gamma)))
    ref_f = mhc_forward(*f64)
    for name, g, r in zip(("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"), fwd, ref_f):
        bound = 2.0 ** -8 if name == "h_in" else 600 * 2.0 ** -24
        rel = ((g.double().cpu() - r).norm() / r.norm()).item()
        assert rel <= bound, f"{name}: normwise error {rel:.3g} > {bound:.3g}"


def test_bitwise_deterministic():
    inp = make_inputs(CaseParams(1, 300, 4, 24, "bf16", seed=7), DEVICE)
    a = tm.backend.backward(*inp.backward_args())
    b = tm.backend.backward(*inp.backward_args())
    for name, u, v in zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), a, b):
        assert torch.equal(u, v), f"{name} differs between two identical calls"


def test_refuses_unsupported_inputs():
    inp = make_inputs(CaseParams(1, 2, 9, 8, "bf16"), DEVICE)     # n = 9 > 8
    with pytest.raises(UnsupportedInputError, match="n=9"):
        tm.backend.backward(*inp.backward_args())
    with pytest.raises(UnsupportedInputError, match="n=9"):
        tm.mhc_backward_triton(*inp.backward_args())               # enforced without the registry too
    with pytest.raises(UnsupportedInputError):
        tm.backend.backward(inp.x[0], *inp.backward_args()[1:])    # x not [B,S,n,D]


def test_extra_memory_is_bounded():
    """No [T, n*D] fp32 intermediate: beyond the outputs only O(T*F) and <= 64 x [F, n*D]."""
    T, n, D = 1 << 16, 4, 8
    inp = make_inputs(CaseParams(1, T, n, D, "bf16"), "cpu")
    plan = tm._BackwardPlan(*inp.backward_args())                 # allocates, launches nothing
    F = n * n + 2 * n
    assert plan.nsplit <= 64 and plan.g1 <= 1024
    extra = [plan.dmix, plan.coef, plan.part1, plan.part3]
    assert sum(t.numel() for t in extra) <= 2 * T * F + T + 64 * F * n * D


def test_imports_without_triton():
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None            # makes `import triton` raise ImportError
        import impls.triton_mhc as tm
        r = tm.backend.unavailable_reason()
        assert r and "triton" in r, r
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# Every kernel compiles for sm_90 (H100) without a GPU. Runs in a subprocess without
# TRITON_INTERPRET: the interpreter replaces triton's own @jit helpers (tl.sum, tl.cdiv).
COMPILE_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    try:
        from triton.compiler import ASTSource
        from triton.backends.compiler import GPUTarget
    except ImportError as exc:
        print("NOAPI", exc); sys.exit(0)
    import impls.triton_mhc as tm
    bf = {"x_ptr": "*bf16", "dhin_ptr": "*bf16", "dx_ptr": "*bf16", "hin_ptr": "*bf16"}
    n, F, FP = 4, 24, 32
    kernels = [
        (tm._bwd_token_kernel, dict(N=n, F=F, W=F + 3, NP=4, NNP=16, BLOCK_T=4, BLOCK_D=256, HC_EPS=1e-6), 8),
        (tm._bwd_dx_kernel, dict(N=n, F=F, FP=FP, BLOCK_T=64, BLOCK_D=32, DOT_PREC="tf32x3", PREFETCH=True,
                                   XEV="evict_first", PEV="evict_last", SCM=".cs", SPLIT_ONCE=True), 4),
        (tm._bwd_dx_kernel, dict(N=n, F=F, FP=FP, BLOCK_T=32, BLOCK_D=128, DOT_PREC="tf32", PREFETCH=True,
                                   XEV="evict_first", PEV="evict_last", SCM=".cs", SPLIT_ONCE=False), 4),
        (tm._bwd_dphi_kernel, dict(N=n, F=F, FP=FP, BLOCK_T=64, BLOCK_D=128, SPLIT_BF16=True, INTERP=False,
                                   DOT_PREC="tf32x3"), 4),
        (tm._bwd_dgamma_kernel, dict(F=F, FP=FP, W=F + 3, WP=32, BLOCK_K=32, BLOCK_S=8, BLOCK_R=128,
                                     HAS_GAMMA=True), 4),
        (tm._fwd_mix_kernel, dict(N=n, F=F, FP=FP, BLOCK_T=64, BLOCK_D=64, HAS_GAMMA=True, DOT_PREC="tf32x3"), 4),
        (tm._fwd_token_kernel, dict(N=n, F=F, FP=FP, BLOCK_T=64, NORM_EPS=1e-6, HC_EPS=1e-6), 4),
        (tm._fwd_hin_kernel, dict(N=n, BLOCK_T=16, BLOCK_D=256), 4),
    ]
    for fn, const, warps in kernels:
        sig = {a: "constexpr" if a in const else (bf.get(a, "*fp32") if a.endswith("_ptr") else "i32")
               for a in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps})
        assert "cubin" in k.asm and k.asm["cubin"], fn.__name__
        print("compiled", fn.__name__)
""")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode == 0 and out.stdout.startswith("NOAPI"):
        pytest.skip(f"triton.compile/ASTSource/GPUTarget API missing: {out.stdout.strip()}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("compiled") == 8, out.stdout
