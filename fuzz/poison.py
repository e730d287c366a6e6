"""Poisoned memory: before each call of a backend, the memory its outputs will come from is
filled with a sentinel, so that an output element the backend never writes is seen for what
it is instead of passing with whatever the allocator handed out (the caching allocator
readily hands a kernel the reference's freed output of the same shape).

Two fills. The first call of each direction in a case (the one whose outputs are judged)
runs on a NaN fill; every later call (the determinism rerun, the confirmation below) on a
second, finite fill. After the first call, an output element that holds the NaN fill's exact
bits, or any NaN, is looked at again after one rerun on the second fill:
  - it holds the second fill's bits there: never written -> UNWRITTEN;
  - it is something else there: computed from memory nobody wrote -> UNINITIALIZED;
  - it is the same again: not the fill's doing (a NaN there is the value checks' business).
A kernel that reads unwritten memory through a NaN-dropping operation (max, a comparison) is
invisible under NaN and shows under the second fill: its determinism rerun differs (the
backward's: the forward, a secondary check, is called once per case, on the NaN fill).

Where the fills come from:
  - CUDA: the backend's allocations are routed to a private pool of torch's caching allocator
    (torch.cuda.MemPool). Before each call the pool is grown, if needed, until a free block
    holds twice the outputs, and the first `reserve` bytes of every free block of the pool are
    filled (one call's allocations take each block from its start). Fills: bytes 0xFF (NaN in
    every float format), then bytes 0x7B, a finite value that is never right (1.3e36 as fp32
    and bf16, 61280 as fp16). Not covered: memory that the backend frees and allocates again
    within one call (covered() says, per output, whether it was). A pool that cases of many
    shapes have fragmented into many free blocks is replaced by an empty one (_renew).
  - CPU: every allocation made during the call is filled by torch's own allocator (the c10
    flags caffe2_cpu_allocator_do_junk_fill and _do_zero_fill): first the word 0x7FEDBEEF (NaN
    as fp32, a (-0.4668, NaN) pair as bf16/fp16), then zeros, the only other fill it offers
    (glibc's M_PERTURB would give 0x7B, but skips allocations served from its per-thread
    cache: tested, unreliable). A self-test at first use says if a fill is missing here.

MHC_FUZZ_POISON=off switches it off (to measure what it costs: bench/bench_checks.py)."""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
from pathlib import Path

import torch

from fuzz.kinds import FailureKind
from impls.schema import BACKWARD_OUTPUTS, FORWARD_OUTPUTS, output_specs

CUDA_NAN = 0xFFFFFFFF          # bytes 0xFF: NaN as fp32, bf16 and fp16
CUDA_FINITE = 0x7B7B7B7B       # bytes 0x7B: 1.3e36 (fp32, bf16), 61280 (fp16)
CPU_NAN = 0x7FEDBEEF           # torch's CPU junk fill (c10/core/impl/alloc_cpu.cpp)
CPU_ZERO = 0x00000000          # torch's CPU zero fill
FILLS = {"cuda": (CUDA_NAN, CUDA_FINITE), "cpu": (CPU_NAN, CPU_ZERO)}   # (first, second) per device
RESERVE_SLACK = 2 << 20
MAX_FREE_BLOCKS = 16           # a pool with more free blocks than this (or holding more free
POOL_SHARE_OF_DEVICE = 16      # memory than 4 reserves and 1/16 of the device) starts afresh


def enabled() -> bool:
    return os.environ.get("MHC_FUZZ_POISON", "on").strip().lower() not in ("0", "off", "false", "no")


def nan_word(device: str) -> int:
    return FILLS[device][0]


def second_word(device: str) -> int:
    return FILLS[device][1]


# ------------------------------------------------------------------ recognising a fill
def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def holds(t: torch.Tensor, word: int) -> torch.Tensor:
    """Bool mask over t: elements whose bits are the fill `word` (4 bytes, little-endian,
    repeated from 4-aligned addresses) at their address. For a 2-byte word half that is not
    NaN on its own (the CPU junk fill's 0xBEEF), the element counts only when the whole 4-byte
    word around it is intact: a lone -0.4668 is a value, not a fill."""
    es = t.element_size()
    if es == 4:
        return t.view(torch.int32) == _signed(word, 32)
    if es != 2:
        return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    lo, hi = word & 0xFFFF, word >> 16
    if lo == hi:
        return t.view(torch.int16) == _signed(lo, 16)
    # match on the whole storage, word by word, then view the mask with t's strides
    s = torch.empty(0, dtype=torch.int16, device=t.device).set_(t.untyped_storage())
    lead = (s.data_ptr() // 2) % 2            # storage element 0 is the second half of a word
    body = lead + s.numel()
    padded = torch.zeros(body + body % 2, dtype=torch.int16, device=t.device)
    padded[lead:body] = s
    pairs = padded.view(-1, 2)
    word_ok = ((pairs[:, 0] == _signed(lo, 16)) & (pairs[:, 1] == _signed(hi, 16))).repeat_interleave(2)
    if body % 2:                              # the storage ends on a first half: it is all there is
        word_ok[body - 1] = padded[body - 1] == _signed(lo, 16)
    return torch.as_strided(word_ok[lead:body].contiguous(), t.shape, t.stride(), t.storage_offset())


# ------------------------------------------------------------------ CPU: fill every allocation
class _CpuFill:
    FLAGS = {CPU_NAN: "FLAGS_caffe2_cpu_allocator_do_junk_fill", CPU_ZERO: "FLAGS_caffe2_cpu_allocator_do_zero_fill"}

    def __init__(self):
        self.flags, self.problems = {}, {}
        lib = next(iter(sorted((Path(torch.__file__).parent / "lib").glob("libc10.*"))), None)
        for word, symbol in self.FLAGS.items():
            try:
                self.flags[word] = ctypes.c_bool.in_dll(ctypes.CDLL(str(lib)), symbol)
            except (OSError, ValueError, TypeError) as exc:
                self.problems[word] = f"torch's CPU allocator flag {symbol} not found ({exc})"
                continue
            with self.fill(word):           # does a fresh tensor, small and large, come filled?
                probes = [torch.empty(n, dtype=torch.uint8) for n in (8, 4096, 3 << 20)]
            if not all(bool(holds(p.view(torch.int32), word).all()) for p in probes):
                self.problems[word] = f"CPU allocations are not filled with {word:#x} on this host"

    @contextlib.contextmanager
    def fill(self, word: int):
        flag = self.flags.get(word)
        if flag is None:
            yield
            return
        flag.value = True            # never both at once: c10 aborts on junk and zero fill together
        try:
            yield
        finally:
            flag.value = False


# ------------------------------------------------------------------ CUDA: a private, filled pool
class _Raw:
    """A device address range as a __cuda_array_interface__ (torch.as_tensor wraps it, no copy)."""

    def __init__(self, ptr: int, nbytes: int):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "strides": None, "version": 2}


class _CudaFill:
    def __init__(self):
        self.problems = {}
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + os.environ.get("PYTORCH_ALLOC_CONF", "")
        if "expandable_segments:true" in conf.replace(" ", "").lower():
            why = "expandable segments are on: free blocks may be unmapped"
            self.problems = {CUDA_NAN: why, CUDA_FINITE: why}
        elif os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
            why = "the caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1)"
            self.problems = {CUDA_NAN: why, CUDA_FINITE: why}
        self.pool = None if self.problems else torch.cuda.MemPool()
        self.ranges = []           # (start, end) filled before the last call
        self.cap = 0 if self.problems else torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory \
            // POOL_SHARE_OF_DEVICE
        self.renewals = 0

    def _renew(self):
        """Start again from an empty pool. Cases of many shapes leave the pool with ever more
        free blocks, each filled before every call (launches, not bytes: they were 8 ms of a
        golden case), and with memory no other pool can use, which ran a GPU shared by
        several workers out of memory. The old pool's memory goes back to the driver as its
        last blocks are freed."""
        self.pool = torch.cuda.MemPool()
        torch.cuda.empty_cache()
        self.renewals += 1

    def _free_blocks(self):
        """[(address, size, in the small pool)] of every free block of the pool on this device."""
        dev = torch.cuda.current_device()
        try:
            segs = torch.cuda.memory_snapshot(self.pool.id, include_traces=False)
        except TypeError:          # an older torch: the whole snapshot, filtered by pool
            segs = [s for s in torch.cuda.memory_snapshot() if tuple(s.get("segment_pool_id", ())) == self.pool.id]
        return [(b["address"], b["size"], s.get("segment_type") == "small") for s in segs
                if s.get("device", dev) == dev for b in s["blocks"] if b["state"] == "inactive"]

    @contextlib.contextmanager
    def fill(self, word: int, reserve: int):
        if word in self.problems:
            self.ranges = []
            yield
            return
        blocks = self._free_blocks()
        if len(blocks) > MAX_FREE_BLOCKS or sum(size for _, size, _ in blocks) > max(4 * reserve, self.cap):
            self._renew()
            blocks = []
        grow = max((size for _, size, small in blocks if not small), default=0) < reserve
        if torch.cuda.mem_get_info()[0] < 2 * reserve:
            # inside the pool's context the allocator cannot hand the harness's cached memory
            # back to the driver when the backend runs short: do it now
            torch.cuda.empty_cache()
        with torch.cuda.use_mem_pool(self.pool):
            if grow:               # a free block for twice the outputs (freed at once)
                torch.empty(reserve, dtype=torch.uint8, device="cuda")
            if not any(small for *_, small in blocks):
                torch.empty(1, dtype=torch.uint8, device="cuda")       # a segment of the small pool too
            if grow or not any(small for *_, small in blocks):
                blocks = self._free_blocks()
            self.ranges = []
            for addr, size, _ in blocks:
                n = min(size, reserve)
                torch.as_tensor(_Raw(addr, n), device="cuda").fill_(word & 0xFF)
                self.ranges.append((addr, addr + n))
            yield

    def covered(self, t: torch.Tensor) -> bool:
        start = t.untyped_storage().data_ptr()
        end = start + t.untyped_storage().nbytes()
        return any(a <= start and end <= b for a, b in self.ranges)


_FILLS: dict = {}


def _fill_of(device: str):
    if device not in _FILLS:
        _FILLS[device] = _CudaFill() if device == "cuda" else _CpuFill()
    return _FILLS[device]


def unavailable(device: str, word: int) -> str | None:
    """Why `word` cannot be filled in on `device` here, or None."""
    return _fill_of(device).problems.get(word)


def covered(device: str, t: torch.Tensor) -> bool:
    """Whether t's memory was filled before the last call (CPU: every allocation is)."""
    fill = _fill_of(device)
    return fill.covered(t) if device == "cuda" else not fill.problems.get(CPU_NAN)


def reserve_bytes(params, direction: str) -> int:
    """Free memory to hold ready, filled, before a call: twice its outputs, plus slack."""
    specs = output_specs(params.B, params.S, params.n, params.D, params.x_dtype, direction)
    out = sum(math.prod(shape) * torch.empty(0, dtype=dt).element_size() for shape, dt in specs.values())
    return 2 * out + RESERVE_SLACK


@contextlib.contextmanager
def filled(device: str, word: int, reserve: int):
    """Run the block (one call of a backend) on memory filled with `word`."""
    fill = _fill_of(device)
    if device == "cuda":
        with fill.fill(word, reserve):
            yield
    else:
        with fill.fill(word):
            yield


# ------------------------------------------------------------------ the backend, on poisoned memory
class PoisonedBackend:
    """The backend under test, each of whose calls runs on filled memory: the first call of each
    direction on the NaN fill, every later one on the second fill (or the fill asked for)."""

    def __init__(self, backend, params, device: str):
        self.inner, self.params, self.device = backend, params, device
        self.calls = {"backward": 0, "forward": 0}

    def __getattr__(self, name):          # name, capabilities, stats, ...: the backend's own
        return getattr(self.inner, name)

    def backward(self, *args):
        return self.call("backward", args)

    def forward(self, *args, **kwargs):
        return self.call("forward", args, kwargs=kwargs)

    def call(self, direction: str, args, word: int | None = None, kwargs=None):
        if word is None:
            word = nan_word(self.device) if self.calls[direction] == 0 else second_word(self.device)
        self.calls[direction] += 1
        with filled(self.device, word, reserve_bytes(self.params, direction)):
            return getattr(self.inner, direction)(*args, **(kwargs or {}))


def _index(mask: torch.Tensor) -> list:
    return [int(i) for i in torch.nonzero(mask)[0]] if mask.dim() else []


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def inspect(outputs, direction: str, device: str, rerun):
    """(FailureKind, message) when outputs of a NaN-filled call hold the fill or NaN that
    rerun() on the second fill (called only then) shows to come from unwritten memory; else None."""
    names = BACKWARD_OUTPUTS if direction == "backward" else FORWARD_OUTPUTS
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(names):
        return None                                   # the contract check reports it
    word = nan_word(device)
    floats = {k: t for k, t in zip(names, outputs)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.element_size() in (2, 4) and t.numel()}
    if not floats:
        return None
    # the usual case, nothing to look at, costs one synchronisation: every fill word's halves are
    # NaN except the CPU junk word's first one, so only there the fill is looked for beside NaN
    nan_only = word in (CUDA_NAN,)
    suspect = {k: torch.isnan(t) if nan_only else torch.isnan(t) | holds(t, word) for k, t in floats.items()}
    flags = torch.stack([m.any() for m in suspect.values()]).tolist()
    seen = {k: (floats[k], holds(floats[k], word), torch.isnan(floats[k]))
            for k, flag in zip(suspect, flags) if flag}
    if not seen:
        return None
    second = second_word(device)
    again = _safe(rerun) if unavailable(device, second) is None else None
    unwritten, uninit = [], []
    for i, name in enumerate(names):
        if name not in seen:
            continue
        out, fill, nan = seen[name]
        other = again[i] if _same_layout(again, i, out) else None
        if other is None:                             # no finite rerun to compare: the fill alone
            never, computed = fill, torch.zeros_like(fill)
        else:
            # what is left the same by both calls is not from the fill (a NaN there is the
            # value checks' business)
            never = fill & holds(other, second)
            computed = (fill | nan) & ~never & (_bits(other) != _bits(out))
        for found, bucket in ((never, unwritten), (computed, uninit)):
            k = int(found.sum())
            if k:
                bucket.append(f"{name}: {k} of {out.numel()} elements, first at {_index(found)}")
    if unwritten:
        return FailureKind.UNWRITTEN, ("output elements never written (they hold the memory fill: "
                                       f"{word:#010x}, then {second:#010x} on a rerun): " + "; ".join(unwritten))
    if uninit:
        return FailureKind.UNINITIALIZED, ("outputs computed from memory nobody wrote (NaN on a NaN fill, "
                                           f"other values on a {second:#010x} fill): " + "; ".join(uninit))
    return None


def _safe(rerun):
    try:
        return rerun()
    except Exception:       # the rerun's own failure is not what this check is about
        return None


def _same_layout(again, i, out) -> bool:
    if not isinstance(again, (tuple, list)) or i >= len(again):
        return False
    o = again[i]
    return isinstance(o, torch.Tensor) and o.shape == out.shape and o.dtype == out.dtype and o.device == out.device
