"""Planted bugs that a value comparison misses, or catches only by luck: an offset that wraps
in 32 bits, a launch grid one tile short, a read of scratch memory nobody wrote.

Each allocates what it returns or reads the way a kernel does (its output or workspace
first, from the memory the harness poisons: fuzz/poison.py), so that what it leaves unwritten
holds whatever that memory held."""
from __future__ import annotations

import dataclasses

import torch

from fuzz.kinds import FailureKind
from impls.golden import backward_terms
from impls.registry import check_inputs
from tests.mutants import Mutant, _recombine

INT32_LIMIT = 1 << 31


class LastTileUnwritten(Mutant):
    name = "last_tile_unwritten"
    expected = FailureKind.UNWRITTEN
    description = ("dx written by a grid of (T - 1) // 16 token tiles of 16 instead of cdiv(T, 16): "
                   "its last tile is never written")

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)
        B, S, n, D = x.shape
        T = B * S
        dx = torch.empty((T, n, D), dtype=x.dtype, device=x.device)   # the kernel's output, allocated first
        r = backward_terms(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)
        tiles = (T - 1) // 16
        dx[: tiles * 16] = r["dx"].reshape(T, n, D)[: tiles * 16]
        return dx.view(B, S, n, D), r["dphi"], r["dalpha"], r["dbias"], r["dgamma"]


class UninitializedScratchRead(Mutant):
    name = "uninitialized_scratch_read"
    expected = FailureKind.UNINITIALIZED
    description = ("dx's RMS-norm coefficient staged per token in a scratch buffer whose staging grid "
                   "misses the last token: dx reads that entry uninitialised")

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)
        B, S, n, D = x.shape
        T = B * S
        coef = torch.empty(T, dtype=torch.float32, device=x.device)       # workspace, allocated first
        a = dict(x=x, phi=phi, alpha=alpha, bias=bias, inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre, h_post=h_post,
                 dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, gamma=gamma)
        r = backward_terms(**a)
        inv = inv_rms.to(r["vec_x"].dtype)
        staged = -(r["dinv_rms"] * inv.pow(3) / (n * D)).reshape(T)
        coef[: T - 1] = staged[: T - 1]                                    # the last token's entry: never
        r = _recombine(r, a, dvec_inv=coef.view(B, S)[..., None] * r["vec_x"])
        return r["dx"], r["dphi"], r["dalpha"], r["dbias"], r["dgamma"]


class Int32OffsetWrap:
    """The Triton backend, with dx stored as a kernel with 32-bit offsets would store it."""
    name = "int32_offset_wrap"
    expected = FailureKind.UNWRITTEN
    profile = "large"           # the kill table fuzzes it with the large tier's cases
    description = ("dx stored through a 32-bit element offset: stores past element 2^31 - 1 wrap "
                   "negative and land outside dx, whose tail is never written")

    def __init__(self):
        from impls import triton_mhc
        self.base = triton_mhc.backend
        self.capabilities = dataclasses.replace(self.base.capabilities, devices=("cuda",), has_forward=False)

    def unavailable_reason(self):
        if not torch.cuda.is_available():
            return "the wrap needs T*n*D > 2^31 elements: the large tier (--profile large) on a GPU"
        return self.base.unavailable_reason()

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)          # the kernel's output, allocated first
        out = self.base.backward(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma)
        kept = min(dx.numel(), INT32_LIMIT)                                 # offsets a signed int32 holds
        dx.view(-1)[:kept] = out[0].reshape(-1)[:kept]
        return (dx, *out[1:])


MEMORY = [Int32OffsetWrap, LastTileUnwritten, UninitializedScratchRead]
