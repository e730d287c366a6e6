"""A fuzz case: its parameters, and the tensors built from them.

Reproducibility: every value is a function of (seed, tensor name, element index) through
an integer hash evaluated with int64 arithmetic that never overflows, mapped to a float64
that is a multiple of 2^-24, scaled in float64 and rounded once to the tensor's dtype.
Those operations are exact or correctly rounded on every device, so the inputs are
bit-identical on CPU and GPU. The saved activations a backend receives (inv_rms, h_mix,
h_pre, h_post) are the float64 golden forward of those inputs rounded to fp32.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from impls.golden import mhc_forward
from impls.schema import BACKWARD_ARGS, FORWARD_ARGS, X_DTYPES, mix_width
from fuzz.precision import TORCH_DTYPE

LAYOUTS = ("contiguous", "offset", "strided", "transposed")
_MASK32 = 0xFFFFFFFF
_STREAMS = {name: i + 1 for i, name in enumerate(
    ("x", "phi", "alpha", "bias", "gamma", "dh_in", "dh_post", "dh_res", "zero_tokens", "outliers"))}


@dataclass(frozen=True)
class CaseParams:
    """Everything that defines a case. Scales are log10 of the magnitude of each tensor."""
    B: int
    S: int
    n: int
    D: int
    x_dtype: str = "bf16"
    seed: int = 0
    x_scale: float = 0.0
    phi_scale: float = 0.0        # relative to 1/sqrt(n*D): 0 gives O(1) mix logits
    grad_scale: float = 0.0       # dh_in, dh_post, dh_res
    gamma_scale: float = 0.0      # gamma = 10^gamma_scale * (1 + 0.25*u)
    use_gamma: bool = True
    alpha: tuple = (1.0, 1.0, 1.0)
    bias_shift: float = 0.0       # added to pre/post biases: large |shift| saturates the sigmoids
    zero_tokens: int = 0          # tokens whose x (and dh_in) are all zero
    outliers: int = 0             # elements of x multiplied by outlier_factor
    outlier_factor: float = 64.0
    layout: str = "contiguous"

    @property
    def T(self) -> int:
        return self.B * self.S

    @property
    def F(self) -> int:
        return mix_width(self.n)

    def dims(self) -> dict:
        return dict(T=self.T, n=self.n, D=self.D, F=self.F)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["alpha"] = list(self.alpha)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaseParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown case parameter(s): {sorted(unknown)}")
        d = dict(d)
        if "alpha" in d:
            d["alpha"] = tuple(float(a) for a in d["alpha"])
        return cls(**d).validated()

    def validated(self) -> "CaseParams":
        for k in ("B", "S", "n", "D"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"case parameter {k} must be a positive int, got {v!r}")
        if self.x_dtype not in X_DTYPES:
            raise ValueError(f"x_dtype must be {', '.join(X_DTYPES[:-1])} or {X_DTYPES[-1]}, got {self.x_dtype!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if len(self.alpha) != 3:
            raise ValueError("alpha must have 3 values")
        _check_ranges(self)
        return self

    def capability_query(self, device: str) -> dict:
        """What Capabilities.refusal() is asked about this case."""
        return dict(device=device, x_dtype=self.x_dtype, n=self.n, D=self.D, T=self.T)

    def short(self) -> str:
        return (f"B={self.B} S={self.S} n={self.n} D={self.D} {self.x_dtype} seed={self.seed} "
                f"layout={self.layout}")


# Sane bounds on what a case may ask for (a report is data from anywhere): every size fits
# int64 index arithmetic and every scale a finite float64, so building a case cannot overflow.
# Whether a case fits a device's memory is a separate check (fuzz/sizes.py).
MAX_TOKENS_PER_DIM = 1 << 31      # B and S
MAX_N = 64
MAX_D = 1 << 20
MAX_ELEMENTS = 1 << 40            # T*n*D
MAX_LOG_SCALE = 30.0              # |x_scale|, |phi_scale|, |grad_scale|, |gamma_scale|


def _check_ranges(p: "CaseParams"):
    for k, top in (("B", MAX_TOKENS_PER_DIM), ("S", MAX_TOKENS_PER_DIM), ("n", MAX_N), ("D", MAX_D)):
        if getattr(p, k) > top:
            raise ValueError(f"case parameter {k}={getattr(p, k)} is larger than {top}")
    if p.T * p.n * p.D > MAX_ELEMENTS:
        raise ValueError(f"case of B*S*n*D = {p.T * p.n * p.D} elements: more than {MAX_ELEMENTS}")
    reals = {"x_scale": MAX_LOG_SCALE, "phi_scale": MAX_LOG_SCALE, "grad_scale": MAX_LOG_SCALE,
             "gamma_scale": MAX_LOG_SCALE, "bias_shift": 1e6, "outlier_factor": 1e6}
    for k, top in reals.items():
        v = getattr(p, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= top:
            raise ValueError(f"case parameter {k} must be a number within +-{top:g}, got {v!r}")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not abs(a) <= 1e6 for a in p.alpha):
        raise ValueError(f"alpha must be 3 numbers within +-1e6, got {p.alpha!r}")
    for k, top in (("seed", 1 << 62), ("zero_tokens", 1 << 24), ("outliers", 1 << 24)):   # picked with repeats
        v = getattr(p, k)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            raise ValueError(f"case parameter {k} must be an int in [0, {top}], got {v!r}")
    if not isinstance(p.use_gamma, bool):
        raise ValueError(f"case parameter use_gamma must be true or false, got {p.use_gamma!r}")


def _hash32(v: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (xor-shift-multiply); int64 math, products stay below 2^63."""
    v = v & _MASK32
    v = ((v ^ (v >> 16)) * 0x45D9F3B) & _MASK32
    v = ((v ^ (v >> 16)) * 0x45D9F3B) & _MASK32
    return v ^ (v >> 16)


def uniform(seed: int, stream: str, shape, device, start: int = 0) -> torch.Tensor:
    """float64 values in [-1, 1), multiples of 2^-23, identical on every device; `start`: the
    flat index of the first element (a part of a bigger tensor, built piece by piece)."""
    numel = math.prod(shape)
    idx = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    key = _hash32(torch.tensor([(seed * 0x9E3779B1 + _STREAMS[stream] * 0x85EBCA77) & _MASK32],
                               dtype=torch.int64, device=device))
    h = _hash32(_hash32(idx ^ key) + (idx >> 32) + key)
    return ((h >> 8).to(torch.float64) * 2.0 ** -23 - 1.0).reshape(shape)


def _pick(seed, stream, count, high, device):
    """`count` indices in [0, high), deterministic (may repeat)."""
    if count <= 0 or high <= 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    u = uniform(seed, stream, (count,), device)
    return ((u + 1) * 0.5 * high).floor().clamp(max=high - 1).to(torch.int64)


@dataclass
class Inputs:
    """The twelve tensors of the backward call, plus the case they came from."""
    params: CaseParams
    x: torch.Tensor
    phi: torch.Tensor
    alpha: torch.Tensor
    bias: torch.Tensor
    gamma: torch.Tensor | None
    inv_rms: torch.Tensor
    h_mix: torch.Tensor
    h_pre: torch.Tensor
    h_post: torch.Tensor
    dh_in: torch.Tensor
    dh_post: torch.Tensor
    dh_res: torch.Tensor

    BACKWARD_ARGS = BACKWARD_ARGS
    FORWARD_ARGS = FORWARD_ARGS

    def backward_args(self):
        return tuple(getattr(self, k) for k in self.BACKWARD_ARGS)

    def forward_args(self):
        return tuple(getattr(self, k) for k in self.FORWARD_ARGS)

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in self.BACKWARD_ARGS if getattr(self, k) is not None}


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, another memory layout (only for x and dh_in, the big activations)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "offset":       # storage offset of 1 element: breaks 16-byte alignment
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view
    if layout == "strided":      # padded last dimension: rows are not adjacent
        pad = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype, device=t.device)
        view = pad[..., : t.shape[-1]]
        view.copy_(t)
        return view
    if layout == "transposed":   # last two dims stored swapped: the inner stride is not 1
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    raise ValueError(f"unknown layout {layout!r}")


def make_inputs(p: CaseParams, device="cpu") -> Inputs:
    """Build a case's tensors on `device` (bit-identical across devices, see module doc)."""
    p = p.validated()
    from fuzz import chunks
    if chunks.needed(p):            # too big for float64 copies of x: built token chunk by token chunk
        return chunks.make_inputs(p, device)
    B, S, n, D, F = p.B, p.S, p.n, p.D, p.F
    dt = TORCH_DTYPE[p.x_dtype]
    f64 = lambda name, shape: uniform(p.seed, name, shape, device)  # noqa: E731

    x = f64("x", (B, S, n, D)) * 10.0 ** p.x_scale
    if p.outliers:
        flat = x.reshape(-1)
        idx = _pick(p.seed, "outliers", p.outliers, flat.numel(), device)
        flat[idx] = flat[idx] * p.outlier_factor
    dh_in = f64("dh_in", (B, S, D)) * 10.0 ** p.grad_scale
    if p.zero_tokens:
        tok = _pick(p.seed, "zero_tokens", p.zero_tokens, B * S, device)
        x.reshape(B * S, n, D)[tok] = 0.0
        dh_in.reshape(B * S, D)[tok] = 0.0
    # clamp into the dtype's range so that inputs are finite by construction
    big = torch.finfo(dt).max
    x = x.clamp(-big, big).to(dt)
    dh_in = dh_in.clamp(-big, big).to(dt)

    phi = (f64("phi", (F, n * D)) * (10.0 ** p.phi_scale / math.sqrt(n * D))).float()
    alpha = torch.tensor(p.alpha, dtype=torch.float64, device=device).float()
    bias = f64("bias", (F,)) * 0.5
    bias[: 2 * n] += p.bias_shift
    bias = bias.float()
    gamma = ((1 + 0.25 * f64("gamma", (n, D))) * 10.0 ** p.gamma_scale).float() if p.use_gamma else None
    dh_post = (f64("dh_post", (B, S, n)) * 10.0 ** p.grad_scale).float()
    dh_res = (f64("dh_res", (B, S, n, n)) * 10.0 ** p.grad_scale).float()

    with torch.no_grad():
        g64 = None if gamma is None else gamma.double()
        _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(x.double(), phi.double(), alpha.double(),
                                                          bias.double(), g64)
    return Inputs(p, _layout(x, p.layout), phi, alpha, bias, gamma, inv_rms.float(), h_mix.float(),
                  h_pre.float(), h_post.float(), _layout(dh_in, p.layout), dh_post, dh_res)
