"""A minimal third-party backend for mhc-fuzz, to copy when adding your own.

It computes the backward the way a GPU kernel does: tokens in blocks of 64, each block's
dphi/dgamma/dalpha/dbias partials kept in fp32 and added in a fixed order (a two-stage,
deterministic reduction). The math per block is the golden manual backward."""
import torch

from impls.golden import mhc_pre_backward_manual
from impls.registry import Capabilities, check_inputs

BLOCK_T = 64


class BlockedTorch:
    name = "blocked_torch"
    # Declare honestly what you support; the fuzzer stays inside it and checks that the rest
    # is refused with an error.
    capabilities = Capabilities(devices=("cpu", "cuda"), x_dtypes=("bf16", "fp16", "fp32"),
                                n_values=(1, 2, 4, 8), deterministic=True, gemm_precision="fp32",
                                notes="token blocks of 64, fp32 partial sums in a fixed order")

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)       # refuses what is not declared
        B, S, n, D = x.shape
        T = B * S
        flat = lambda t, *tail: t.reshape(1, T, *tail)      # noqa: E731  tokens as one sequence
        xs, dh_in_s = flat(x, n, D), flat(dh_in, D)
        dx = torch.empty_like(xs)
        partials = []
        for start in range(0, T, BLOCK_T):
            sl = slice(start, min(T, start + BLOCK_T))
            out = mhc_pre_backward_manual(xs[:, sl], phi, alpha, bias, flat(inv_rms)[:, sl],
                                          flat(h_mix, -1)[:, sl], flat(h_pre, n)[:, sl], flat(h_post, n)[:, sl],
                                          dh_in_s[:, sl], flat(dh_post, n)[:, sl], flat(dh_res, n, n)[:, sl], gamma)
            dx[:, sl] = out[0]
            partials.append(out[1:])
        dphi, dalpha, dbias, dgamma = (sum(p[i] for p in partials) for i in range(4))
        return dx.reshape(B, S, n, D), dphi, dalpha, dbias, dgamma


backend = BlockedTorch()
