"""Unit roundoffs and the range limits of the floating-point formats the bounds talk about."""
import torch

# u = 2^-(p) with p the significand bits incl. the implicit one, minus one (round to nearest).
UNIT_ROUNDOFF = {
    "fp64": 2.0 ** -53,
    "fp32": 2.0 ** -24,
    "tf32": 2.0 ** -11,
    # three TF32 products (a_hi*b_hi + a_hi*b_lo + a_lo*b_hi): each operand kept to 22 bits
    # (2^-22) and a_lo*b_lo dropped (<= 2^-22 |ab|), so a product errs by <= 3*2^-22 |ab|,
    # within 2 operands x 2^-21. Not fp32 (2 x 2^-24): at K = n*D = 1 the forward's h_mix of a
    # tf32x3 kernel was measured 9.0 u*M off the float64 truth, 0.998 of an fp32-declared bound.
    "tf32x3": 2.0 ** -21,
    "bf16": 2.0 ** -8,
    "fp16": 2.0 ** -11,
}
from impls.schema import DTYPES

TORCH_DTYPE = {"fp64": torch.float64, **DTYPES}
NAME_OF = {v: k for k, v in TORCH_DTYPE.items()}


def smallest_normal(fmt: str) -> float:
    """Below it, rounding is absolute: half the subnormal spacing, which equals u * smallest_normal."""
    return torch.finfo(TORCH_DTYPE["fp32" if fmt.startswith("tf32") else fmt]).tiny


def largest_finite(fmt: str) -> float:
    return torch.finfo(TORCH_DTYPE[fmt]).max
