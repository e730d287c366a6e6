"""Planted bugs of the call's context and history: what a kernel gets wrong although every
input is right. Each is golden with one such defect; `expected` is the kind the harness must
report. The device and stream ones can only show on a GPU (two for the device one): elsewhere
their unavailable_reason() says why, and the kill table lists them as skipped."""
from __future__ import annotations

import torch

from fuzz.kinds import FailureKind
from impls.golden import backward_terms
from impls.registry import Capabilities
from impls.schema import SMALL_ARGS
from tests.mutants import Mutant


def _needs_gpus(count: int) -> str | None:
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < count:
        return f"{'CUDA' if count == 1 else f'{count} GPUs'} needed (found {found} GPU{'s' if found != 1 else ''})"
    return None


class CurrentDeviceLaunch(Mutant):
    name = "current_device_launch"
    expected = FailureKind.CONTRACT
    description = "launches on the current device, not the inputs' (inputs on cuda:1 while cuda:0 is current)"
    capabilities = Capabilities(devices=("cuda",), deterministic=True)

    def unavailable_reason(self):
        return _needs_gpus(2)

    def bug(self, r, a):
        here = torch.device("cuda", torch.cuda.current_device())
        if a["x"].device == here:
            return r
        return backward_terms(**{k: None if v is None else v.to(here) for k, v in a.items()})


class FirstCallWrong(Mutant):
    name = "first_call_wrong"
    expected = FailureKind.FIRST_CALL
    description = "autotunes on the first call of a shape, its trial runs adding into dx: wrong on that call only"

    def __init__(self):
        self.tuned = set()

    def bug(self, r, a):
        key = (tuple(a["x"].shape), a["x"].dtype)
        if key not in self.tuned:
            self.tuned.add(key)
            r["dx"] = (r["dx"].float() * 2).to(r["dx"].dtype)     # two trials accumulated
        return r


class StaleAlpha(Mutant):
    name = "stale_alpha"
    expected = FailureKind.HISTORY_DEPENDENT
    description = "captures alpha at its first call (as a CUDA graph captures a scalar) and reuses it in later calls"

    def __init__(self):
        self.captured = {}

    def bug(self, r, a):
        alpha = self.captured.setdefault(a["alpha"].device, a["alpha"].float().clone())
        return r if torch.equal(alpha, a["alpha"].float()) else backward_terms(**dict(a, alpha=alpha))


def _read_as_contiguous(t: torch.Tensor) -> torch.Tensor:
    """What a kernel that indexes t with contiguous strides from its data pointer reads (zeros past
    the end of its storage, where a kernel would read whatever lies there)."""
    flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage())
    end = t.storage_offset() + t.numel()
    if end > flat.numel():
        flat = torch.cat([flat, flat.new_zeros(end - flat.numel())])
    return flat[t.storage_offset():end].view(t.shape)


class SmallInputsAssumedContiguous(Mutant):
    name = "small_inputs_assumed_contiguous"
    description = "reads phi, alpha, bias, gamma, dh_post and dh_res with contiguous strides from their data pointers"

    def bug(self, r, a):
        odd = [k for k in SMALL_ARGS if a[k] is not None and not a[k].is_contiguous()]
        return backward_terms(**dict(a, **{k: _read_as_contiguous(a[k]) for k in odd})) if odd else r


class IgnoresCallerStream(Mutant):
    name = "ignores_caller_stream"
    expected = FailureKind.NONFINITE
    description = "computes on a stream of its own without waiting for the caller's current stream"
    capabilities = Capabilities(devices=("cuda",), deterministic=True)

    def __init__(self):
        self.streams = {}

    def unavailable_reason(self):
        return _needs_gpus(1)

    def backward(self, *args):
        dev = args[0].device
        own = self.streams.setdefault(dev, torch.cuda.Stream(dev))
        with torch.cuda.stream(own):        # reads the inputs before the caller's writes are done
            out = super().backward(*args)
        torch.cuda.current_stream(dev).wait_stream(own)   # (its outputs it does hand back in order)
        return out


CONTEXT = [CurrentDeviceLaunch, FirstCallWrong, StaleAlpha, SmallInputsAssumedContiguous, IgnoresCallerStream]
