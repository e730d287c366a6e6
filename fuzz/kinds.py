"""Failure kinds: what went wrong in one case. Each is its own signature in reports, its own
line in the summary and the JUnit file, and the kind a planted bug is expected to get.

Adding a kind is one member here (its value is what reports and summaries store), plus the
check in fuzz/check.py that reports it."""
from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    TOLERANCE = "tolerance"                         # an output element outside its derived bound
    NONFINITE = "nonfinite"                         # NaN/Inf where the truth is finite, or the reverse
    EXCEPTION = "exception"                         # raised on an input inside its capabilities
    CONTRACT = "contract"                           # wrong number/shape/dtype/device of outputs
    ACCEPTED_UNSUPPORTED = "accepted-unsupported"   # computed an input it declares unsupported
    INPUT_MUTATED = "input-mutated"                 # changed one of its inputs
    OUT_OF_BOUNDS = "out-of-bounds"                 # wrote outside its buffers (guard regions changed)
    NONDETERMINISTIC = "nondeterministic"           # declared deterministic, two runs differ bitwise
    FIRST_CALL = "first-call"                       # call 1 out of bounds, call 2 within (deterministic backend)
    REPEATED_CALL = "repeated-call"                 # call 1 within bounds, call 2 out (deterministic backend)
    HISTORY_DEPENDENT = "history-dependent"         # fails after earlier calls in its process, passes alone
    UNWRITTEN = "unwritten"                         # output elements never written: they hold the poison fill
    UNINITIALIZED = "uninitialized-read"            # outputs computed from memory nobody wrote (change with the fill)
    CRASH = "crash"                                 # killed its process (segfault, CUDA context lost)
    TIMEOUT = "timeout"                             # did not return within the per-case limit

    @property
    def contained(self) -> bool:
        """Seen by the executor (the worker died or hung), not by a check inside the worker."""
        return self in (FailureKind.CRASH, FailureKind.TIMEOUT)
