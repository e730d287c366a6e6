"""Run the command line in the test's own process: `mhc-fuzz ARGS` as fuzz.cli.main(ARGS), with
its exit code and output as subprocess.run would give them.

Why: a subprocess imports torch (about 3 s of CPU) and starts the case workers' fork server,
which imports it again; in the test process both happen once, and every later run forks its
workers from the same server. The command's code path is the same. Tests where the process
itself is the point (signals, kills, a command line pasted into a shell, environment variables
read by a worker) keep a real subprocess."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import traceback

from conftest import ROOT

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def _restored_process_state(cwd, env):
    """The environment, the working directory and the signal handlers as they were."""
    saved_env, saved_cwd = os.environ.copy(), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    os.environ.update({"COLUMNS": "200", **(env or {})})
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, h in handlers.items():
            signal.signal(s, h)


def cli(*args, env: dict | None = None, cwd=ROOT, timeout=None) -> subprocess.CompletedProcess:
    """`mhc-fuzz *args` in this process. An exception that would end the process ends the call
    as the interpreter would: its traceback on stderr, exit code 1. (`timeout` is there for the
    signature of subprocess.run: every run here has a budget of its own.)"""
    from fuzz.cli import main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with _restored_process_state(cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:           # argparse's usage errors, sys.exit in a command
            code = exc.code
            rc = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=err)
        except Exception:
            traceback.print_exc(file=err)
            rc = 1
    return subprocess.CompletedProcess(["mhc-fuzz", *argv], rc, out.getvalue(), err.getvalue())
