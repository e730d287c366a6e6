"""Fresh processes: run a case, or a sequence of calls, in a process that has run nothing before.

A failure may need its process to be new (the first call of a shape: a first_call case) or
to have made exactly some calls before (a history-dependent failure, fuzz/history.py).
A new worker imports the backends and the tolerances (seconds, even forked from the
executor's fork server with torch imported), and a history is minimized by dozens of trials,
so a template process imports everything once and forks a child for each run: the child starts in milliseconds, has run no case, and dies with
its result (a crash or a hang kills only the child). CUDA must not be initialized before a
fork: the template never touches it and checks, by forking a probe child that uses the device,
that its children can; if they cannot, each run spawns a new worker process instead.

As the executor's worker (fuzz/executor.py), the template and its children start with SIGINT
and SIGTERM blocked, then ignore them: a signal to the process group stops the run through
the parent. A run still going at the run's deadline, or when the run is stopped, is ended
(its child killed) and answered as not run."""
from __future__ import annotations

import os
import pickle
import select
import signal
import time

from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams

STARTUP_TIMEOUT_S = 300.0
REPLY_SLACK_S = 60.0          # beyond the child's own limit, for the template to answer


def _exit_message(status: int) -> str:
    from fuzz.executor import _describe_exit
    return _describe_exit(os.waitstatus_to_exitcode(status))


def _child(registry, tolerances, device, msg) -> tuple:
    from fuzz.executor import CaseLoadError, run_calls
    try:
        return "result", run_calls(registry, tolerances, device, *msg)
    except CaseLoadError as exc:
        return "load-error", str(exc)
    except BaseException as exc:               # a harness error: reported as the child's death
        return "crash", f"fresh process raised {type(exc).__name__}: {exc}"


def _forked(conn, registry, tolerances, device, msg, limit_s: float) -> tuple:
    """Run one message in a forked child (its pid sent on `conn` first):
    ("result" | "load-error", payload) | ("timeout" | "crash", why)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the fresh process
        os.close(r)
        out = _child(registry, tolerances, device, msg)
        with os.fdopen(w, "wb") as fh:
            fh.write(pickle.dumps(out))
        os._exit(0)
    os.close(w)
    conn.send(("started", pid))
    chunks, deadline = [], time.monotonic() + limit_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", f"no result within {limit_s:g} s"
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if chunks:
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:
            pass                                   # cut short: the child died writing it
    return "crash", _exit_message(status)


def _probe(device: str) -> bool:
    """Can a forked child use the device? (No when CUDA was initialized before the fork.)"""
    if device != "cuda":
        return True
    pid = os.fork()
    if pid == 0:
        try:
            import torch
            torch.zeros(1, device="cuda").add_(1).cpu()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _ignore_stop_signals():
    from fuzz.executor import STOP_SIGNALS
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # blocked since its start


def _template_main(conn, plugins, device, tolerances_path, env):
    os.environ.update(env)
    _ignore_stop_signals()
    from impls.registry import default_registry
    registry = default_registry(plugins)
    tolerances = tolmod.load(tolerances_path)
    conn.send(("ready", _probe(device)))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        *call, limit_s = msg
        conn.send(_forked(conn, registry, tolerances, device, call, limit_s))


def _started(target, args):
    """A process started as the executor starts its workers (fuzz/executor.py: from its fork
    server, with SIGINT and SIGTERM blocked), and the parent's end of its pipe."""
    from fuzz.executor import STOP_SIGNALS, _context
    ctx = _context()                           # from the executor's fork server (torch imported)
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    child.close()
    return proc, conn


def _left(limit_s: float, deadline: float | None) -> tuple:
    """(seconds to wait, whether the run's deadline, not the limit, is what ends the wait)."""
    if deadline is None or deadline - time.monotonic() >= limit_s:
        return limit_s, False
    return max(0.0, deadline - time.monotonic()), True


class FreshProcesses:
    """run(): a sequence of calls in a new process each time (see the module doc)."""

    def __init__(self, plugins, device: str, tolerances_path, env: dict, template: bool = True):
        self.args = (tuple(plugins), device, tolerances_path, dict(env))
        self.device = device
        self._proc = self._conn = None
        # None: not known yet; False: spawn a worker per run (also for a single run: no template)
        self._forks = None if template else False

    def start(self):
        """Start the template process in the background (its imports take seconds)."""
        if self._forks is not False and (self._proc is None or not self._proc.is_alive()):
            self._proc, self._conn = _started(_template_main, self.args)
            self._forks = None

    def _template(self):
        """The template's connection, or None when its children cannot be used (spawn instead)."""
        from fuzz.executor import WorkerStartError, _wait
        if self._forks is False:
            return None
        self.start()
        if self._forks is None:
            waited = _wait(self._conn, STARTUP_TIMEOUT_S)
            if waited != "ready":
                self.close()
                if waited == "stopped":
                    raise KeyboardInterrupt
                raise WorkerStartError(f"fresh-process template did not start within {STARTUP_TIMEOUT_S:.0f} s")
            try:
                self._forks = self._conn.recv()[1]
            except EOFError:
                self.close()
                raise WorkerStartError("fresh-process template failed to start") from None
        return self._conn if self._forks else None

    def run(self, name: str, params: CaseParams, history=(), options=None, case_timeout_s: float = 300.0,
            deadline: float | None = None) -> tuple:
        """("result" | "load-error", payload) | ("timeout" | "crash" | "not-run", why). Each call
        of the sequence has `case_timeout_s`; the sequence ends at `deadline` (time.monotonic())."""
        msg = (name, params.to_dict(), dict(options or {}, history=[(n, p.to_dict()) for n, p in history]))
        limit = case_timeout_s * (1 + len(history))
        conn = self._template()
        if conn is None:
            return self._spawned(msg, limit, deadline)
        from fuzz.executor import _wait
        pid = None
        try:
            conn.send((*msg, limit))
            if conn.poll(30.0):                      # at once: ("started", the child's pid)
                _, pid = conn.recv()
                wait_s, at_deadline = _left(limit + REPLY_SLACK_S, deadline)
                waited = _wait(conn, wait_s)
                if waited == "ready":
                    return conn.recv()
                if waited == "stopped" or at_deadline:
                    self._end_child(pid)
                    return "not-run", "stopped by a signal" if waited == "stopped" else \
                        "still running at the run's deadline"
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            pass
        if pid is not None:
            self._kill_child(pid)
        self.close()                                 # the template itself failed: start anew next time
        return "crash", "the fresh-process template died"

    @staticmethod
    def _kill_child(pid: int):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _end_child(self, pid: int):
        """Kill a running child and collect the template's answer for it (a crash), so that the
        template is ready for the next run; without an answer soon, the template goes too."""
        self._kill_child(pid)
        try:
            if self._conn.poll(10):
                self._conn.recv()
                return
        except (EOFError, OSError):
            pass
        self.close()

    def _spawned(self, msg, limit: float, deadline: float | None) -> tuple:
        """The same in a newly spawned worker process (slower: it imports everything)."""
        from fuzz.executor import WorkerStartError, _describe_exit, _wait, _worker_main
        proc, conn = _started(_worker_main, self.args)
        try:
            waited = _wait(conn, STARTUP_TIMEOUT_S)
            if waited == "stopped":
                return "not-run", "stopped by a signal"
            if waited != "ready":
                raise WorkerStartError(f"fresh fuzz worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            conn.recv()
            conn.send(msg)
            wait_s, at_deadline = _left(limit, deadline)
            waited = _wait(conn, wait_s)
            if waited == "ready":
                return conn.recv()
            if waited == "stopped":
                return "not-run", "stopped by a signal"
            if at_deadline:
                return "not-run", "still running at the run's deadline"
            return "timeout", f"no result within {limit:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            proc.join(10)
            return "crash", _describe_exit(proc.exitcode)
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            conn.close()

    def close(self):
        from fuzz.executor import stop_worker
        stop_worker(self._proc, self._conn)
        self._proc = self._conn = None
