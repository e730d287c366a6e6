"""Tables readable in an 80-column CI log: nothing cut, every value on the page."""
import io
import json

from rich.console import Console

from fuzz.cli import main
from fuzz.engine import BackendStats
from fuzz.summary import table
from fuzz.tables import FitTable


def _render(renderable, width):
    console = Console(width=width, file=io.StringIO(), highlight=False)
    console.print(renderable)
    return console.file.getvalue()


def test_narrow_layout_keeps_every_value_within_80_columns():
    t = FitTable("registered backends", ("backend", "source", "status", "devices", "GEMM"), keep=3)
    t.add_row("tilelang", "builtin impls.tilelang_mhc:backend", "[yellow]unavailable, no CUDA device[/]",
              "cuda", "dx:bf16=tf32, dx:fp16=tf32; else fp32")
    narrow, wide = _render(t, 80), _render(t, 200)
    assert max(map(len, narrow.splitlines())) <= 80 and "…" not in narrow
    flat = " ".join(narrow.split())
    for value in ("tilelang", "builtin impls.tilelang_mhc:backend", "unavailable, no CUDA device", "devices: cuda",
                  "GEMM: dx:bf16=tf32, dx:fp16=tf32; else fp32"):
        assert value in flat, value
    assert "┃ backend" in wide and "…" not in wide                # a terminal wide enough gets the table


def test_run_summary_fits_80_columns():
    s = BackendStats("triton", "cpu", cases=1234, passed=1200, failed=30, refused=4, seconds=60.0)
    s.worst = {"dx": 3.5}
    out = _render(table([s, BackendStats("tilelang", "cpu", skipped="no CUDA device")]), 80)
    assert max(map(len, out.splitlines())) <= 80 and "…" not in out
    flat = " ".join(out.split())
    assert "cases: 1234" in flat and "failed: 30" in flat and "worst ratio: 3.5 (dx)" in flat
    assert "tilelang cpu worst ratio: skipped: no CUDA device" in flat


def test_backends_in_a_ci_log_and_as_json(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80 and "…" not in out
    assert "golden  builtin impls.golden_backend:backend  available" in out and "GEMM: fp32" in out
    assert main(["backends", "--json"]) == 0                        # alone: JSON on stdout, nothing else
    doc = json.loads(capsys.readouterr().out)
    golden = next(b for b in doc["backends"] if b["name"] == "golden")
    assert golden["capabilities"]["dgamma_without_gamma"] == "grad"
    f = tmp_path / "b.json"
    assert main(["backends", "--json", str(f)]) == 0                 # to a file, and the table as before
    assert "registered backends" in capsys.readouterr().out and json.loads(f.read_text())["backends"]


def test_kill_table_fits_80_columns():
    import tests.mutants as M
    from fuzz.check import CaseResult
    from fuzz.engine import Finding
    from fuzz.cases import CaseParams
    from fuzz.mutants import _row, _table
    stats = BackendStats("last_token_block_skipped", "cpu", cases=17)
    res = CaseResult(stats.name, CaseParams(1, 65, 1, 1), "cpu", "fail", "tolerance", [], "x")
    stats.findings[res.signature()] = Finding(res, None, 1.5)
    out = _render(_table([_row(M.LastTokenBlockSkipped, stats)], "cpu"), 80)
    flat = " ".join(out.split())
    assert max(map(len, out.splitlines())) <= 80 and "…" not in out
    assert "last_token_block_skipped killed" in flat and "minimized case: B=1 S=65 n=1 D=1" in flat
    assert "first failure: 1.5 s" in flat and "cases: 17" in flat
