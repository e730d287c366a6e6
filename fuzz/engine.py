"""The fuzz loop: Hypothesis drives cases at each backend within a time budget.

For each backend, Hypothesis runs the differential property in chunks (fresh randomness per
chunk) until the backend's share of the budget is spent. `target()` on the error/bound
ratio of every component makes the search climb towards the worst inputs. Every failure
is recorded as soon as it is seen, by signature, keeping the smallest case: Hypothesis's
shrinking feeds ever smaller failing cases through the same path, so the report on disk
is the minimized one, and a run killed mid-way keeps what it found.

Exploration goes on after a finding: once the chunk that found a signature has shrunk it,
the signature is settled. A later case failing with a settled signature is counted (the
finding's `hits`) and otherwise treated as passing, so it is neither shrunk again nor ends
the search, and the run keeps looking for new signatures. (Only a smaller case replaces the
report.) Chunks after the first skip Hypothesis's replay of saved examples: those are the
settled failures, and replaying them as passes would also delete them from the database.

The deadline is hard: a case still running at the end of the budget is stopped by the
executor and counted as not run, and a case that would start after it is not started.

With a worker process (fuzz/executor.py), a new failure is first triaged by fuzz/history.py:
one that passes alone in a fresh process but fails again after the worker's recent calls is
recorded as history-dependent, with the few earlier calls it needs; seen again, it is counted
as a hit and not shrunk (Hypothesis cannot shrink what came before the case)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings, target
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from fuzz import discrimination, stop
from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.executor import WorkerStartError
from fuzz.history import HistoryTriage
from fuzz.reports import build_report, case_size, environment, write_report
from fuzz.strategies import cases, context_space, unsupported_cases
from impls.schema import BACKWARD_OUTPUTS, FORWARD_OUTPUTS

COMPONENTS = BACKWARD_OUTPUTS + FORWARD_OUTPUTS
MAX_SAMPLES = 5000   # ratios kept per component for the plots


@dataclass
class Finding:
    result: CaseResult
    path: Path | None
    detected_after_s: float
    hits: int = 1            # failing cases with this signature (the first, then each one after it settled)

    def to_dict(self) -> dict:
        r = self.result
        return {"signature": r.signature(), "kind": str(r.kind), "components": r.failing_components(),
                "case": r.params.short(), "elements": case_size(r.params)[0],
                "detected_after_s": round(self.detected_after_s, 2), "hits": self.hits,
                "message": r.message[:500], "report": str(self.path) if self.path else None,
                "params": r.params.to_dict(), "result": r.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(CaseResult.from_dict(d["result"]), Path(d["report"]) if d.get("report") else None,
                   d["detected_after_s"], d.get("hits", 1))


@dataclass
class BackendStats:
    name: str
    device: str
    budget_s: float = 0.0
    cases: int = 0
    passed: int = 0
    failed: int = 0
    refused: int = 0
    not_run: int = 0                                  # stopped at the deadline or by a signal
    seconds: float = 0.0
    first_failure_s: float | None = None
    first_failure_case: int | None = None           # how many cases ran until the first failure
    skipped: str | None = None
    worst: dict = field(default_factory=dict)       # component -> worst ratio among passing+failing
    worst_case: dict = field(default_factory=dict)  # component -> the case that gave it
    ratios: dict = field(default_factory=dict)      # component -> sample of ratios
    findings: dict = field(default_factory=dict)    # signature -> Finding (the smallest case)
    backend_stats: dict = field(default_factory=dict)
    worker_restarts: int = 0
    interrupted: bool = False                         # stopped by Ctrl-C / SIGTERM: partial numbers
    write_errors: list = field(default_factory=list)   # reports that could not be written
    workers: int = 1
    discrimination: dict = field(default_factory=dict)  # component -> [cases judged, cases that could tell]

    def record(self, res: CaseResult):
        if res.status == "not-run":
            self.not_run += 1
            return
        self.cases += 1
        if res.status == "refused":
            self.refused += 1
        elif res.failed:
            self.failed += 1
        else:
            self.passed += 1
        for v in res.verdicts:
            r = v.worst_ratio if math.isfinite(v.worst_ratio) else 1e30
            if r >= self.worst.get(v.component, 0.0):
                self.worst[v.component] = r
                self.worst_case[v.component] = res.params.to_dict()
            bucket = self.ratios.setdefault(v.component, [])
            if len(bucket) < MAX_SAMPLES:
                bucket.append(r)
        if res.backend_stats:
            self.backend_stats = res.backend_stats

    def cases_per_second(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def to_dict(self, samples: bool = False) -> dict:
        """The summary's entry for this backend; with `samples`, everything from_dict() needs."""
        d = {
            "backend": self.name, "device": self.device, "budget_s": round(self.budget_s, 1),
            "seconds": round(self.seconds, 2), "cases": self.cases, "passed": self.passed,
            "failed": self.failed, "refused": self.refused, "not_run": self.not_run,
            "cases_per_second": round(self.cases_per_second(), 3),
            "first_failure_s": None if self.first_failure_s is None else round(self.first_failure_s, 2),
            "first_failure_case": self.first_failure_case,
            "skipped": self.skipped, "worst_ratio": {k: self.worst[k] for k in COMPONENTS if k in self.worst},
            "worst_case": {k: self.worst_case[k] for k in COMPONENTS if k in self.worst_case},
            "backend_stats": self.backend_stats, "worker_restarts": self.worker_restarts,
            "interrupted": self.interrupted, "workers": self.workers,
            "findings": [f.to_dict() for f in self.findings.values()],
            "write_errors": self.write_errors,
        }
        if samples:
            d["discrimination_counts"] = self.discrimination
        if samples:
            d["ratios"] = self.ratios
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackendStats":
        s = cls(d["backend"], d["device"], d["budget_s"], d["cases"], d["passed"], d["failed"], d["refused"],
                d.get("not_run", 0), d["seconds"], d["first_failure_s"], d["first_failure_case"], d["skipped"],
                dict(d["worst_ratio"]), dict(d["worst_case"]), dict(d.get("ratios") or {}),
                backend_stats=dict(d.get("backend_stats") or {}), worker_restarts=d.get("worker_restarts", 0),
                interrupted=d.get("interrupted", False), write_errors=list(d.get("write_errors") or []),
                workers=d.get("workers", 1),
                discrimination={c: list(v) for c, v in (d.get("discrimination_counts") or {}).items()})
        for f in d["findings"]:
            s.findings[f["signature"]] = Finding.from_dict(f)
        return s

    def merge(self, other: "BackendStats") -> "BackendStats":
        """Add up another worker's statistics for the same backend (a sharded run)."""
        for k in ("cases", "passed", "failed", "refused", "not_run", "worker_restarts", "workers"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.seconds = max(self.seconds, other.seconds)
        self.budget_s = max(self.budget_s, other.budget_s)
        if other.first_failure_s is not None and (self.first_failure_s is None
                                                  or other.first_failure_s < self.first_failure_s):
            self.first_failure_s, self.first_failure_case = other.first_failure_s, other.first_failure_case
        for c, r in other.worst.items():
            if r >= self.worst.get(c, 0.0):
                self.worst[c], self.worst_case[c] = r, other.worst_case.get(c)
        for c, (cases, good) in other.discrimination.items():
            mine = self.discrimination.setdefault(c, [0, 0])
            mine[0] += cases
            mine[1] += good
        for c, rs in other.ratios.items():
            self.ratios[c] = (self.ratios.get(c, []) + rs)[:MAX_SAMPLES]
        for sig, f in other.findings.items():
            mine = self.findings.get(sig)
            if mine is None:
                self.findings[sig] = f
                continue
            hits = mine.hits + f.hits
            if case_size(f.result.params) < case_size(mine.result.params):
                mine = self.findings[sig] = Finding(f.result, f.path, min(mine.detected_after_s, f.detected_after_s))
            mine.hits = hits
        self.backend_stats = self.backend_stats or other.backend_stats
        self.skipped = self.skipped if self.skipped is not None else other.skipped
        self.interrupted = self.interrupted or other.interrupted
        self.write_errors += other.write_errors
        return self


class _CaseNotRun(KeyboardInterrupt):
    """Raised by the property instead of running its case, to end the chunk. A KeyboardInterrupt
    because Hypothesis lets it through at once (it is not an Exception) and, of all exceptions,
    only for KeyboardInterrupt does it not save the case to the example database's primary
    corpus as a failure, where the next run would replay it first (a case never run, in place
    of the last run's failure). The fuzz loop catches these before KeyboardInterrupt (Ctrl-C)."""


class ShrinkBudgetSpent(_CaseNotRun):
    """The chunk has shrunk its failure for opts.shrink_budget_s: the smallest failing case so
    far is already recorded (and its report written), and the search goes on with a new chunk.
    A hang or a crash costs its timeout or a new worker per shrinking step; without a bound
    Hypothesis shrinks such a failure for up to five minutes."""


class OutOfBudget(_CaseNotRun):
    """Past the deadline or the case limit: the chunk ends without generating or shrinking
    any further."""


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def chunk_end(exc: BaseException) -> str:
    """What a chunk's end by `exc` means for the run: "next" (its failures are recorded, or its
    shrink budget is spent: a new chunk goes on searching), "budget" (the run's budget is out),
    "interrupted" (Ctrl-C, SIGTERM) or "raise" (not the harness's: let it through). At its end
    Hypothesis replays each failure once more and raises what the replays raised, several as
    one group; a replay after the shrink budget ran out raises ShrinkBudgetSpent."""
    leaves = list(_leaves(exc))
    if any(isinstance(e, KeyboardInterrupt) and not isinstance(e, _CaseNotRun) for e in leaves):
        return "interrupted"
    if any(isinstance(e, OutOfBudget) for e in leaves):
        return "budget"
    if all(isinstance(e, (Exception, ShrinkBudgetSpent)) for e in leaves):
        return "next"      # failures: already recorded by the property
    return "raise"


def _failure_type(signature: str):
    """One exception type per signature, so Hypothesis shrinks each distinct bug separately."""
    cache = _failure_type.__dict__.setdefault("cache", {})
    if signature not in cache:
        cache[signature] = type("BackendFailure", (AssertionError,), {"signature": signature})
    return cache[signature]


@dataclass
class FuzzOptions:
    device: str = "cpu"
    chunk_examples: int = 50
    limits: object = None
    seed: int = 0
    database: object = None            # a Hypothesis ExampleDatabase, or None
    reports_dir: Path | None = None
    plugins: tuple = ()
    check_determinism: bool = True
    stop_on_first_failure: bool = False   # stop after the chunk (and shrinking) that found one
    stop_when_found: frozenset = frozenset()   # or: stop once these signatures are all found
    deadline: float | None = None      # time.monotonic() at which the whole run ends
    max_cases: int | None = None       # or: stop after this many cases (a fixed amount of work)
    hypothesis_seed: int | None = None  # seed Hypothesis (chunk k: seed + k): the same cases every time
    shrink_budget_s: float = 120.0     # the most seconds a chunk spends shrinking its failures
    on_result: object = None           # callback(stats, result) for progress display
    on_finding: object = None          # callback(stats, finding, is_new)


def fuzz_backend(name: str, caps, executor, budget_s: float, opts: FuzzOptions) -> BackendStats:
    """Fuzz one backend for `budget_s` seconds (never past opts.deadline); returns its
    statistics and findings."""
    stats = BackendStats(name, opts.device, budget_s)
    start = time.monotonic()
    deadline = start + budget_s if opts.deadline is None else min(start + budget_s, opts.deadline)
    env = environment(opts.device)
    # The run seed shifts every case's tensor seed, so shards with different seeds explore
    # different data. (Hypothesis's own @seed would also switch its example database off.)
    shift = opts.seed * 1_000_003
    supported = cases(caps, opts.limits, seeds=st.integers(0, 2**31 - 1).map(lambda s: (s + shift) % 2**31),
                      space=context_space(opts.device, executor))
    options = dict(check_determinism=None if opts.check_determinism else False)
    # failures that may need the calls before them (fuzz/history.py): with a worker process only
    triage = HistoryTriage(executor, caps.deterministic, options) if hasattr(executor, "run_sequence") else None
    outside = unsupported_cases(caps, opts.device)
    # about one case in ten probes the refusal of an unsupported input (shrinks to supported)
    strategy = supported if outside is None else st.one_of(*[supported] * 9, outside)
    settled = set()          # signatures whose chunk has shrunk them: counted, not shrunk again

    def record_failure(res: CaseResult, seen_at: float):
        sig = res.signature()
        old = stats.findings.get(sig)
        now = seen_at - start
        if stats.first_failure_s is None:
            stats.first_failure_s, stats.first_failure_case = now, stats.cases
        if old is not None and sig in settled:
            old.hits += 1
        if old is not None and case_size(old.result.params) <= case_size(res.params):
            return
        path = None
        if opts.reports_dir is not None:
            report = build_report(res, detected_after_s=old.detected_after_s if old else now,
                                  plugins=opts.plugins, env=env)
            try:
                path, _ = write_report(report, opts.reports_dir)
            except OSError as exc:     # full disk, permissions: keep the finding in memory
                stats.write_errors.append(f"{opts.reports_dir}: cannot write report: {exc.strerror or exc}")
        finding = Finding(res, path, old.detected_after_s if old else now, old.hits if old else 1)
        stats.findings[sig] = finding
        if opts.on_finding:
            opts.on_finding(stats, finding, old is None)

    def prop(params: CaseParams):
        stop.check()
        if time.monotonic() >= deadline or (opts.max_cases is not None and stats.cases >= opts.max_cases):
            raise OutOfBudget
        if failed_at and time.monotonic() - failed_at[0] > opts.shrink_budget_s:
            raise ShrinkBudgetSpent
        try:
            res = executor.run(name, params, deadline=deadline, **options)
            seen_at = time.monotonic()
            # history-dependent? (None: a failure already recorded as history-dependent)
            found = triage.classify(res, deadline) if res.failed and triage is not None else res
        except WorkerStartError as exc:
            fatal.append(exc)      # not a finding: stop the run and say why
            raise
        stop.check()
        stats.record(res)
        if opts.on_result:
            opts.on_result(stats, res)
        for v in res.verdicts:
            if math.isfinite(v.worst_ratio):
                target(min(v.worst_ratio, 1e12), label=v.component)
        target(discrimination.observe(stats, res), label="discrimination")   # tallied for the summary
        if found is None:          # a history-dependent failure seen again
            old = stats.findings.get(triage.recorded.get(res.signature()))
            if old is not None and old.result.signature() in settled:
                old.hits += 1
        elif found.failed:
            record_failure(found, seen_at)
            if found.signature() not in settled:
                failed_at[:] = failed_at or [time.monotonic()]     # this chunk shrinks from here
                raise _failure_type(found.signature())(f"{found.signature()}: {found.message}")

    def done() -> bool:
        if opts.max_cases is not None and stats.cases >= opts.max_cases:
            return True
        if opts.stop_when_found:
            return opts.stop_when_found <= set(stats.findings)
        return opts.stop_on_first_failure and bool(stats.findings)

    fatal = []
    failed_at = []           # when the current chunk first failed (its shrinking began)
    chunk = 0
    try:
        executor.warm()      # start the worker (imports, CUDA) now; it counts against this budget
    except KeyboardInterrupt:
        stats.interrupted = True
    while not stats.interrupted and time.monotonic() < deadline and not done():
        test = given(params=strategy)(prop)
        # no explain phase: it reruns the shrunk case with each choice varied, only to word a
        # failure message that is never shown (failures are recorded by the property), at the
        # cost of a case per choice (a case's context and layouts add a dozen choices)
        phases = tuple(p for p in Phase if p is not Phase.explain and (chunk == 0 or p is not Phase.reuse))
        test = settings(max_examples=opts.chunk_examples, deadline=None, database=opts.database,
                        derandomize=False, report_multiple_bugs=True, verbosity=Verbosity.quiet,
                        phases=phases, suppress_health_check=list(HealthCheck), print_blob=False)(test)
        if opts.hypothesis_seed is not None:
            test = seed(opts.hypothesis_seed + chunk)(test)
        # one database key per backend (the property's source is the same for all)
        test.hypothesis.inner_test._hypothesis_internal_add_digest = f"mhc-fuzz:{name}".encode()
        try:
            test()
        except BaseException as exc:
            end = chunk_end(exc)
            if end == "raise":
                raise
            if end == "interrupted":
                stats.interrupted = True
            if end != "next":
                break
        if fatal:
            raise fatal[0]
        settled.update(stats.findings)
        failed_at.clear()
        chunk += 1
    stats.seconds = time.monotonic() - start
    stats.worker_restarts = getattr(executor, "restarts", 0)
    return stats


def open_database(spec: str | None):
    """'none', a directory path, or redis://host:port/db (shared across machines)."""
    if spec in (None, "", "none"):
        return None
    if spec.startswith("redis://"):
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError as exc:
            raise ValueError(f"--db {spec}: the redis package is not installed (pip install redis)") from exc
        client = redis.Redis.from_url(spec)
        try:
            client.ping()
        except Exception as exc:
            raise ValueError(f"--db {spec}: cannot reach redis: {exc}") from exc
        return RedisExampleDatabase(client, expire_after=__import__("datetime").timedelta(days=30))
    return DirectoryBasedExampleDatabase(spec)
