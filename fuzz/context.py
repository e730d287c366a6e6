"""The execution context of a case: what surrounds the backend's call besides its inputs.

Kernels get the context wrong in ways their inputs never show: they launch on the current
device instead of the tensors' device, on their own stream instead of the caller's, or
behave differently under no_grad or inside autograd's backward. A case's context fields
(fuzz/cases.py) say which context its calls run in; CallContext applies it around every call
of the backend (call 1, call 2, the determinism rerun, the forward):

  grad_mode   enabled | no_grad | inference_mode | autograd (called from a custom
              autograd.Function's backward while torch.autograd.backward runs it, on autograd's
              own thread for CUDA tensors)
  stream      default | side: a side stream is the inputs' device's current stream, and the
              inputs' values are still being written on it behind a sleep kernel (until then they
              hold NaN). A backend that launches on the current stream reads the values; one that
              launches elsewhere reads NaN. The side stream is synchronized before judging.
  placement   current | other: the inputs are on cuda:1 while cuda:0 is the current device
  calls       1 | 2 (fuzz/check.py: repeated_call), first_call (fuzz/executor.py: a fresh worker)

The default context is no wrapper at all: the call is made exactly as before."""
from __future__ import annotations

import torch

SLEEP_CYCLES = 20_000_000     # ~10 ms of pending work on the side stream: far longer than a launch
POISON = 0xFF                 # every byte 0xFF: NaN in fp32, fp16 and bf16


def unavailable(params, device: str) -> str | None:
    """Why this machine cannot give the case its context (None when it can)."""
    if (params.stream != "default" or params.placement != "current") and device != "cuda":
        return "its stream or placement needs CUDA"
    if params.placement == "other" and torch.cuda.device_count() < 2:
        return f"its placement on another device needs 2 GPUs (found {torch.cuda.device_count()})"
    return None


class CallContext:
    """Where a case's inputs live and how each backend call is made (see the module doc)."""

    def __init__(self, params, device: str):
        why = unavailable(params, device)
        if why:
            raise ValueError(f"case context unavailable here: {why}")
        self.params = params
        self.cuda = device == "cuda"
        self.current = torch.cuda.current_device() if self.cuda else None
        # the device the case's tensors are made on: "other" puts them on cuda:1 (cuda:0 current)
        self.input_device = device
        if params.placement == "other":
            self.current, self.input_device = 0, "cuda:1"

    @property
    def is_default(self) -> bool:
        p = self.params
        return p.grad_mode == "enabled" and p.stream == "default" and p.placement == "current"

    def wrap(self, backend):
        """The backend whose calls run in this context (the backend itself in the default one)."""
        return backend if self.is_default else InContext(backend, self)

    def call(self, fn, args):
        mode = self.params.grad_mode
        if mode == "autograd":
            anchor = torch.device("cuda", self.current) if self.cuda else torch.device("cpu")
            return _from_autograd_backward(lambda: self._on_streams(fn, args), anchor)
        scope = {"enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
        with scope():
            return self._on_streams(fn, args)

    def _on_streams(self, fn, args):
        if not self.cuda:
            return fn(*args)
        with torch.cuda.device(self.current):
            if self.params.stream == "default":
                return fn(*args)
            dev = torch.device(self.input_device)
            side, restores = _pending_inputs(args, dev)
            before = torch.cuda.current_stream(dev)
            torch.cuda.set_stream(side)            # (also makes dev current: set it back below)
            torch.cuda.set_device(self.current)
            try:
                return fn(*args)
            finally:
                torch.cuda.set_stream(before)
                torch.cuda.set_device(self.current)
                side.synchronize()                 # the outputs are judged after the caller's stream
                del restores


class InContext:
    """A backend seen through a case's context: backward() and forward() run inside it; every
    other attribute (name, capabilities, stats, ...) is the backend's own."""

    def __init__(self, backend, context: CallContext):
        self._backend, self._context = backend, context

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def backward(self, *args):
        return self._context.call(self._backend.backward, args)

    def forward(self, *args):
        return self._context.call(self._backend.forward, args)


def _byte_span(t: torch.Tensor) -> torch.Tensor:
    """The bytes of t's storage from its first element to its last (gaps included), as uint8."""
    es = t.element_size()
    last = sum((size - 1) * st for size, st in zip(t.shape, t.stride()))
    start = t.storage_offset() * es
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(
        t.untyped_storage(), start, ((last + 1) * es,), (1,))


def _pending_inputs(args, dev: torch.device):
    """Overwrite the inputs with NaN, then, on a new side stream behind a sleep kernel, write their
    values back. Returns the side stream (still busy) and the saved values it reads from."""
    spans = [_byte_span(t) for t in args if isinstance(t, torch.Tensor) and t.numel()]
    with torch.cuda.device(dev):
        saved = [s.clone() for s in spans]
        for s in spans:
            s.fill_(POISON)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            torch.cuda._sleep(SLEEP_CYCLES)
            for s, v in zip(spans, saved):
                s.copy_(v)
    return side, saved


class _CallInBackward(torch.autograd.Function):
    """Identity on an anchor tensor whose backward makes the call (box["call"]) and keeps its result."""

    @staticmethod
    def forward(ctx, anchor, box):
        ctx.box = box
        return anchor.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.box["result"] = ctx.box["call"]()
        return grad, None


def _from_autograd_backward(call, device: torch.device):
    """call() made where autograd makes a backward: inside torch.autograd.backward (grad mode
    off; for CUDA tensors on autograd's device thread). Its exceptions propagate unchanged."""
    box = {"call": call}
    anchor = torch.zeros((), device=device, requires_grad=True)
    with torch.enable_grad():
        out = _CallInBackward.apply(anchor, box)
    torch.autograd.backward(out)
    return box["result"]
