import os
import sys
from pathlib import Path

# Triton kernels can only run interpreted without a GPU; the flag is read at import time.
try:
    import torch
    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not _has_cuda, reason="needs a CUDA device")


# Under pytest-xdist (`-n auto`) the tests that run whole fuzz processes take 10-40 s each and
# collect last by name; run first, they finish while the many short tests fill the other
# workers, instead of leaving one worker busy alone at the end.
LONG_FIRST = ("test_mutants.py", "test_run_pipeline.py", "test_workers.py", "test_cli.py", "test_onboarding.py",
              "test_pytest_plugin.py", "test_report_safety.py", "test_tilelang_backend.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)      # stable: their own order kept
