"""Failures that depend on earlier calls: found in sequence, confirmed alone, minimized as a sequence.

A backend may keep state across calls in its process (a cache keyed by shape or by data
pointer, a workspace never cleared, an autotuner's choice). A case run by a long-lived worker
then fails because of the calls before it, and passes when run again on its own: without
care such a failure is lost as flaky. HistoryTriage looks at every new failure once:

1. it reruns the case alone in a fresh worker process (ALONE_RUNS times in that process, more
   for a backend that does not declare determinism); if it fails there, it is an ordinary failure;
2. if it passes alone, it replays the worker's recent calls (SubprocessExecutor.recent_calls)
   and then the case in fresh workers; if the failure comes back every time (HISTORY_RUNS), it
   is history-dependent. A failure that shows on some calls only, at random, could pass all the
   alone runs and then come back by chance: the more runs, the less likely (at one call in two:
   2^-8 for a deterministic backend), and a nondeterministic verdict (two calls differ) is
   random by nature and never triaged;
3. delta debugging (ddmin) over those calls, each trial in a fresh worker, finds a small
   sequence that still makes the case fail; the report records it, and replay reruns it.

A failure that passes alone and does not come back with its history is kept as it was, with
a note that it did not reproduce."""
from __future__ import annotations

import dataclasses

from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.kinds import FailureKind

ALONE_RUNS = 6                 # runs of the case alone in one fresh process (deterministic backend)
ALONE_RUNS_NONDETERMINISTIC = 12
HISTORY_RUNS = 2               # fresh processes in which the history must bring the failure back
MAX_TRIALS = 40                # fresh workers spent on minimizing one sequence


class HistoryTriage:
    """Decides, once per distinct failure, whether it needs the calls before it (see module doc)."""

    def __init__(self, executor, deterministic: bool = True, options: dict | None = None):
        self.executor = executor
        self.alone_runs = ALONE_RUNS if deterministic else ALONE_RUNS_NONDETERMINISTIC
        self.options = dict(options or {})
        self.seen = {}             # signature of a failure -> "alone" | "history" | "unreproduced"
        self.recorded = {}         # signature seen in the worker -> that of the history-dependent finding

    def classify(self, res: CaseResult, deadline: float | None = None) -> CaseResult | None:
        """The failure to record for `res` (the same result, or a history-dependent one with its
        minimized sequence), or None when it repeats a history-dependent failure already recorded
        (self.recorded names it). Its fresh processes end at `deadline` (time.monotonic()): a
        failure not triaged by then is kept as it was."""
        if (not res.failed or res.kind in (FailureKind.CRASH, FailureKind.TIMEOUT, FailureKind.NONDETERMINISTIC)
                or res.params.first_call):
            return res                 # contained by the executor, random by nature, or already run fresh
        sig = res.signature()
        verdict = self.seen.get(sig)
        if verdict == "history":
            return None
        if verdict is not None:
            return res
        history = self.executor.recent_calls()
        name, params = res.backend, res.params

        def run(seq):
            return self.executor.run_sequence(name, params, seq, deadline=deadline, **self.options)

        alone = [(name, params)] * (self.alone_runs - 1)
        last, earlier = run(alone)
        if last.status == "not-run":
            return res                 # out of time: not triaged (seen again, it will be)
        if last.failed or any(earlier) or not history:
            self.seen[sig] = "alone"
            return res
        for _ in range(HISTORY_RUNS):
            again, _ = run(history)
            if again.status == "not-run":
                return res
            if again.signature() != sig:
                break
        if again.signature() != sig:
            self.seen[sig] = "unreproduced"
            return dataclasses.replace(res, message=res.message + (
                f" [passed {self.alone_runs} times alone in a fresh process; replaying the {len(history)} calls "
                "before it in fresh processes did not reproduce it every time]"))
        self.seen[sig] = "history"
        trials = []

        def fails(seq):
            trials.append(seq)
            r, _ = run(seq)
            if r.failed and r.signature() == sig:
                fails.last = r
                return True
            return False

        fails.last = again             # the result of the last sequence that failed: the one kept
        needed = ddmin(history, fails, MAX_TRIALS)
        found = fails.last
        found = dataclasses.replace(
            found, kind=FailureKind.HISTORY_DEPENDENT,
            history=[{"backend": b, "params": p.to_dict()} for b, p in needed],
            message=(f"fails after {len(needed)} earlier call(s) in its process (minimized from {len(history)} "
                     f"in {len(trials)} fresh-process trials) and passes alone: {res.kind}: {found.message}"))
        self.recorded[sig] = found.signature()
        return found


def ddmin(items: list, fails, max_trials: int) -> list:
    """A 1-minimal sublist of `items` (order kept) for which fails(sublist) holds, given that
    fails(items) does (Zeller's delta debugging); stops early after `max_trials` calls."""
    n, trials = 2, 0
    while len(items) >= 2:
        size = -(-len(items) // n)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        candidates = [(c, 2) for c in chunks]               # one chunk alone
        if len(chunks) > 2:                                 # all but one chunk
            candidates += [([x for j, c in enumerate(chunks) if j != i for x in c], max(n - 1, 2))
                           for i in range(len(chunks))]
        for candidate, grain in candidates:
            if trials >= max_trials:
                return items
            trials += 1
            if fails(candidate):
                items, n = candidate, grain
                break
        else:
            if n >= len(items):
                break
            n = min(len(items), 2 * n)
    return items


def needs_fresh_worker(report: dict) -> bool:
    """A report whose case must run in a fresh process: it has earlier calls, or first_call."""
    return bool(report.get("history")) or bool(report.get("params", {}).get("first_call"))


def replay_in_fresh_worker(report: dict, backend: str, device: str, plugins=(), tolerances=None,
                           case_timeout_s: float = 300.0, tensors: str | None = None) -> CaseResult:
    """A report's earlier calls, then its case (or its stored `tensors`), in a new worker process.
    The verdict is its case's; a case that fails after earlier calls fails as history-dependent,
    the report's kind. `plugins`: the runner's own --plugin options, never the report's
    (fuzz/reports.py: nothing a report names is imported)."""
    from fuzz.executor import CaseLoadError
    from fuzz.fresh import FreshProcesses
    runner = FreshProcesses(plugins, device, tolerances, {}, template=False)   # one run: no template
    history = [(h["backend"], CaseParams.from_dict(h["params"])) for h in report.get("history") or []]
    params = CaseParams.from_dict(report["params"])
    status, payload = runner.run(backend, params, history, {} if tensors is None else {"tensors": tensors},
                                 case_timeout_s)
    if status == "result":
        res = CaseResult.from_dict(payload)
        if history and res.failed:
            res = dataclasses.replace(res, kind=FailureKind.HISTORY_DEPENDENT, history=report["history"],
                                      message=f"fails after {len(history)} earlier call(s) in a fresh process: "
                                              f"{res.kind}: {res.message}")
        return res
    if status == "load-error":
        raise CaseLoadError(payload)
    if status == "not-run":
        return CaseResult(backend, params, device, "not-run", message=payload)
    kind = FailureKind.TIMEOUT if status == "timeout" else FailureKind.CRASH
    return CaseResult(backend, params, device, "fail", kind, [], payload)
