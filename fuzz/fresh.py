"""Fresh processes: run a case, or a sequence of calls, in a process that has run nothing before.

A failure may need its process to be new (the first call of a shape: a first_call case) or
to have made exactly some calls before (a history-dependent failure, fuzz/history.py).
Starting a Python process with torch and the backends imported takes seconds, and a
history is minimized by dozens of trials, so a template process imports everything once and
forks a child for each run: the child starts in milliseconds, has run no case, and dies with
its result (a crash or a hang kills only the child). CUDA must not be initialized before a
fork: the template never touches it and checks, by forking a probe child that uses the device,
that its children can; if they cannot, each run spawns a new worker process instead."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import select
import signal
import time

from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams
from fuzz.check import run_case
from impls.registry import default_registry

STARTUP_TIMEOUT_S = 300.0


def run_calls(registry, tolerances, device, name, params: dict, options: dict) -> dict:
    """The calls of options["history"] [(backend, params dict)] (their results kept only as
    failure signatures, in "earlier"), then the case; the case's result as a dict."""
    options = dict(options)
    history = options.pop("history", ())
    earlier = [run_case(registry.get(n), CaseParams.from_dict(p), device, tolerances, **options) for n, p in history]
    result = run_case(registry.get(name), CaseParams.from_dict(params), device, tolerances, **options)
    return dict(result.to_dict(), earlier=[r.signature() if r.failed else "" for r in earlier])


def _exit_message(status: int) -> str:
    from fuzz.executor import _describe_exit
    return _describe_exit(os.waitstatus_to_exitcode(status))


def _forked(registry, tolerances, device, msg, limit_s: float) -> tuple:
    """Run one message in a forked child: ("result", payload) | ("timeout" | "crash", why)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the fresh process
        os.close(r)
        try:
            out = ("result", run_calls(registry, tolerances, device, *msg))
        except BaseException as exc:               # a harness error: reported as the child's death
            out = ("crash", f"fresh process raised {type(exc).__name__}: {exc}")
        with os.fdopen(w, "wb") as fh:
            fh.write(pickle.dumps(out))
        os._exit(0)
    os.close(w)
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
        return pickle.loads(b"".join(chunks))
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


def _template_main(conn, plugins, device, tolerances_path, env):
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = default_registry(plugins)
    tolerances = tolmod.load(tolerances_path)
    conn.send(("ready", _probe(device)))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        *call, limit_s = msg
        conn.send(_forked(registry, tolerances, device, call, limit_s))


class FreshProcesses:
    """run(): a sequence of calls in a new process each time (see the module doc)."""

    def __init__(self, plugins, device: str, tolerances_path, env: dict, case_timeout_s: float,
                 template: bool = True):
        self.args = (tuple(plugins), device, tolerances_path, dict(env))
        self.device, self.case_timeout_s = device, case_timeout_s
        self._proc = self._conn = None
        # None: not known yet; False: spawn a worker per run (also for a single run: no template)
        self._forks = None if template else False

    def start(self):
        """Start the template process in the background (its imports take seconds)."""
        if self._forks is not False and (self._proc is None or not self._proc.is_alive()):
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_template_main, args=(child, *self.args), daemon=True)
            self._proc.start()
            child.close()
            self._forks = None

    def _template(self):
        """The template's connection, or None when its children cannot be used (spawn instead)."""
        from fuzz.executor import WorkerStartError
        if self._forks is False:
            return None
        self.start()
        if self._forks is None:
            if not self._conn.poll(STARTUP_TIMEOUT_S):
                self.close()
                raise WorkerStartError(f"fresh-process template did not start within {STARTUP_TIMEOUT_S:.0f} s")
            try:
                self._forks = self._conn.recv()[1]
            except EOFError:
                self.close()
                raise WorkerStartError("fresh-process template failed to start") from None
        return self._conn if self._forks else None

    def run(self, name: str, params: CaseParams, history=(), options=None) -> tuple:
        """(result dict-or-failure, ...): ("result", payload) | ("timeout" | "crash", why)."""
        msg = (name, params.to_dict(), dict(options or {}, history=[(n, p.to_dict()) for n, p in history]))
        limit = self.case_timeout_s * (1 + len(history))
        conn = self._template()
        if conn is None:
            return self._spawned(msg, limit)
        try:
            conn.send((*msg, limit))
            if conn.poll(limit + 60):
                return conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass
        self.close()                                 # the template itself failed: start anew next time
        return "crash", "the fresh-process template died"

    def _spawned(self, msg, limit: float) -> tuple:
        """The same in a newly spawned worker process (slower: it imports everything)."""
        from fuzz.executor import WorkerStartError, _describe_exit, _worker_main
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, *self.args), daemon=True)
        proc.start()
        child.close()
        try:
            if not conn.poll(STARTUP_TIMEOUT_S):
                raise WorkerStartError(f"fresh fuzz worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
            conn.recv()
            conn.send(msg)
            if conn.poll(limit):
                return conn.recv()
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
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc = self._conn = None
