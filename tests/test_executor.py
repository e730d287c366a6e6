"""The case worker: what its fork server preloads is all a case needs, so that a new worker's
first case (the one after a hang or a crash) is not charged for imports."""
import subprocess
import sys

from conftest import ROOT

FIRST_CASE = """
import importlib, sys
from fuzz.executor import PRELOAD, run_calls
for m in PRELOAD:
    importlib.import_module(m)
from fuzz import tolerances
from fuzz.cases import CaseParams
from impls.registry import default_registry
registry, tol = default_registry(()), tolerances.load(None)
before = set(sys.modules)
run_calls(registry, tol, "cpu", "golden", CaseParams(1, 2, 4, 8, "bf16", seed=0).to_dict(), {})
print(sorted(set(sys.modules) - before))
"""


def test_a_first_case_imports_nothing_the_fork_server_did_not_preload():
    """torch's first backward imports symbolic shapes and sympy (0.7 s on a CPU core): in the
    worker, inside the first case's timeout, a 1 s timeout on a loaded machine was a false hang."""
    r = subprocess.run([sys.executable, "-c", FIRST_CASE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
