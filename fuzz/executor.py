"""Where a backend runs: in this process, or in a worker process that may die.

A backend under test can segfault, lose its CUDA context (illegal address, device
assert) or hang. SubprocessExecutor runs each case in a long-lived worker process; a
worker that dies or overruns the per-case timeout is replaced, and the case is returned
as a CRASH or TIMEOUT failure, so the run goes on.

A case still running at the run's deadline, or when the run is stopped (fuzz/stop.py), is
ended by killing the worker and returned as not run: neither a pass nor a failure. The
worker ignores SIGINT and SIGTERM, so a signal sent to the whole process group stops the run
through the parent, and never looks like a crash of the backend.

Workers are forked from a fork server that has imported torch once (multiprocessing's
"forkserver", torch preloaded): replacing a worker after a crash costs a fork, not a new
interpreter importing torch (seconds per crash, and a crashing backend crashes on most cases
while Hypothesis shrinks). The server imports nothing that reads the environment a worker is
given (TRITON_INTERPRET, plugin paths): the worker imports the backends itself, after it has
set that environment. The server starts with SIGINT/SIGTERM blocked like the workers, and keeps
them blocked: it ends when this process does.

run(name, params, tensors=PATH) runs the tensors stored in a file (given tensors, a reduced
report; `params` describes them) instead of generating the case, judged against the truth
of their saved activations (fuzz/given.py).

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

from fuzz import stop
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams
from fuzz.check import CaseResult, run_case, run_inputs
from fuzz.context import CallContext
from fuzz.fresh import FreshProcesses
from fuzz.kinds import FailureKind
from fuzz.shards import GPU_SHARE_ENV
from impls.registry import default_registry

STARTUP_TIMEOUT_S = 300.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# what the fork server imports once for every worker (see the module doc): torch, and this
# module with the checks (none of them reads the environment when imported); and what torch
# imports on the first backward of a process (symbolic shapes, with sympy: 0.7 s on a CPU
# core), which would otherwise count against the first case of every new worker, the one
# after a hang or a crash included. The fork server skips a module that does not import.
PRELOAD = ["torch", "fuzz.executor", "torch.fx.experimental.symbolic_shapes"]
POLL_S = 0.1          # how often a wait looks at the deadline and the stop flag
CALL_LOG_LENGTH = 32  # calls of the current worker kept for a history-dependent failure


class WorkerStartError(RuntimeError):
    """The worker process could not start: a harness problem, not a finding about a backend."""


class CaseLoadError(RuntimeError):
    """A case's tensors file could not be loaded (it changed or vanished since it was checked)."""


def share_gpu_memory(device: str):
    """On a GPU shared by k shards (MHC_FUZZ_GPU_SHARE=k, fuzz/shards.py), this process may hold
    1/k of its memory: the caching allocator then frees its own cache and retries at that
    limit, instead of one process's cache running the others out of memory (which they would
    report as the backend's failure). Once per process, before its first case."""
    global _SHARED
    if _SHARED or device != "cuda":
        return
    _SHARED = True
    try:
        k = int(os.environ.get(GPU_SHARE_ENV, "1"))
    except ValueError:
        k = 1
    if k > 1:
        import torch
        torch.cuda.set_per_process_memory_fraction(1.0 / k)


_SHARED = False


def _run_one(backend, params: CaseParams, device, tolerances, tensors=None, **options) -> CaseResult:
    share_gpu_memory(device)
    if tensors is None:
        return run_case(backend, params, device, tolerances, **options)
    from fuzz.given import GivenTensorsError, inputs_from_file
    from fuzz.truth import truth_from_saved
    context = CallContext(params, device)     # given tensors are called in their case's context too
    try:
        inp = inputs_from_file(tensors, context.input_device, params)
    except (GivenTensorsError, OSError) as exc:
        raise CaseLoadError(str(exc)) from None
    return run_inputs(context.wrap(backend), inp, device, tolerances, truth_of=truth_from_saved, **options)


def run_calls(registry, tolerances, device, name, params: dict, options: dict) -> dict:
    """The calls of options["history"] [(backend, params dict)] in this process (their results
    kept only as failure signatures, in "earlier"), then the case; the case's result as a dict."""
    options = dict(options)
    history = options.pop("history", ())
    plain = {k: v for k, v in options.items() if k != "tensors"}
    earlier = [_run_one(registry.get(n), CaseParams.from_dict(p), device, tolerances, **plain) for n, p in history]
    result = _run_one(registry.get(name), CaseParams.from_dict(params), device, tolerances, **options)
    return dict(result.to_dict(), earlier=[r.signature() if r.failed else "" for r in earlier])


class InProcessExecutor:
    """Runs cases in this process: fastest, for trusted backends and tests."""

    def __init__(self, registry, device: str, tolerances_path=None):
        self.registry, self.device = registry, device
        self.tolerances = tolmod.load(tolerances_path)

    def warm(self):
        pass

    def run(self, backend_name: str, params: CaseParams, deadline: float | None = None, **options) -> CaseResult:
        # in this process a running case cannot be stopped: the deadline is only checked before it
        if (deadline is not None and time.monotonic() >= deadline) or stop.requested():
            return not_run(backend_name, params, self.device, "the run's deadline had passed")
        return _run_one(self.registry.get(backend_name), params, self.device, self.tolerances, **options)

    def close(self):
        pass


def _worker_main(conn, plugins, device, tolerances_path, env):
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # blocked since its start (see _start)
    registry = default_registry(plugins)
    tolerances = tolmod.load(tolerances_path)
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, params, options = msg
        try:
            payload = run_calls(registry, tolerances, device, name, params, options)
        except CaseLoadError as exc:
            conn.send(("load-error", str(exc)))
            continue
        conn.send(("result", payload))


def _context():
    """The fork server's context; its preload is set before the server starts (once per process)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def not_run(backend_name, params, device, why) -> CaseResult:
    return CaseResult(backend_name, params, device, "not-run", message=why)


def _wait(conn, seconds: float) -> str:
    """Wait for the worker's answer: 'ready', 'timeout', or 'stopped' (a stop was requested)."""
    end = time.monotonic() + max(0.0, seconds)
    while True:
        if stop.requested():
            return "stopped"
        left = end - time.monotonic()
        if conn.poll(min(POLL_S, max(0.0, left))):
            return "ready"
        if left <= 0:
            return "timeout"


def stop_worker(proc, conn, wait_s: float = 5.0):
    """Ask a worker process to exit (None on its pipe), wait for it, and kill it if it has not."""
    if conn is not None:
        try:
            conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    if proc is not None:
        proc.join(wait_s)
        if proc.is_alive():
            proc.kill()
            proc.join(wait_s)


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
        ctx = _context()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, daemon=True,
                                 args=(child, self.plugins, self.device, self.tolerances_path, self.env))
        # the worker starts with SIGINT and SIGTERM blocked (the mask survives fork and exec), so a
        # signal to the whole process group while it imports is held, then dropped by SIG_IGN
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        waited = _wait(self._conn, STARTUP_TIMEOUT_S)
        if waited != "ready":
            self._kill()
            if waited == "stopped":
                raise KeyboardInterrupt
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

    def run(self, backend_name: str, params: CaseParams, deadline: float | None = None, **options) -> CaseResult:
        """Run one case in the worker. `deadline` (time.monotonic()) is the run's end: a case
        still running then is stopped and returned as not run."""
        if (deadline is not None and time.monotonic() >= deadline) or stop.requested():
            return not_run(backend_name, params, self.device, "the run's deadline had passed")
        if params.first_call:          # the first call of anything in its process
            return self.run_fresh(backend_name, params, deadline=deadline, **options)
        self.warm()
        if options.get("tensors") is None:    # (given tensors are not a call a log can repeat)
            self._log_call(backend_name, params)
        t0 = time.perf_counter()
        left = self.case_timeout_s if deadline is None else min(self.case_timeout_s, deadline - time.monotonic())
        try:
            self._conn.send((backend_name, params.to_dict(), options))
            waited = _wait(self._conn, left)
            if waited == "ready":
                what, payload = self._conn.recv()
                if what == "load-error":
                    raise CaseLoadError(payload)
                return CaseResult.from_dict(payload)
            if waited == "stopped" or left < self.case_timeout_s:
                self._kill()    # not the backend's fault: the run ends; the next run starts a new worker
                return not_run(backend_name, params, self.device,
                               "stopped by a signal" if waited == "stopped" else "still running at the run's deadline")
            kind, why = FailureKind.TIMEOUT, f"no result within the per-case timeout of {self.case_timeout_s:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(10)
            kind, why = FailureKind.CRASH, _describe_exit(self._proc.exitcode)
        self._kill()
        self.restarts += 1
        return CaseResult(backend_name, params, self.device, "fail", kind, [], why, time.perf_counter() - t0)

    def close(self):
        stop_worker(self._proc, self._conn)
        self._proc = self._conn = None
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
            self._fresh = FreshProcesses(self.plugins, self.device, self.tolerances_path, self.env)
        return self._fresh

    def run_fresh(self, backend_name: str, params: CaseParams, deadline: float | None = None,
                  **options) -> CaseResult:
        """Run one case in a process that has run nothing before."""
        return self.run_sequence(backend_name, params, (), deadline=deadline, **options)[0]

    def run_sequence(self, backend_name: str, params: CaseParams, history=(), deadline: float | None = None,
                     **options) -> tuple:
        """Run the calls of `history` [(backend, params)], then the case, in a fresh process.
        Returns (the case's result, [signature of each earlier call's failure, or ""]). Each call
        has the per-case timeout; a sequence still running at `deadline`, or when the run is
        stopped, is ended and its case returned as not run."""
        if (deadline is not None and time.monotonic() >= deadline) or stop.requested():
            return not_run(backend_name, params, self.device, "the run's deadline had passed"), []
        t0 = time.perf_counter()
        status, payload = self._fresh_processes().run(backend_name, params, history, options,
                                                      self.case_timeout_s, deadline)
        if status == "result":
            return CaseResult.from_dict(payload), payload.get("earlier", [])
        if status == "load-error":
            raise CaseLoadError(payload)
        if status == "not-run":
            return not_run(backend_name, params, self.device, payload), []
        kind = FailureKind.TIMEOUT if status == "timeout" else FailureKind.CRASH
        return CaseResult(backend_name, params, self.device, "fail", kind, [], payload, time.perf_counter() - t0), []
