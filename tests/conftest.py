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

