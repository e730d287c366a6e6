"""Guard regions: every input handed to a backend lives inside a larger allocation whose
bytes before and after the tensor's storage hold a known pattern. A backend that writes
through a wrong pointer or past a buffer's end into its neighbour changes the pattern,
and the check after the call says which buffer and which side."""
from __future__ import annotations

import torch

GUARD_BYTES = 4096          # multiple of every element size; keeps the storage's alignment
PATTERN = 0xA5


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())


def guarded(t: torch.Tensor):
    """A copy of t (same values, sizes, strides and storage offset) with guard regions
    around its storage. Returns (tensor, guard) where guard is the whole byte buffer."""
    src = _storage_bytes(t)
    nbytes = src.numel()
    buf = torch.full((nbytes + 2 * GUARD_BYTES,), PATTERN, dtype=torch.uint8, device=t.device)
    buf[GUARD_BYTES:GUARD_BYTES + nbytes].copy_(src)
    esize = t.element_size()
    view = torch.empty(0, dtype=t.dtype, device=t.device).set_(
        buf.untyped_storage(), GUARD_BYTES // esize + t.storage_offset(), t.shape, t.stride())
    return view, buf


def damaged(buf: torch.Tensor) -> str:
    """'' if both guard regions are intact, else which side was written."""
    head = bool((buf[:GUARD_BYTES] != PATTERN).any())
    tail = bool((buf[-GUARD_BYTES:] != PATTERN).any())
    return ", ".join(side for side, bad in (("before", head), ("after", tail)) if bad)
