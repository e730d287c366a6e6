"""Planted bugs: backends that are golden with one defect each, of the kinds real kernels ship.

Each is a plugin (``tests.mutants:<name>``), never an edit of real code. `expected` is the
failure kind the harness must report for it. The fuzzer must kill every one, fast, while
golden and the real backends raise no alarm."""
from __future__ import annotations

import ctypes
import random
import time

import torch

from fuzz.kinds import FailureKind
from impls.golden import backward_terms
from impls.registry import Capabilities, check_inputs


class Mutant:
    """Golden's math with `bug(terms, args)` rewriting its outputs."""
    name = "mutant"
    expected = FailureKind.TOLERANCE
    capabilities = Capabilities(deterministic=True, has_forward=False)
    description = ""

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)
        args = dict(x=x, phi=phi, alpha=alpha, bias=bias, inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre,
                    h_post=h_post, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, gamma=gamma)
        r = self.bug(backward_terms(**args), args)
        return r["dx"], r["dphi"], r["dalpha"], r["dbias"], r["dgamma"]

    def bug(self, r, a):
        return r


def _recombine(r, a, dh_mix=None, dvec_inv=None, operands=lambda t: t):
    """Recompute the outputs that depend on dh_mix / dvec_inv after a planted change;
    `operands` is applied to both GEMMs' operands (e.g. rounding them to TF32)."""
    x = a["x"]
    B, S, n, D = x.shape
    dh_mix = operands(r["dh_mix"] if dh_mix is None else dh_mix)
    dvec_mm = dh_mix @ operands(a["phi"].float())
    dvec_inv = r["dvec_inv"] if dvec_inv is None else dvec_inv
    out = dict(r)
    out["dx"] = (dvec_mm * r["gamma_flat"] + dvec_inv + r["dvec_hin"]).reshape(B, S, n, D).to(x.dtype)
    out["dgamma"] = (r["vec_x"] * dvec_mm).sum((0, 1)).reshape(n, D)
    out["dphi"] = torch.einsum("bsf,bsk->fk", dh_mix, operands(r["xg"]))
    return out


def _with_inv_rms(r, a, inv_rms):
    """Outputs when the backward uses its own (wrong) inv_rms instead of the saved one."""
    n, D = a["x"].shape[2], a["x"].shape[3]
    dh_mix = r["g"] * inv_rms[..., None]
    dinv = (r["g"] * r["h_mix"]).sum(-1)
    dvec_inv = -(dinv * inv_rms.pow(3) / (n * D))[..., None] * r["vec_x"]
    return _recombine(r, a, dh_mix=dh_mix, dvec_inv=dvec_inv)


# ---------------------------------------------------------------- the three historical bugs
class Stream0Only(Mutant):
    name = "stream0_only"
    description = "dx written for stream 0 only (launch grid (B*S, 1) instead of (B*S, n))"

    def bug(self, r, a):
        r["dx"] = r["dx"].clone()
        r["dx"][:, :, 1:] = 0
        return r


class DbiasResTwice(Mutant):
    name = "dbias_res_twice"
    description = "dbias of the h_res part summed twice by a nested loop"

    def bug(self, r, a):
        n = a["x"].shape[2]
        r["dbias"] = r["dbias"].clone()
        r["dbias"][2 * n:] *= 2
        return r


class DgammaNoInvRmsRes(Mutant):
    name = "dgamma_no_inv_rms_res"
    description = "dgamma computed without inv_rms on the h_res part of dh_mix @ phi"

    def bug(self, r, a):
        n = a["x"].shape[2]
        dh_mix = r["dh_mix"].clone()
        dh_mix[..., 2 * n:] = r["g"][..., 2 * n:]
        out = dict(r)
        out["dgamma"] = _recombine(r, a, dh_mix=dh_mix)["dgamma"]
        return out


# ---------------------------------------------------------------- eleven more kinds of kernel bug
class DTailUnmasked(Mutant):
    name = "d_tail_dropped"
    description = "hidden dim processed in blocks of 16 with the tail block dropped"

    def bug(self, r, a):
        D = a["x"].shape[3]
        full = (D // 16) * 16
        if full == D:
            return r
        r["dx"] = r["dx"].clone()
        r["dx"][..., full:] = 0
        r["dgamma"] = r["dgamma"].clone()
        r["dgamma"][:, full:] = 0
        return r


class LastTokenBlockSkipped(Mutant):
    name = "last_token_block_skipped"
    description = "grid of T // 64 token blocks instead of cdiv(T, 64): the ragged last block is skipped"

    def bug(self, r, a):
        B, S, n, D = a["x"].shape
        T = B * S
        keep = (T // 64) * 64
        if keep == T:
            return r
        mask = (torch.arange(T, device=a["x"].device) < keep).reshape(B, S)
        cut = {k: (v * mask.reshape(B, S, *([1] * (v.dim() - 2))).to(v.dtype) if k in ("dh_in", "dh_post", "dh_res")
                   else v) for k, v in a.items()}
        return backward_terms(**cut)


class BatchDropped(Mutant):
    name = "batch_dropped"
    description = "kernel indexes tokens by S only: batches after the first are never touched"

    def bug(self, r, a):
        B = a["x"].shape[0]
        if B == 1:
            return r
        cut = dict(a)
        for k in ("dh_in", "dh_post", "dh_res"):
            v = a[k].clone()
            v[1:] = 0
            cut[k] = v
        return backward_terms(**cut)


class AssumesContiguous(Mutant):
    name = "assumes_contiguous"
    description = "reads x and dh_in through contiguous strides from the data pointer"

    def bug(self, r, a):
        fixed = dict(a)
        for k in ("x", "dh_in"):
            t = a[k]
            if not t.is_contiguous():
                fixed[k] = torch.as_strided(t, t.shape, torch.empty(t.shape).stride(), t.storage_offset())
        return backward_terms(**fixed) if fixed is not a else r


class NHardcoded(Mutant):
    name = "n_hardcoded_4"
    description = "the RMS-norm gradient divides by 4*D: n hard-coded to the production value"

    def bug(self, r, a):
        n = a["x"].shape[2]
        return _recombine(r, a, dvec_inv=r["dvec_inv"] * n / 4)


class LowPrecisionTokenSum(Mutant):
    name = "bf16_token_accumulation"
    description = "dphi and dgamma accumulated over tokens in bf16"

    def bug(self, r, a):
        B, S, n, D = a["x"].shape
        dh_mix = r["dh_mix"].reshape(B * S, -1)
        xg = r["xg"].reshape(B * S, -1)
        vx = r["vec_x"].reshape(B * S, -1)
        dvec_mm = (r["dh_mix"] @ a["phi"].float()).reshape(B * S, -1)
        dphi = torch.zeros(dh_mix.shape[1], xg.shape[1], dtype=torch.bfloat16, device=xg.device)
        dgamma = torch.zeros(xg.shape[1], dtype=torch.bfloat16, device=xg.device)
        for t in range(B * S):
            dphi += (dh_mix[t, :, None] * xg[t, None, :]).to(torch.bfloat16)
            dgamma += (vx[t] * dvec_mm[t]).to(torch.bfloat16)
        r["dphi"], r["dgamma"] = dphi.float(), dgamma.float().reshape(n, D)
        return r


class NormEpsMismatch(Mutant):
    name = "norm_eps_mismatch"
    description = "backward recomputes inv_rms with eps=1e-5 while the forward used 1e-6"

    def bug(self, r, a):
        inv = torch.rsqrt(r["vec_x"].square().mean(-1) + 1e-5)
        return _with_inv_rms(r, a, inv)


class LowPrecisionSumSq(Mutant):
    name = "sumsq_in_x_dtype"
    description = "backward recomputes sum(x^2) accumulating in x's dtype (fp16 overflows)"

    def bug(self, r, a):
        x = a["x"]
        B, S, n, D = x.shape
        sq = x.reshape(B, S, n * D)
        acc = torch.zeros(B, S, dtype=x.dtype, device=x.device)
        for j in range(n * D):
            acc = acc + sq[..., j] * sq[..., j]
        inv = torch.rsqrt(acc.float() / (n * D) + 1e-6)
        return _with_inv_rms(r, a, inv)


class WrongSign(Mutant):
    name = "wrong_sign_rms_term"
    description = "the RMS-norm term of dx added instead of subtracted"

    def bug(self, r, a):
        return _recombine(r, a, dvec_inv=-r["dvec_inv"])


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32 (10 stored significand bits, to nearest even): what a
    tensor core reads when an fp32 GEMM runs in TF32 mode."""
    i = t.float().contiguous().view(torch.int32)
    i = (i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF
    return i.view(torch.float32).reshape(t.shape)


class UndeclaredTF32(Mutant):
    name = "undeclared_tf32"
    description = "the token GEMMs run on TF32 tensor cores while the backend declares fp32"

    def bug(self, r, a):   # both token GEMMs on TF32 operands, accumulated in fp32
        return _recombine(r, a, operands=_tf32)


class TF32Declared(UndeclaredTF32):
    """Not a mutant: the same TF32 products, declared. The bounds widen by TF32's unit roundoff,
    so it must raise no alarm (the control of undeclared_tf32)."""
    name = "tf32_declared"
    capabilities = Capabilities(deterministic=True, has_forward=False, gemm_precision="tf32")


tf32_declared = TF32Declared()


class RacyDoubleCount(Mutant):
    name = "racy_double_count"
    description = "a race lets two token blocks both add their dbias partial: sometimes counted twice"
    capabilities = Capabilities(deterministic=False)

    def bug(self, r, a):
        n = a["x"].shape[2]
        if random.random() < 0.5:
            r["dbias"] = r["dbias"].clone()
            r["dbias"][:n] += r["dh_pre2"][0, 0]
        return r


# ---------------------------------------------------------------- misbehaviour the harness must survive
class Segfaults(Mutant):
    name = "segfaults"
    expected = FailureKind.CRASH
    description = "dereferences a null pointer (segfault) when T >= 2"

    def bug(self, r, a):
        if a["x"].shape[0] * a["x"].shape[1] >= 2:
            ctypes.string_at(0)
        return r


class Hangs(Mutant):
    name = "hangs"
    expected = FailureKind.TIMEOUT
    description = "spins forever when D >= 2"

    def bug(self, r, a):
        if a["x"].shape[3] >= 2:
            while True:
                time.sleep(1)
        return r


class WritesOutOfBounds(Mutant):
    name = "writes_out_of_bounds"
    expected = FailureKind.OUT_OF_BOUNDS
    description = "stores 16 bytes just past the last element of dh_in (a store mask off by one)"

    def bug(self, r, a):
        t = a["dh_in"]
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        end = (t.storage_offset() + last + 1) * t.element_size()      # byte just past the data
        storage = t.untyped_storage()
        if end + 16 <= storage.nbytes():   # same on CPU and GPU: a raw store into the neighbour bytes
            torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage, end, (16,), (1,)).fill_(0x7F)
        return r


class MutatesInput(Mutant):
    name = "mutates_input"
    expected = FailureKind.INPUT_MUTATED
    description = "uses dh_post as scratch space and leaves it scaled"

    def bug(self, r, a):
        a["dh_post"].mul_(0.5)
        return r


class Nondeterministic(Mutant):
    name = "nondeterministic"
    expected = FailureKind.NONDETERMINISTIC
    description = "declares bitwise determinism, but dphi's reduction order varies run to run"

    calls = 0

    def bug(self, r, a):
        # one ulp up on odd calls, down on even ones: two calls in a row always differ (a coin
        # flip made them agree in one case of two, and a test of 8 cases fail one run in 256)
        Nondeterministic.calls += 1
        r["dphi"] = r["dphi"].clone()
        first = r["dphi"].view(-1)[:1]
        away = torch.full_like(first, (-1.0) ** Nondeterministic.calls * 1e30)
        r["dphi"].view(-1)[:1] = torch.nextafter(first, away)
        return r


class Raises(Mutant):
    name = "raises"
    expected = FailureKind.EXCEPTION
    description = "raises a runtime error on inputs whose storage offset is not 16-byte aligned"

    def bug(self, r, a):
        if a["x"].data_ptr() % 16:
            raise RuntimeError("CUDA error: misaligned address")
        return r


class WrongDtype(Mutant):
    name = "wrong_dtype"
    expected = FailureKind.CONTRACT
    description = "returns dx in fp32 whatever x's dtype"

    def bug(self, r, a):
        r["dx"] = r["dx"].float()
        return r


class NanWithoutEps(Mutant):
    name = "nan_without_eps"
    expected = FailureKind.NONFINITE
    description = "recomputes inv_rms without eps: an all-zero token gives 0 * inf = NaN"

    def bug(self, r, a):
        inv = torch.rsqrt(r["vec_x"].square().mean(-1))
        return _with_inv_rms(r, a, inv)


class AcceptsUnsupported(Mutant):
    name = "accepts_unsupported"
    expected = FailureKind.ACCEPTED_UNSUPPORTED
    description = "declares n=4 only but computes any n without refusing"

    capabilities = Capabilities(deterministic=True, n_values=(4,))

    def backward(self, *args):
        return tuple(backward_terms(*args)[k] for k in ("dx", "dphi", "dalpha", "dbias", "dgamma"))


class TwoBugs(Mutant):
    name = "two_bugs"
    description = ("two bugs: dgamma zero whenever gamma is None (half the cases), and dx wrong only for "
                   "n=3 and T >= 17 (a few cases in a hundred): the search must go on past the first")
    expected_signatures = ("two_bugs|tolerance|dgamma", "two_bugs|tolerance|dx")

    def bug(self, r, a):
        B, S, n, D = a["x"].shape
        if a["gamma"] is None:
            r["dgamma"] = torch.zeros_like(r["dgamma"])
        if n == 3 and B * S >= 17:
            r["dx"] = r["dx"] * 1.5
        return r


class RareBug(Mutant):
    name = "rare_bug"
    description = "dx wrong only when T >= 5 and D >= 9: not on the simplest cases (not in ALL)"

    def bug(self, r, a):
        B, S, n, D = a["x"].shape
        if B * S >= 5 and D >= 9:
            r["dx"] = r["dx"] * 1.5
        return r


rare_bug = RareBug()

CORRECTNESS = [Stream0Only, DbiasResTwice, DgammaNoInvRmsRes, DTailUnmasked, LastTokenBlockSkipped,
               BatchDropped, AssumesContiguous, NHardcoded, LowPrecisionTokenSum, NormEpsMismatch,
               LowPrecisionSumSq, WrongSign, RacyDoubleCount, UndeclaredTF32, TwoBugs]
CONTAINMENT = [Segfaults, Hangs, WritesOutOfBounds, MutatesInput, Nondeterministic, Raises, WrongDtype,
               NanWithoutEps, AcceptsUnsupported]
from tests.mutants.memory import MEMORY  # noqa: E402  (memory.py builds on Mutant above)
from tests.mutants.context import CONTEXT  # noqa: E402  (context and call-history bugs)

ALL = CORRECTNESS + CONTAINMENT + MEMORY + CONTEXT

for _cls in ALL:
    globals()[_cls.name] = _cls()


def targets(kinds=ALL) -> list:
    """Plugin targets of the mutants, e.g. 'tests.mutants:stream0_only'."""
    return [f"{__name__}:{cls.name}" for cls in kinds]
