"""Where a backend runs: in this process, or in a worker process that may die.

A backend under test can segfault, lose its CUDA context (illegal address, device
assert) or hang. SubprocessExecutor runs each case in a long-lived worker process; a
worker that dies or overruns the per-case timeout is replaced, and the case is returned
as a CRASH or TIMEOUT failure, so the run goes on.

It also keeps the log of the calls its worker has run (what a history-dependent failure may
need again, fuzz/history.py), and runs a case, or a sequence of calls, in a fresh process
that has run nothing before (run_fresh, run_sequence; fuzz/fresh.py): a case with
first_call set always runs there."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque

from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams
from fuzz.check import CaseResult, run_case
from fuzz.fresh import FreshProcesses, run_calls
from fuzz.kinds import FailureKind
from impls.registry import default_registry

STARTUP_TIMEOUT_S = 300.0
CALL_LOG_LENGTH = 32          # calls of the current worker kept for a history-dependent failure


class WorkerStartError(RuntimeError):
    """The worker process could not start: a harness problem, not a finding about a backend."""


class InProcessExecutor:
    """Runs cases in this process: fastest, for trusted backends and tests."""

    def __init__(self, registry, device: str, tolerances_path=None):
        self.registry, self.device = registry, device
        self.tolerances = tolmod.load(tolerances_path)

    def warm(self):
        pass

    def run(self, backend_name: str, params: CaseParams, **options) -> CaseResult:
        return run_case(self.registry.get(backend_name), params, self.device, self.tolerances, **options)

    def close(self):
        pass


def _worker_main(conn, plugins, device, tolerances_path, env):
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    registry = default_registry(plugins)
    tolerances = tolmod.load(tolerances_path)
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, params, options = msg
        conn.send(("result", run_calls(registry, tolerances, device, name, params, options)))


def _describe_exit(code) -> str:
    if code is None:
        return "worker did not exit"
    if code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


class SubprocessExecutor:
    """Runs cases in a worker process; survives crashes and hangs of the backend."""

    def __init__(self, plugins=(), device: str = "cpu", tolerances_path=None,
                 case_timeout_s: float = 300.0, env: dict | None = None):
        self.plugins, self.device = tuple(plugins), device
        self.tolerances_path = str(tolerances_path) if tolerances_path else None
        self.case_timeout_s = case_timeout_s
        self.env = dict(env or {})
        self.restarts = 0
        self._proc = self._conn = None
        self.call_log = deque(maxlen=CALL_LOG_LENGTH)   # (backend, params) run by the current worker
        self._log_pid = None
        self._fresh = None             # fresh processes (fuzz/fresh.py), started when first needed

    def _start(self):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, daemon=True,
                                 args=(child, self.plugins, self.device, self.tolerances_path, self.env))
        self._proc.start()
        child.close()
        if not self._conn.poll(STARTUP_TIMEOUT_S):
            self._kill()
            raise WorkerStartError(f"fuzz worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            self._conn.recv()
        except EOFError:
            self._proc.join(10)          # reap it, so that its exit code is known
            code = self._proc.exitcode
            self._kill()
            raise WorkerStartError(f"fuzz worker failed to start ({_describe_exit(code)})") from None

    def _kill(self):
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(10)
        self._proc = self._conn = None

    def warm(self):
        """Start the worker now (imports, CUDA init), so that it is not charged to a case."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self.restarts += 1
            self._start()

    def run(self, backend_name: str, params: CaseParams, **options) -> CaseResult:
        if params.first_call:
            return self.run_fresh(backend_name, params, **options)
        self.warm()
        self._log_call(backend_name, params)
        t0 = time.perf_counter()
        try:
            self._conn.send((backend_name, params.to_dict(), options))
            if self._conn.poll(self.case_timeout_s):
                _, payload = self._conn.recv()
                return CaseResult.from_dict(payload)
            kind, why = FailureKind.TIMEOUT, f"no result within the per-case timeout of {self.case_timeout_s:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(10)
            kind, why = FailureKind.CRASH, _describe_exit(self._proc.exitcode)
        self._kill()
        self.restarts += 1
        return CaseResult(backend_name, params, self.device, "fail", kind, [], why, time.perf_counter() - t0)

    def close(self):
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self._proc is not None:
            self._proc.join(5)
        self._kill()
        if self._fresh is not None:
            self._fresh.close()

    # ------------------------------------------------------------ call log and fresh workers
    def _log_call(self, backend_name: str, params: CaseParams):
        if self._proc.pid != self._log_pid:     # a new worker has no history
            self.call_log.clear()
            self._log_pid = self._proc.pid
        self.call_log.append((backend_name, params))

    def recent_calls(self) -> list:
        """[(backend, params)] the current worker ran before its last call, oldest first."""
        return list(self.call_log)[:-1]

    def _fresh_processes(self) -> FreshProcesses:
        if self._fresh is None:
            self._fresh = FreshProcesses(self.plugins, self.device, self.tolerances_path, self.env, self.case_timeout_s)
        return self._fresh

    def run_fresh(self, backend_name: str, params: CaseParams, **options) -> CaseResult:
        """Run one case in a process that has run nothing before."""
        return self.run_sequence(backend_name, params, (), **options)[0]

    def run_sequence(self, backend_name: str, params: CaseParams, history=(), **options) -> tuple:
        """Run the calls of `history` [(backend, params)], then the case, in a fresh process.
        Returns (the case's result, [signature of each earlier call's failure, or ""])."""
        t0 = time.perf_counter()
        status, payload = self._fresh_processes().run(backend_name, params, history, options)
        if status == "result":
            return CaseResult.from_dict(payload), payload.get("earlier", [])
        kind = FailureKind.TIMEOUT if status == "timeout" else FailureKind.CRASH
        return CaseResult(backend_name, params, self.device, "fail", kind, [], payload, time.perf_counter() - t0), []
