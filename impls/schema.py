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

# Inputs a caller may hand over in another dtype than the SPEC's fp32, if the backend declares
# it (Capabilities.input_dtypes): the parameters and the incoming gradients. The saved
# activations (inv_rms, h_mix, h_pre, h_post) are fp32 outputs of the forward, and dh_in has x's dtype.
SMALL_ARGS = ("phi", "alpha", "bias", "gamma", "dh_post", "dh_res")
SAVED_ARGS = ("inv_rms", "h_mix", "h_pre", "h_post")

# Memory layouts of an input, as the fuzzer makes them and Capabilities.input_layouts names them:
#   contiguous  dense, row-major, 16-byte aligned
#   offset      data pointer not 16-byte aligned (a storage offset of one element)
#   strided     gaps between elements (padded rows; every other element of a 1-D tensor)
#   transposed  dense, but dimensions stored in another order (the last two swapped)
#   expanded    a stride of 0: one value seen at many indices (torch.expand)
LAYOUTS = ("contiguous", "offset", "strided", "transposed", "expanded")
ALIGNMENT = 16


def layout_of(shape, stride, byte_address: int) -> tuple:
    """The layouts (names above) a tensor of these sizes, strides and data address has; more
    than one when it is, e.g., strided and misaligned. Dimensions of size 1 are ignored, as
    torch's is_contiguous() does: their stride never matters."""
    dims = [(size, st) for size, st in zip(shape, stride) if size > 1]
    found = []
    if any(st == 0 for _, st in dims):
        found.append("expanded")
    else:
        dense, expected = True, 1
        for size, st in reversed(dims):
            dense, expected = dense and st == expected, expected * size
        if not dense:
            in_order = all(a >= b for (_, a), (_, b) in zip(dims, dims[1:]))
            found.append("strided" if in_order else "transposed")
    if byte_address % ALIGNMENT:
        found.append("offset")
    return tuple(found) or ("contiguous",)


def tensor_layout(t: torch.Tensor) -> tuple:
    """layout_of() a tensor, from its real data address."""
    if t.numel() and t.data_ptr() % ALIGNMENT == 0 and t.is_contiguous():
        return ("contiguous",)          # the usual case, without the Python walk over strides
    return layout_of(t.shape, t.stride(), t.data_ptr())
