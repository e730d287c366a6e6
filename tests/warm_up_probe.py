"""A plugin with a warm_up(): it writes the file named by MHC_WARM_UP_MARK, and its cases
(run in worker processes) fail unless that file exists, so a run shows whether the warm-up
happened before them. MHC_WARM_UP_FAIL=1 makes the warm-up raise instead."""
import os
from pathlib import Path

from impls.golden_backend import GoldenBackend


class WarmUpProbe(GoldenBackend):
    name = "warm_up_probe"

    def warm_up(self):
        if os.environ.get("MHC_WARM_UP_FAIL") == "1":
            raise RuntimeError("toolchain missing")
        Path(os.environ["MHC_WARM_UP_MARK"]).write_text("ready")
        return {"prepared": 3}

    def backward(self, *args):
        if not Path(os.environ["MHC_WARM_UP_MARK"]).exists():
            raise RuntimeError("case ran before the warm-up")
        return super().backward(*args)


backend = WarmUpProbe()
