"""The unit roundoffs the bounds charge GEMM operands with, against products emulated bit by bit."""
import torch

from fuzz.precision import UNIT_ROUNDOFF


def _tf32(a: torch.Tensor) -> torch.Tensor:
    """fp32 -> TF32 (10 explicit mantissa bits), round to nearest even, kept in fp32."""
    bits = a.view(torch.int32).to(torch.int64)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return ((bits + 2**31) % 2**32 - 2**31).to(torch.int32).view(torch.float32)


def _worst_relative_error(product) -> float:
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(200_000, generator=g, dtype=torch.float64) + 0.5).float()
    b = (torch.rand(200_000, generator=g, dtype=torch.float64) + 0.5).float()
    exact = a.double() * b.double()
    return float(((product(a, b) - exact).abs() / exact).max())


def test_tf32_rounding_keeps_eleven_significant_bits():
    x = torch.tensor([1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12], dtype=torch.float32)
    assert _tf32(x).tolist() == [1 + 2**-10, 1.0, 1 + 2**-9, 1.0]       # ties to even


def test_three_tf32_products_need_their_own_roundoff():
    """a_hi*b_hi + a_hi*b_lo + a_lo*b_hi (exact sums, as the bound's accumulation term is
    separate): the per-product error the 'tf32x3' declaration covers, 2 operands x 2^-21, and
    more than 'fp32' (2 x 2^-24) would allow. With one term (K = n*D = 1) nothing else hides it."""
    def tf32x3(a, b):
        a_hi, b_hi = _tf32(a), _tf32(b)
        a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
        return a_hi.double() * b_hi.double() + a_hi.double() * b_lo.double() + a_lo.double() * b_hi.double()
    err = _worst_relative_error(tf32x3)
    assert 2 * UNIT_ROUNDOFF["fp32"] < err <= 2 * UNIT_ROUNDOFF["tf32x3"]
    one_tf32 = _worst_relative_error(lambda a, b: _tf32(a).double() * _tf32(b).double())
    assert 2 * UNIT_ROUNDOFF["tf32x3"] < one_tf32 <= 2 * UNIT_ROUNDOFF["tf32"]
