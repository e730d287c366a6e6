"""bench/plot.py draws a benchmark result anywhere (no GPU): the figure a person reads."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from bench.plot import plot


def _doc():
    rows = []
    for T, D in ((128, 2560), (32768, 7168)):
        for impl, x in (("golden", 27.0), ("compile(golden)", 15.5), ("triton", 2.3)):
            rows.append(dict(T=T, n=4, D=D, dtype="bf16", impl=impl, direction="backward", ms=x, x_roofline=x))
        for k, x in (("triton:token", 1.0), ("triton:dgamma", 1.3)):
            rows.append(dict(T=T, n=4, D=D, dtype="bf16", impl=k, direction="kernel", ms=x, x_roofline=x))
    return dict(device="H100", bandwidth_Bps=3.0e12, rows=rows)


def test_plot_writes_a_png(tmp_path):
    out = plot(_doc(), tmp_path / "b.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_refuses_a_result_without_timings(tmp_path):
    with pytest.raises(ValueError, match="no backward rows"):
        plot(dict(rows=[]), tmp_path / "b.png")
    src = tmp_path / "empty.json"
    src.write_text(json.dumps({"device": "x"}))
    r = subprocess.run([sys.executable, "bench/plot.py", src, tmp_path / "b.png"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no backward rows" in r.stderr and not (tmp_path / "b.png").exists()
