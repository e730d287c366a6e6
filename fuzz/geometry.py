"""The large tier: cases whose index arithmetic or launch grids cross a 32-bit or a grid limit,
chosen from the launch geometry of the kernels.

Two classes of bug only show on such cases:
  - index overflow: element offsets past 2^31 - 1 (T*n*D > 2^31 elements) wrap in 32-bit
    arithmetic; byte offsets wrap at half that for 16-bit data, a quarter for fp32;
  - grid limits: a grid's y and z axes hold at most 65,535 blocks. A kernel whose y axis
    grows with T fails to launch, or silently skips work, once T passes 65,535 blocks' worth
    of tokens (its x axis holds 2^31 - 1 blocks, but an x index kept in 16 bits breaks too).

`token_axes()` reads, from the built-in backends, the grid axes that grow with the token
count and how many tokens one block covers; `large_shapes()` turns them, and the powers of
two any kernel may tile by, into shapes just below and just past each limit, inside a
backend's declared capabilities (a backend that declares max_tokens or d_max gets cases at
those values: it is held to its declaration)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

GRID_Y_LIMIT = 65535             # blocks on a grid's y or z axis
INDEX_LIMIT = 1 << 31            # first element offset a signed 32-bit index cannot hold
TOKEN_TILES = (1, 2, 4, 8, 16, 32, 64, 128)   # tokens per block a kernel may tile by
PRODUCTION_D = (7168, 5120, 4096, 2560)


@dataclass(frozen=True)
class GridAxis:
    backend: str
    kernel: str
    axis: str                    # "x" (2^31 - 1 blocks) or "y" (65,535 blocks)
    tokens_per_block: int        # blocks along the axis = ceil(T / tokens_per_block)
    source: str                  # where the number comes from

    def first_t_past_limit(self) -> int | None:
        return GRID_Y_LIMIT * self.tokens_per_block + 1 if self.axis == "y" else None


@functools.cache
def token_axes() -> tuple:
    """Grid axes of the built-in backends' kernels whose block count grows with T, read from
    their launch configuration (impls/triton_mhc.py, impls/tilelang_mhc.py)."""
    axes = []
    from impls import triton_mhc as tm
    T, n, D = 1 << 20, 4, 4096
    for x16, label in ((True, "16-bit x"), (False, "fp32 x")):
        bt2 = tm._bwd_config(n, tm._dx_dot_precision(x16), T, D)["bt2"]
        axes.append(GridAxis("triton", f"_bwd_dx_kernel ({label})", "y", bt2, "_bwd_config()['bt2']"))
    fwd = tm._fwd_config(T, D)
    axes.append(GridAxis("triton", "_fwd_mix_kernel", "x", fwd["bt"], "_fwd_config()['bt']"))
    axes.append(GridAxis("triton", "_fwd_token_kernel", "x", fwd["btt"], "_fwd_config()['btt']"))
    axes.append(GridAxis("triton", "_fwd_hin_kernel", "y", fwd["bth"], "_fwd_config()['bth']"))
    # TileLang: K1 is one CTA per token on x; K2's y axis is its token splits (<= 8 per SM), K3's is n
    axes.append(GridAxis("tilelang", "_tok_kernel (K1)", "x", 1, "T.Kernel(Tn, ...)"))
    return tuple(axes)


def _t_boundaries() -> list:
    """Token counts just below and just past every grid limit, built-in kernels' first."""
    known = [a.tokens_per_block for a in token_axes() if a.axis == "y"]
    tiles = list(dict.fromkeys(known + list(TOKEN_TILES)))
    out = []
    for b in tiles:
        out += [GRID_Y_LIMIT * b, GRID_Y_LIMIT * b + 1]
    return out + [1 << 17, 1 << 18, 1 << 19, 1 << 20]


def large_shapes(caps, limits) -> list:
    """[(B, S, n, D, x_dtype)] of the large tier inside `caps` and the profile's limits, in this
    order: element offsets past 2^31 - 1 (production n and D, then n = 1, where dh_in's offsets
    cross too); byte offsets past 2^31 (16-bit) and 2^32 (fp32); one short of each (the control);
    token counts around every grid limit with a small D; and the declared max_tokens and d_max."""
    max_t = min(limits.max_tokens, caps.max_tokens or limits.max_tokens)
    max_d = min(limits.max_D, caps.d_max or limits.max_D)
    ns = tuple(caps.n_values or range(1, 9))
    n_prod = 4 if 4 in ns else max(ns)
    m = caps.d_multiple
    dts = [d for d in ("bf16", "fp16", "fp32") if d in caps.x_dtypes]
    x16 = next((d for d in dts if d != "fp32"), None)
    out = []

    def add(T, n, D, dt):
        if dt is None or not (1 <= T <= max_t and 1 <= D <= max_d and D % m == 0 and n in ns):
            return
        if T * n * D > limits.max_elements:
            return
        shape = (1, T, n, D, dt)
        if shape not in out:
            out.append(shape)

    prod_d = next((d for d in PRODUCTION_D if d <= max_d and d % m == 0), max_d - max_d % m)
    big_d = max_d - max_d % m
    for n, D in ((n_prod, prod_d), (max(ns), big_d), (1, prod_d)):
        add(INDEX_LIMIT // (n * D) + 1, n, D, x16)             # the first element past 2^31 - 1
    if x16:
        add((INDEX_LIMIT // 2) // (n_prod * prod_d) + 1, n_prod, prod_d, x16)   # bytes past 2^31
    if "fp32" in dts:
        add(INDEX_LIMIT // 2 // (n_prod * prod_d) + 1, n_prod, prod_d, "fp32")  # bytes past 2^32
    add(INDEX_LIMIT // (n_prod * prod_d), n_prod, prod_d, x16)  # one token short of the limit
    small_d = max(m, 16) if max(m, 16) <= max_d else m
    for T in _t_boundaries():
        add(T, min(ns), small_d, x16 or dts[0])
    if caps.max_tokens is not None:
        add(max_t, min(ns), small_d, x16 or dts[0])
    if caps.d_max is not None:
        add(256, max(ns), big_d, x16 or dts[0])
    return out
