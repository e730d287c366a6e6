"""The onboarding card's speed section: a backend beside golden, torch.compile(golden), the other
built-in backends and the memory roofline, at a few standard shapes, all timed in one run on
one GPU by the bench's method (fuzz/timing.py). On the CPU nothing is timed: a CPU time says
nothing about a GPU kernel.

Ratios are written as "112x slower" / "1.35x faster", never as a fraction that rounds to 0."""
from __future__ import annotations

import math

# (T, n, D): a decode-sized step, a mid-sized batch, a training step of a large model
STANDARD_SHAPES = ((128, 4, 4096), (4096, 4, 4096), (32768, 4, 7168))
NOT_ON_CPU = "not measured on the CPU (a CPU time says nothing about a GPU kernel): run the card on a GPU"


def shapes_for(caps, shapes=STANDARD_SHAPES) -> list:
    """The standard shapes moved inside the backend's declared limits (n, D, tokens, x dtype)."""
    dtype = "bf16" if "bf16" in caps.x_dtypes else caps.x_dtypes[0]
    out = []
    for T, n, D in shapes:
        if caps.n_values is not None and n not in caps.n_values:
            n = min(caps.n_values, key=lambda v: (abs(v - n), v))
        if caps.d_max:
            D = min(D, caps.d_max)
        D = max(caps.d_multiple, D // caps.d_multiple * caps.d_multiple)
        if caps.max_tokens:
            T = min(T, caps.max_tokens)
        shape = dict(T=T, n=n, D=D, dtype=dtype)
        if shape not in out and caps.refusal(device="cuda", x_dtype=dtype, n=n, D=D, T=T) is None:
            out.append(shape)
    return out


def contenders(reg, name: str, device: str = "cuda") -> dict:
    """What the backend is timed against: {label: (backward, capabilities or None)}, the backend
    first, then golden and torch.compile(golden), then every other built-in backend ((None,
    why) for one that cannot run here)."""
    from fuzz.check import backend_can_run
    from fuzz.timing import compiled_golden
    from impls.golden import mhc_pre_backward_manual
    b = reg.get(name)
    out = {name: (b.backward, b.capabilities)}
    if name != "golden":
        out["golden"] = (mhc_pre_backward_manual, None)
    out["compile(golden)"] = (compiled_golden(), None)
    for other, ob in reg.backends.items():
        if other not in out and reg.sources[other].startswith("builtin"):
            why = backend_can_run(ob, device)
            out[other] = (None, why) if why else (ob.backward, ob.capabilities)
    return out


def measure(contenders: dict, shapes: list, bandwidth_Bps: float, bench, make_inputs, device="cuda") -> list:
    """Time every contender at every shape: [{T, n, D, dtype, roofline_ms, times: {label: ms or
    "refuses: ..." or "error: ..."}}]. `bench(fn)` returns fn's median milliseconds."""
    import torch
    from fuzz.timing import bwd_bytes
    from impls.registry import DTYPES
    rows = []
    for s in shapes:
        T, n, D, dtype = s["T"], s["n"], s["D"], DTYPES[s["dtype"]]
        args = make_inputs(T, n, D, dtype, device=device)[0]
        xb = torch.empty(0, dtype=dtype).element_size()
        times = {}
        for label, (fn, caps) in contenders.items():
            if fn is None:
                times[label] = f"unavailable: {caps}"
                continue
            why = caps.refusal(device=device, x_dtype=s["dtype"], n=n, D=D, T=T) if caps else None
            if why:
                times[label] = f"refuses: {why}"
                continue
            try:
                times[label] = bench(lambda fn=fn: fn(*args))
            except Exception as exc:   # one contender failing must not hide the others
                times[label] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
        rows.append(dict(s, roofline_ms=bwd_bytes(T, n, D, xb) / bandwidth_Bps * 1e3, times=times))
        args = None     # free the inputs before the next shape
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def section(reg, name: str, device: str) -> dict:
    """The card's speed section (JSON-ready)."""
    if device != "cuda":
        return {"measured": False, "why": NOT_ON_CPU}
    import torch
    from fuzz import timing
    bw = timing.measure_bandwidth()
    rows = measure(contenders(reg, name), shapes_for(reg.get(name).capabilities), bw, timing.bench_ms,
                   timing.make_inputs)
    return {"measured": True, "device": torch.cuda.get_device_name(), "bandwidth_Bps": bw,
            "l2_flush": timing.FLUSH, "backend": name, "shapes": rows}


# ---------------------------------------------------------------- words
def number(v: float) -> str:
    """A positive ratio or time with sensible digits: 112, 3.25, 0.042."""
    if v >= 99.5:
        return f"{v:.0f}"
    if v >= 0.995:
        return f"{v:.3g}" if v < 10 else f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


def versus(ms: float, other_ms: float) -> str:
    """How the backend's time compares with another: "112x slower", "1.35x faster", "as fast"."""
    if not (isinstance(ms, float) and isinstance(other_ms, float)) or ms <= 0 or other_ms <= 0:
        return "-"
    r = ms / other_ms
    if 0.995 <= r < 1.005:
        return "as fast"
    return f"{number(r if r > 1 else 1 / r)}x {'slower' if r > 1 else 'faster'}"


def ms_text(v) -> str:
    """Milliseconds with three significant digits below 1 (0.0123), two decimals above."""
    if not isinstance(v, float):
        return str(v)
    return f"{v:.3g}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def rows(sec: dict, shape: dict) -> list:
    """One shape's table: (label, ms, x roofline, the backend compared with it) per contender."""
    own = shape["times"].get(sec["backend"])
    out = []
    for label, t in shape["times"].items():
        if isinstance(t, float):
            roof = t / shape["roofline_ms"]
            out.append((label, ms_text(t), f"{number(roof)}x" if math.isfinite(roof) else "-",
                        "-" if label == sec["backend"] else versus(own, t)))
        else:
            out.append((label, t, "", ""))
    out.append(("memory roofline", ms_text(shape["roofline_ms"]), "1x",
                versus(own, shape["roofline_ms"]) if isinstance(own, float) else "-"))
    return out


def shape_title(shape: dict) -> str:
    return f"T={shape['T']} n={shape['n']} D={shape['D']} {shape['dtype']}"


def where(sec: dict) -> str:
    return f"on {sec['device']} (copy {sec['bandwidth_Bps'] / 1e12:.2f} TB/s, L2 flushed, median of CUDA events)"


def summary(sec: dict) -> str:
    """One line for the card: the largest shape the backend was timed at, against each contender."""
    if not sec.get("measured"):
        return sec.get("why", "not measured")
    timed = [s for s in sec["shapes"] if isinstance(s["times"].get(sec["backend"]), float)]
    head = where(sec)
    if not timed:
        why = [s["times"].get(sec["backend"]) for s in sec["shapes"]]
        return f"{head}: not timed at any standard shape ({'; '.join(map(str, why)) or 'no shape inside its limits'})"
    s = timed[-1]
    own = s["times"][sec["backend"]]
    vs = [versus(own, t) + (" as " if versus(own, t) == "as fast" else " than ") + label
          for label, t in s["times"].items() if label != sec["backend"] and isinstance(t, float)]
    return (f"{head}: {ms_text(own)} ms at {shape_title(s)}, {number(own / s['roofline_ms'])}x the memory "
            f"roofline" + "".join(f", {v}" for v in vs))
