"""The operator's contract in one place (docs/SPEC.md): the SPEC's constants, the names,
shapes and dtypes of the backward's twelve arguments and of every output, and the dtypes
x may have. Backends, the golden reference, the truth, the tolerances and the summaries
read them from here, so a change to the contract is one edit."""
from __future__ import annotations

import torch

# SPEC constants
NORM_EPS = 1e-6          # inside the RMS norm: rsqrt(mean(x^2) + NORM_EPS)
HC_EPS = 1e-6            # added to sigmoid(...) in h_pre
POST_SCALE = 2.0         # h_post = POST_SCALE * sigmoid(...)

# Storage formats by the short names used everywhere (reports, tolerances.yaml, capabilities).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
X_DTYPES = tuple(DTYPES)                 # x (and dh_in, dx) may be any of these

# The backward's arguments, in call order, and the forward's.
BACKWARD_ARGS = ("x", "phi", "alpha", "bias", "inv_rms", "h_mix", "h_pre", "h_post",
                 "dh_in", "dh_post", "dh_res", "gamma")
FORWARD_ARGS = ("x", "phi", "alpha", "bias", "gamma")
# What a backend returns, by name, in order.
BACKWARD_OUTPUTS = ("dx", "dphi", "dalpha", "dbias", "dgamma")
FORWARD_OUTPUTS = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
# Arguments stored in x's dtype; every other tensor is fp32.
X_DTYPE_ARGS = ("x", "dh_in")


def mix_width(n: int) -> int:
    """F = n*n + 2*n: n pre weights, n post weights, n*n residual-mix weights."""
    return n * n + 2 * n


def input_shapes(B: int, S: int, n: int, D: int) -> dict:
    """Shape of every backward argument."""
    F = mix_width(n)
    return {"x": (B, S, n, D), "phi": (F, n * D), "alpha": (3,), "bias": (F,), "inv_rms": (B, S),
            "h_mix": (B, S, F), "h_pre": (B, S, n), "h_post": (B, S, n), "dh_in": (B, S, D),
            "dh_post": (B, S, n), "dh_res": (B, S, n, n), "gamma": (n, D)}


def output_specs(B: int, S: int, n: int, D: int, x_dtype: str, direction: str = "backward") -> dict:
    """{output name: (shape, torch dtype)} of the backward's (or the forward's) results."""
    xdt, f32, F = DTYPES[x_dtype], torch.float32, mix_width(n)
    if direction == "backward":
        return {"dx": ((B, S, n, D), xdt), "dphi": ((F, n * D), f32), "dalpha": ((3,), f32),
                "dbias": ((F,), f32), "dgamma": ((n, D), f32)}
    return {"h_in": ((B, S, D), xdt), "h_post": ((B, S, n), f32), "h_res": ((B, S, n, n), f32),
            "inv_rms": ((B, S), f32), "h_mix": ((B, S, F), f32), "h_pre": ((B, S, n), f32)}
