"""Unit roundoffs and the range limits of the floating-point formats the bounds talk about."""
import torch

# u = 2^-(p) with p the significand bits incl. the implicit one, minus one (round to nearest).
UNIT_ROUNDOFF = {
    "fp64": 2.0 ** -53,
    "fp32": 2.0 ** -24,
    "tf32": 2.0 ** -11,
    "bf16": 2.0 ** -8,
    "fp16": 2.0 ** -11,
}
from impls.schema import DTYPES

TORCH_DTYPE = {"fp64": torch.float64, **DTYPES}
NAME_OF = {v: k for k, v in TORCH_DTYPE.items()}


def smallest_normal(fmt: str) -> float:
    """Below it, rounding is absolute: half the subnormal spacing, which equals u * smallest_normal."""
    return torch.finfo(TORCH_DTYPE["fp32" if fmt == "tf32" else fmt]).tiny


def largest_finite(fmt: str) -> float:
    return torch.finfo(TORCH_DTYPE[fmt]).max
