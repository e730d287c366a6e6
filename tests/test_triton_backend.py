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
from fuzz.cases import _layout as cases_layout  # noqa: E402
from fuzz.check import run_case  # noqa: E402
from fuzz.guards import guarded  # noqa: E402
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
    # and three TF32 products are declared as such (2^-21 per operand), not as fp32
    base = {"tf32x3": "tf32x3", "ieee": "fp32"}.get(tm.DOT_PRECISION)
    if base:
        assert caps.gemm_precision_of("dx", "fp32") == caps.gemm_precision_of("h_mix", "fp32") == base
        assert caps.gemm_precision_of("dx", "bf16") == ("tf32" if tm.DX16_DOT_PRECISION == "tf32" else base)


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


def _gpu_launches(monkeypatch, B, S, n, D, x_dtype, layout, use_gamma):
    """The kernel launches of one backward and one forward call, configured as on a GPU
    (nothing is launched), on inputs laid out as the fuzzer lays them out, each inside guard
    regions as run_case passes them. Values do not matter here: empty tensors."""
    monkeypatch.setattr(tm, "INTERPRET", False)
    F, e = n * n + 2 * n, lambda *shape, dt=torch.float32: torch.empty(shape, dtype=dt)  # noqa: E731
    xdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[x_dtype]
    x, dh_in = (cases_layout(e(*shape, dt=xdt), layout) for shape in ((B, S, n, D), (B, S, D)))
    bwd = [x, e(F, n * D), e(3), e(F), e(B, S), e(B, S, F), e(B, S, n), e(B, S, n), dh_in,
           e(B, S, n), e(B, S, n, n), e(n, D) if use_gamma else None]
    bwd = [None if t is None else guarded(t)[0] for t in bwd]
    plan = tm._BackwardPlan(*bwd)
    _, fwd = tm._forward_launches(*(bwd[i] for i in (0, 1, 2, 3, 11)))
    return list(plan.launches.values()) + fwd


def test_every_launch_is_a_reachable_variant(monkeypatch):
    """What warm_up() compiles (reachable_variants) covers every launch of fuzz-like inputs:
    all n, x dtypes, layouts (misaligned storage offset, padded rows, copied transposes),
    odd/aligned/large D, gamma or not. Every launch passes 16-byte aligned pointers of the
    dtypes the variant assumes, and i32 integers (not specialized, see _kernel)."""
    monkeypatch.setattr(tm, "INTERPRET", False)
    reachable = {tm._variant(getattr(tm, name), getattr(torch, dt), meta) for name, dt, meta in tm.reachable_variants()}
    assert len(reachable) <= 250        # few variants: all of them compile before a run
    seen = set()
    # (D, S, layout): aligned and odd rows, token counts that are multiples of 16 or not
    forms = [(3, 2, "contiguous"), (24, 16, "contiguous"), (24, 2, "contiguous"), (3, 16, "contiguous"),
             (17, 2, "strided"), (100, 16, "offset"), (8, 2, "transposed"), (1, 16, "offset")]
    cases = [(n, dt) + f for n in range(1, 9) for dt in ("bf16", "fp16", "fp32") for f in forms]
    cases += [(n, "bf16", D, 2, "contiguous") for n in range(1, 9) for D in (7168, 16383)]  # wider kernel (4) blocks
    for i, (n, dt, D, S, layout) in enumerate(cases):
        case = (1 + i % 2, S, n, D, dt, layout, i % 3 != 0)
        for launch in _gpu_launches(monkeypatch, *case):
            key = launch.variant()
            assert key in reachable, f"{case}: {key} is not in reachable_variants()"
            seen.add(key)
            names = [a for a in tm.inspect.signature(launch.kernel.fn).parameters if a not in launch.meta]
            for name, arg in zip(names, launch.args):
                if isinstance(arg, torch.Tensor):
                    assert arg.data_ptr() % 16 == 0, f"{case}: {name} misaligned"
                    assert arg.dtype == (launch.x_dtype if name in tm.X_POINTERS else torch.float32), name
                else:
                    assert isinstance(arg, int) and 0 <= arg < 2**31, (name, arg)
    # and every listed variant is reached (kernel (4)'s widest column blocks need larger D: see below)
    assert not {k[0] for k in reachable - seen} - {"_bwd_dgamma_kernel"}


def test_finalize_column_classes_are_all_listed(monkeypatch):
    """Kernel (4)'s variant depends on K = n*D: every K the capabilities admit maps to a
    (column block, K % 4) class that reachable_variants() lists."""
    monkeypatch.setattr(tm, "INTERPRET", False)
    listed = {(m["FP"], m["BLOCK_K"], m["VEC"])
              for name, _, m in tm.reachable_variants() if name == "_bwd_dgamma_kernel"}
    for n in range(1, tm.N_MAX + 1):
        FP, bk4 = tm._n_class(n)["FP"], tm._bwd_config(n)["bk4"]
        for D in range(1, tm.D_MAX + 1):
            K = n * D
            assert (FP, tm._block_k(K, bk4), 4 if K % 4 == 0 else 1) in listed, (n, D)


def test_warm_up_statistics():
    st = tm.backend.warm_up()
    assert st["kernels"] == len(tm.reachable_variants())
    if tm.INTERPRET:     # nothing to compile there
        assert st["compiled"] == 0 and st["interpreted"]
    else:
        assert st["kernels"] > 0 and "compile_seconds" in st
        before = tm.backend.stats()["compiles"]
        tm.backend.backward(*make_inputs(CaseParams(1, 5, 4, 64, "bf16", seed=11), DEVICE).backward_args())
        assert tm.backend.stats()["compiles"] == before    # found in the disk cache the warm-up filled


# Every kernel compiles for sm_90 (H100) without a GPU, with the compile-time arguments of a
# variant the fuzzer reaches (bf16, n=4, aligned rows). Runs in a subprocess without
# TRITON_INTERPRET: the interpreter replaces triton's own @jit helpers (tl.sum, tl.cdiv).
COMPILE_SCRIPT = textwrap.dedent("""
    import inspect, os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import torch, triton
    try:
        from triton.compiler import ASTSource
        from triton.backends.compiler import GPUTarget
    except ImportError as exc:
        print("NOAPI", exc); sys.exit(0)
    import impls.triton_mhc as tm
    metas = dict(tm._bwd_metas(4, torch.bfloat16, 8, 16, 4 * 7168))
    metas.update({"fwd_" + k if k == "token" else k: m for k, m in tm._fwd_metas(4, torch.bfloat16, 8).items()})
    for key, meta in metas.items():
        fn = getattr(tm, tm._KERNELS[key])
        # sizes and strides are runtime values: no ==1 / %16 variants per shape
        ints = [a for a in fn.arg_names if a not in meta and not a.endswith("_ptr")]
        assert ints and set(ints) <= set(fn.do_not_specialize), (fn.__name__, ints, fn.do_not_specialize)
        const = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
        sig = {a: "constexpr" if a in const else ("*bf16" if a in tm.X_POINTERS else "*fp32")
               if a.endswith("_ptr") else "i32" for a in fn.arg_names}
        opts = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
        k = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32), options=opts)
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
    assert out.stdout.count("compiled") == 7, out.stdout


def test_cached_launch_setup_follows_the_overrides_and_matches_the_metas(monkeypatch):
    """_bwd_setup caches a call's config and launch parameters: they are _bwd_config's and
    _bwd_metas' own, with each kernel's variant key, and a change of BWD_OVERRIDES (the bench's
    --tune) is a new key, never a stale entry."""
    overrides = tuple(sorted(tm.BWD_OVERRIDES.items()))
    cfg, metas = tm._bwd_setup(4, torch.bfloat16, 8, 1, 4 * 2560, 0, 0, overrides)
    assert cfg == tm._bwd_config(4, tm._dx_dot_precision(True))
    assert {k: m for k, (m, _) in metas.items()} == tm._bwd_metas(4, torch.bfloat16, 8, 1, 4 * 2560)
    assert metas["dx"][1] == tm._variant(tm._bwd_dx_kernel, torch.bfloat16, metas["dx"][0])
    monkeypatch.setattr(tm, "BWD_OVERRIDES", {"bt2": 16})
    tuned, tuned_metas = tm._bwd_setup(4, torch.bfloat16, 8, 1, 4 * 2560, 0, 0, (("bt2", 16),))
    assert tuned["bt2"] == 16 and tuned_metas["dx"][0]["BLOCK_T"] == 16 and cfg["bt2"] != 16
