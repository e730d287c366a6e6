"""The fuzz loop: Hypothesis drives cases at each backend within a time budget.

For each backend, Hypothesis runs the differential property in chunks (fresh randomness per
chunk) until the backend's share of the budget is spent. `target()` on the error/bound
ratio of every component makes the search climb towards the worst inputs. Every failure
is recorded as soon as it is seen, by signature, keeping the smallest case: Hypothesis's
shrinking feeds ever smaller failing cases through the same path, so the report on disk
is the minimized one, and a run killed mid-way keeps what it found."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from fuzz import discrimination
from fuzz.cases import CaseParams
from fuzz.check import CaseResult
from fuzz.executor import WorkerStartError
from fuzz.reports import build_report, case_size, environment, write_report
from fuzz.strategies import cases, unsupported_cases
from fuzz.truth import BACKWARD, FORWARD

COMPONENTS = BACKWARD + FORWARD
MAX_SAMPLES = 5000   # ratios kept per component for the plots


@dataclass
class Finding:
    result: CaseResult
    path: Path | None
    detected_after_s: float


@dataclass
class BackendStats:
    name: str
    device: str
    budget_s: float = 0.0
    cases: int = 0
    passed: int = 0
    failed: int = 0
    refused: int = 0
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

    def record(self, res: CaseResult):
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

    def to_dict(self) -> dict:
        return {
            "backend": self.name, "device": self.device, "budget_s": round(self.budget_s, 1),
            "seconds": round(self.seconds, 2), "cases": self.cases, "passed": self.passed,
            "failed": self.failed, "refused": self.refused,
            "cases_per_second": round(self.cases_per_second(), 3),
            "first_failure_s": None if self.first_failure_s is None else round(self.first_failure_s, 2),
            "first_failure_case": self.first_failure_case,
            "skipped": self.skipped, "worst_ratio": {k: self.worst[k] for k in COMPONENTS if k in self.worst},
            "worst_case": {k: self.worst_case[k] for k in COMPONENTS if k in self.worst_case},
            "backend_stats": self.backend_stats, "worker_restarts": self.worker_restarts,
            "interrupted": self.interrupted,
            "findings": [{"signature": s, "kind": f.result.kind, "components": f.result.failing_components(),
                          "case": f.result.params.short(), "elements": case_size(f.result.params)[0],
                          "detected_after_s": round(f.detected_after_s, 2), "message": f.result.message[:500],
                          "report": str(f.path) if f.path else None,
                          "params": f.result.params.to_dict()} for s, f in self.findings.items()],
            "write_errors": self.write_errors,
        }


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
    on_result: object = None           # callback(stats, result) for progress display
    on_finding: object = None          # callback(stats, finding, is_new)


def fuzz_backend(name: str, caps, executor, budget_s: float, opts: FuzzOptions) -> BackendStats:
    """Fuzz one backend for `budget_s` seconds; returns its statistics and findings."""
    stats = BackendStats(name, opts.device, budget_s)
    executor.warm()          # a worker (re)start is not charged to this backend's budget
    start = time.monotonic()
    deadline = start + budget_s
    env = environment(opts.device)
    # The run seed shifts every case's tensor seed, so shards with different seeds explore
    # different data. (Hypothesis's own @seed would also switch its example database off.)
    shift = opts.seed * 1_000_003
    supported = cases(caps, opts.limits, seeds=st.integers(0, 2**31 - 1).map(lambda s: (s + shift) % 2**31))
    outside = unsupported_cases(caps, opts.device)
    # about one case in ten probes the refusal of an unsupported input (shrinks to supported)
    strategy = supported if outside is None else st.one_of(*[supported] * 9, outside)

    def record_failure(res: CaseResult):
        sig = res.signature()
        old = stats.findings.get(sig)
        now = time.monotonic() - start
        if stats.first_failure_s is None:
            stats.first_failure_s, stats.first_failure_case = now, stats.cases
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
        finding = Finding(res, path, old.detected_after_s if old else now)
        stats.findings[sig] = finding
        if opts.on_finding:
            opts.on_finding(stats, finding, old is None)

    def prop(params: CaseParams):
        if time.monotonic() > deadline:
            return   # out of budget: passing quickly lets Hypothesis wind down
        try:
            res = executor.run(name, params, check_determinism=None if opts.check_determinism else False)
        except WorkerStartError as exc:
            fatal.append(exc)      # not a finding: stop the run and say why
            raise
        stats.record(res)
        if opts.on_result:
            opts.on_result(stats, res)
        for v in res.verdicts:
            if math.isfinite(v.worst_ratio):
                target(min(v.worst_ratio, 1e12), label=v.component)
        target(discrimination.observe(stats, res), label="discrimination")   # tallied for the summary
        if res.failed:
            record_failure(res)
            raise _failure_type(res.signature())(f"{res.signature()}: {res.message}")

    fatal = []
    while time.monotonic() < deadline and not (opts.stop_on_first_failure and stats.findings):
        test = given(params=strategy)(prop)
        test = settings(max_examples=opts.chunk_examples, deadline=None, database=opts.database,
                        derandomize=False, report_multiple_bugs=True, verbosity=Verbosity.quiet,
                        phases=tuple(Phase), suppress_health_check=list(HealthCheck), print_blob=False)(test)
        # one database key per backend (the property's source is the same for all)
        test.hypothesis.inner_test._hypothesis_internal_add_digest = f"mhc-fuzz:{name}".encode()
        try:
            test()
        except KeyboardInterrupt:
            stats.interrupted = True
            break
        except Exception:
            pass   # failures are already recorded; Hypothesis re-raises them at the end
        if fatal:
            raise fatal[0]
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
