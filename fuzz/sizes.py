"""Will a case fit this device's memory? Asked before anything of the case is allocated, so
that a case too big (from a report, or tensors given from elsewhere) is a clear error
instead of an allocation failure in the middle of building it.

A case's peak is dominated by float64 copies of its inputs, the float64 truth and the
magnitude companions: measured at about 100 bytes per element of x (T*n*D) plus about
100 bytes per element of phi (F*n*D), on the CPU with golden. The estimate takes 128."""
from __future__ import annotations

from fuzz.cases import CaseParams

BYTES_PER_ELEMENT = 128
OVERHEAD_BYTES = 256 << 20          # the process itself, kernels, allocator slack


def case_bytes(p: CaseParams) -> int:
    """Estimated peak memory of checking one case, in bytes."""
    return BYTES_PER_ELEMENT * (p.T * p.n * p.D + p.F * p.n * p.D) + OVERHEAD_BYTES


def device_memory(device: str) -> int | None:
    """Bytes a case may use on `device`: a GPU's total memory, or the memory the operating
    system reports as available; None where it cannot tell."""
    if device == "cuda":
        import torch
        try:
            return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def too_big(p: CaseParams, device: str, available: int | None = None) -> str | None:
    """Why the case does not fit `device` (one line), or None when it does or nobody can tell."""
    have = device_memory(device) if available is None else available
    need = case_bytes(p)
    if have is None or need <= have:
        return None
    where = "GPU memory" if device == "cuda" else "available memory"
    return (f"case B={p.B} S={p.S} n={p.n} D={p.D} needs about {_gib(need)} to check on {device}; "
            f"this machine has {_gib(have)} of {where}")
