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
from impls.schema import (BACKWARD_ARGS, DTYPES, FORWARD_ARGS, SAVED_ARGS, SMALL_ARGS, X_DTYPES, input_shapes,
                          layout_of, mix_width)
from fuzz.precision import TORCH_DTYPE

LAYOUTS = ("contiguous", "offset", "strided", "transposed")     # of x and dh_in (`layout`)
# The layouts each other input may be given in (`arg_layouts`). "expanded" changes values (one
# slice repeated), so only inputs that the truth sees are expanded: not the saved activations,
# which must stay the forward of the others. 1-D tensors have nothing to transpose.
ARG_LAYOUTS = {name: ("offset", "strided") + (("transposed",) if name not in ("alpha", "bias") else ())
               + (("expanded",) if name in SMALL_ARGS else ()) for name in SMALL_ARGS + SAVED_ARGS}
# Execution context of the call (applied by fuzz/context.py); the first value is the default.
GRAD_MODES = ("enabled", "no_grad", "inference_mode", "autograd")
STREAMS = ("default", "side")
PLACEMENTS = ("current", "other")
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
    # ((input, layout), ...): inputs other than x and dh_in in another layout (ARG_LAYOUTS)
    arg_layouts: tuple = ()
    # ((input, dtype), ...): inputs of SMALL_ARGS in another dtype than fp32
    arg_dtypes: tuple = ()
    # the call's context (fuzz/context.py): grad mode; the caller's stream ("side": a side stream
    # with the inputs' writes still pending on it); where the inputs are ("other": on cuda:1 while
    # cuda:0 is current); calls on the same inputs (2: both judged and compared); first_call: the
    # first call of anything in its process (a fresh worker)
    grad_mode: str = "enabled"
    stream: str = "default"
    placement: str = "current"
    calls: int = 1
    first_call: bool = False

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
        d["arg_layouts"], d["arg_dtypes"] = dict(self.arg_layouts), dict(self.arg_dtypes)
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
        for key in ("arg_layouts", "arg_dtypes"):
            if key in d:
                d[key] = _pairs(d[key], key)
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
        for name, lay in self.arg_layouts:
            if lay not in ARG_LAYOUTS.get(name, ()):
                raise ValueError(f"arg_layouts: {name} cannot be {lay!r} (allowed: {ARG_LAYOUTS.get(name, 'none')})")
        for name, dt in self.arg_dtypes:
            if name not in SMALL_ARGS or dt not in DTYPES:
                raise ValueError(f"arg_dtypes: {name!r}: {dt!r}: inputs {SMALL_ARGS} may be one of {tuple(DTYPES)}")
        for key in ("arg_layouts", "arg_dtypes"):
            names = [name for name, _ in getattr(self, key)]
            if len(set(names)) != len(names) or names != sorted(names):
                raise ValueError(f"{key} must name each input once, in sorted order, got {getattr(self, key)!r}")
        for key, allowed in (("grad_mode", GRAD_MODES), ("stream", STREAMS), ("placement", PLACEMENTS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls not in (1, 2) \
                or not isinstance(self.first_call, bool):
            raise ValueError(f"calls must be 1 or 2 and first_call a bool, got {self.calls!r}, {self.first_call!r}")
        _check_ranges(self)
        return self

    def input_layouts(self) -> dict:
        """{input: layout made} for every input not contiguous (as make_inputs builds it)."""
        made = {"x": self.layout, "dh_in": self.layout} if self.layout != "contiguous" else {}
        return {**made, **dict(self.arg_layouts)}

    def capability_query(self, device: str) -> dict:
        """What Capabilities.refusal() is asked about this case: the shape, the dtypes, whether
        gamma is given, and the layout of every input as its tensor will have it (a layout can
        vanish on a small shape: padded rows of a one-row tensor are contiguous)."""
        layouts = {}
        for name, lay in self.input_layouts().items():
            found = _layout_made(name, lay, self)
            if found != ("contiguous",):
                layouts[name] = found
        return dict(device=device, x_dtype=self.x_dtype, n=self.n, D=self.D, T=self.T,
                    dtypes=dict(self.arg_dtypes), layouts=layouts, gamma=self.use_gamma)

    def context(self) -> dict:
        """The execution-context fields that differ from the default."""
        return {k: getattr(self, k) for k in ("grad_mode", "stream", "placement", "calls", "first_call")
                if getattr(self, k) != CaseParams.__dataclass_fields__[k].default}

    def short(self) -> str:
        extra = "".join(f" {k}:{v}" for k, v in self.arg_layouts + self.arg_dtypes)
        extra += "".join(f" {k}={v}" for k, v in self.context().items())
        return (f"B={self.B} S={self.S} n={self.n} D={self.D} {self.x_dtype} seed={self.seed} "
                f"layout={self.layout}{extra}")


def _pairs(value, key) -> tuple:
    """((name, value), ...) sorted by name, from a report's {name: value} of strings."""
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
        raise ValueError(f"{key} must map input names to names, got {value!r}"[:200])
    return tuple(sorted(value.items()))


def _layout_made(name: str, layout: str, p: CaseParams) -> tuple:
    """The layout names (impls.schema.layout_of) of input `name` made in `layout` for case p:
    the same construction as make_inputs, on a meta tensor (no memory, no values)."""
    shape = input_shapes(p.B, p.S, p.n, p.D)[name]
    dt = TORCH_DTYPE[p.x_dtype] if name in ("x", "dh_in") else DTYPES[dict(p.arg_dtypes).get(name, "fp32")]
    t = _layout(torch.empty(shape, dtype=dt, device="meta"), layout)
    return layout_of(t.shape, t.stride(), t.storage_offset() * t.element_size())


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


def _hash32(v):
    """A 32-bit integer mix (xor-shift-multiply): on int64 tensors (products stay below 2^63)
    and, the same arithmetic, on Python ints."""
    v = v & _MASK32
    v = ((v ^ (v >> 16)) * 0x45D9F3B) & _MASK32
    v = ((v ^ (v >> 16)) * 0x45D9F3B) & _MASK32
    return v ^ (v >> 16)


def _stream_key(seed: int, stream: str) -> int:
    return _hash32((seed * 0x9E3779B1 + _STREAMS[stream] * 0x85EBCA77) & _MASK32)


def _unit(idx: torch.Tensor, key) -> torch.Tensor:
    """float64 in [-1, 1) of each flat index under its stream's key (an int, or one per index)."""
    h = _hash32(_hash32(idx ^ key) + (idx >> 32) + key)
    return (h >> 8).to(torch.float64) * 2.0 ** -23 - 1.0


def uniform(seed: int, stream: str, shape, device, start: int = 0) -> torch.Tensor:
    """float64 values in [-1, 1), multiples of 2^-23, identical on every device; `start`: the
    flat index of the first element (a part of a bigger tensor, built piece by piece)."""
    numel = math.prod(shape)
    idx = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    return _unit(idx, _stream_key(seed, stream)).reshape(shape)


def uniforms(seed: int, parts, device) -> list:
    """[uniform(seed, stream, shape, device) for stream, shape in parts], the same values made
    in one pass: a case's small tensors are a few elements each, and on a GPU the kernel
    launches of one pass per tensor cost more than the arithmetic."""
    sizes = [math.prod(shape) for _, shape in parts]
    counts = torch.tensor(sizes, dtype=torch.int64)
    firsts = torch.tensor([0] + sizes[:-1], dtype=torch.int64).cumsum(0)
    keys = torch.tensor([_stream_key(seed, stream) for stream, _ in parts], dtype=torch.int64)
    total = sum(sizes)
    per_index = torch.stack([firsts, keys]).to(device).repeat_interleave(counts.to(device), dim=1,
                                                                          output_size=total)
    idx = torch.arange(total, dtype=torch.int64, device=device) - per_index[0]
    values = _unit(idx, per_index[1])
    return [v.reshape(shape) for v, (_, shape) in zip(values.split(sizes), parts)]


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
    """Same values, another memory layout (for "expanded", values already repeated along
    _expand_dim: see _repeated)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "offset":       # storage offset of 1 element: breaks 16-byte alignment
        buf = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)   # all of it written: initcheck
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view
    if layout == "strided" and t.dim() == 1:   # every other element
        view = torch.zeros(2 * t.numel(), dtype=t.dtype, device=t.device)[::2]
        view.copy_(t)
        return view
    if layout == "strided":      # padded last dimension: rows are not adjacent
        pad = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype, device=t.device)
        view = pad[..., : t.shape[-1]]
        view.copy_(t)
        return view
    if layout == "transposed":   # last two dims stored swapped: the inner stride is not 1
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "expanded":     # stride 0: one slice seen at every index of a dimension
        d = _expand_dim(t)
        return t.narrow(d, 0, 1).contiguous().expand(t.shape) if t.dim() else t
    raise ValueError(f"unknown layout {layout!r}")


def _expand_dim(t: torch.Tensor) -> int:
    """The dimension an expanded input repeats along: the outermost one longer than 1."""
    return next((d for d, size in enumerate(t.shape) if size > 1), 0)


def _repeated(t: torch.Tensor) -> torch.Tensor:
    """t's values with its first slice along _expand_dim repeated: what an expanded view holds."""
    d = _expand_dim(t)
    return t.narrow(d, 0, 1).expand(t.shape).contiguous()


def make_inputs(p: CaseParams, device="cpu") -> Inputs:
    """Build a case's tensors on `device` (bit-identical across devices, see module doc)."""
    p = p.validated()
    from fuzz import chunks
    if chunks.needed(p):            # too big for float64 copies of x: built token chunk by token chunk
        return chunks.make_inputs(p, device)
    B, S, n, D = p.B, p.S, p.n, p.D
    dt = TORCH_DTYPE[p.x_dtype]
    parts = [("x", (B, S, n, D)), ("dh_in", (B, S, D))] + _small_parts(p)
    u = dict(zip((name for name, _ in parts), uniforms(p.seed, parts, device)))

    x = u["x"] * 10.0 ** p.x_scale
    if p.outliers:
        flat = x.reshape(-1)
        idx = _pick(p.seed, "outliers", p.outliers, flat.numel(), device)
        flat[idx] = flat[idx] * p.outlier_factor
    dh_in = u["dh_in"] * 10.0 ** p.grad_scale
    if p.zero_tokens:
        tok = _pick(p.seed, "zero_tokens", p.zero_tokens, B * S, device)
        x.reshape(B * S, n, D)[tok] = 0.0
        dh_in.reshape(B * S, D)[tok] = 0.0
    # clamp into the dtype's range so that inputs are finite by construction
    big = torch.finfo(dt).max
    x = x.clamp(-big, big).to(dt)
    dh_in = dh_in.clamp(-big, big).to(dt)

    given = small_inputs(p, device, u)
    with torch.no_grad():
        g = given["gamma"]
        _, h_post, _, inv_rms, h_mix, h_pre = mhc_forward(x.double(), given["phi"].double(), given["alpha"].double(),
                                                          given["bias"].double(), None if g is None else g.double())
    return laid_out(p, dict(given, x=x, dh_in=dh_in, inv_rms=inv_rms.float(), h_mix=h_mix.float(),
                            h_pre=h_pre.float(), h_post=h_post.float()))


def _small_parts(p: CaseParams) -> list:
    B, S, n, D, F = p.B, p.S, p.n, p.D, p.F
    return [("phi", (F, n * D)), ("bias", (F,)), ("dh_post", (B, S, n)), ("dh_res", (B, S, n, n))] + (
        [("gamma", (n, D))] if p.use_gamma else [])


def small_inputs(p: CaseParams, device, u: dict | None = None) -> dict:
    """phi, alpha, bias, gamma, dh_post and dh_res of case p, each rounded once to its dtype
    (arg_dtypes; fp32 by default) and, where it is to be expanded, with one slice's values repeated
    (what the expanded view will show): the values the truth and the saved activations are made of.
    `u`: their uniform() values when already made (else made here, in one pass)."""
    n, D = p.n, p.D
    if u is None:
        parts = _small_parts(p)
        u = dict(zip((name for name, _ in parts), uniforms(p.seed, parts, device)))
    small_dt = {name: DTYPES[dict(p.arg_dtypes).get(name, "fp32")] for name in SMALL_ARGS}
    phi = _rounded(u["phi"] * (10.0 ** p.phi_scale / math.sqrt(n * D)), small_dt["phi"])
    alpha = _rounded(torch.tensor(p.alpha, dtype=torch.float64, device=device), small_dt["alpha"])
    bias = u["bias"] * 0.5
    bias[: 2 * n] += p.bias_shift
    bias = _rounded(bias, small_dt["bias"])
    gamma = _rounded((1 + 0.25 * u["gamma"]) * 10.0 ** p.gamma_scale, small_dt["gamma"]) if p.use_gamma else None
    dh_post = _rounded(u["dh_post"] * 10.0 ** p.grad_scale, small_dt["dh_post"])
    dh_res = _rounded(u["dh_res"] * 10.0 ** p.grad_scale, small_dt["dh_res"])
    given = dict(phi=phi, alpha=alpha, bias=bias, gamma=gamma, dh_post=dh_post, dh_res=dh_res)
    for name, lay in p.arg_layouts:    # an expanded input holds one slice's values everywhere
        if lay == "expanded" and given[name] is not None:
            given[name] = _repeated(given[name])
    return given


def laid_out(p: CaseParams, tensors: dict) -> Inputs:
    """The case's Inputs: its twelve tensors (contiguous, by name), each in the memory layout the
    case gives it (layout for x and dh_in, arg_layouts for the others)."""
    layouts = p.input_layouts()
    for name, t in tensors.items():
        if t is not None and name in layouts:
            tensors[name] = _layout(t, layouts[name])
    return Inputs(p, **tensors)


def _rounded(t64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values rounded once to `dtype`, clamped into its range (inputs are finite)."""
    if dtype != torch.float32:
        big = torch.finfo(dtype).max
        t64 = t64.clamp(-big, big)
    return t64.to(dtype)
