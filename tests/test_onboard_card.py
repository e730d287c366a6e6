"""The onboarding card's parts, in process: one backend through two sources, the declared
section, the speed section's measurements and words, and the card's three layouts."""
import dataclasses
import io
import re
import sys
import textwrap

import pytest
import torch
from rich.console import Console

from fuzz import card as cardmod
from fuzz import speed
from fuzz.engine import BackendStats
from fuzz.timing import bwd_bytes, make_inputs
from impls.golden import mhc_pre_backward_manual
from impls.registry import Capabilities, default_registry
from tests.onboard_probe import narrow


# ---------------------------------------------------------------- one backend, two sources
def _installed(tmp_path, monkeypatch, entries: dict):
    """A distribution on sys.path whose entry points (group mhc_fuzz.backends) name objects of
    the module onboard_twice_mod: `backend` and `factory`, and `impostor`, another backend with
    the same name."""
    dist = tmp_path / "onboard_twice-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onboard-twice\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (dist / "entry_points.txt").write_text(f"[mhc_fuzz.backends]\n{lines}\n")
    (tmp_path / "onboard_twice_mod.py").write_text(textwrap.dedent("""
        from tests.onboard_probe import Narrow
        class Twice(Narrow):
            name = "twice"
        backend = Twice()
        factory = Twice
        impostor = Twice()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("onboard_twice_mod", None)


def test_an_installed_backend_named_again_by_its_target_is_one_backend(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, {"twice": "onboard_twice_mod:backend"})
    reg = default_registry(["onboard_twice_mod:backend"])
    assert not [e for e in reg.errors.values() if "twice" in e]
    assert reg.loaded["--plugin onboard_twice_mod:backend"] == "twice"
    assert reg.sources["twice"].startswith("entry point twice")
    # a different object under the same name is still a clash
    reg = default_registry(["onboard_twice_mod:impostor"])
    assert "name 'twice' already registered" in reg.errors["--plugin onboard_twice_mod:impostor"]


def test_the_same_factory_from_both_sources_is_one_backend(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, {"twice": "onboard_twice_mod:factory"})
    reg = default_registry(["onboard_twice_mod:factory"])
    assert "--plugin onboard_twice_mod:factory" not in reg.errors
    assert reg.loaded["--plugin onboard_twice_mod:factory"] == "twice" and reg.names().count("twice") == 1


# ---------------------------------------------------------------- declared
def test_declared_lists_exactly_the_fields_off_their_defaults():
    assert cardmod.declared(Capabilities()) == {}
    caps = Capabilities(n_values=(4, 8), deterministic=True, gemm_precision={"dx": "tf32", "default": "fp32"})
    assert cardmod.declared(caps) == {"n_values": "4, 8", "deterministic": "yes",
                                      "gemm_precision": "dx=tf32, default=fp32"}


def test_a_new_capabilities_field_shows_up_without_changes_to_the_card():
    @dataclasses.dataclass(frozen=True)
    class Later(Capabilities):
        layouts: tuple = ("any",)
        gamma_required: bool = False

    assert cardmod.declared(Later(layouts=("contiguous",), gamma_required=True)) == {
        "layouts": "contiguous", "gamma_required": "yes"}


# ---------------------------------------------------------------- speed: words
@pytest.mark.parametrize("ms, other, text", [
    (112.0, 1.0, "112x slower"), (1.0, 2.5, "2.5x faster"), (1.35, 1.0, "1.35x slower"),
    (1.0, 1.004, "as fast"), (0.01, 4.2, "420x faster"), (45.3, 1.0, "45.3x slower")])
def test_ratios_read_as_slower_or_faster(ms, other, text):
    assert speed.versus(ms, other) == text


def test_no_ratio_rounds_to_zero():
    for exp in range(-6, 7):
        for mant in (1.0, 1.5, 3.3, 7.7):
            r = mant * 10.0 ** exp
            for text in (speed.versus(r, 1.0), speed.versus(1.0, r), speed.number(r)):
                assert not re.search(r"(^|\D)0(\.0+)?x", text) and text not in ("0", "0.0", "0.00"), (r, text)


def _section(own=0.5):
    shape = dict(T=128, n=4, D=4096, dtype="bf16", roofline_ms=0.005,
                 times={"probe": own, "golden": own / 112, "compile(golden)": own * 2,
                        "triton": "refuses: n=4 not in (8,)"})
    return {"measured": True, "device": "NVIDIA H100", "bandwidth_Bps": 3.0e12, "l2_flush": "read",
            "backend": "probe", "shapes": [shape]}


def test_the_speed_summary_names_the_device_and_compares_with_each_contender():
    line = speed.summary(_section())
    assert "on NVIDIA H100 (copy 3.00 TB/s" in line and "T=128 n=4 D=4096 bf16" in line
    assert "100x the memory roofline" in line
    assert "112x slower than golden" in line and "2x faster than compile(golden)" in line
    rows = {r[0]: r for r in speed.rows(_section(), _section()["shapes"][0])}
    assert rows["golden"][3] == "112x slower" and rows["probe"][3] == "-"
    assert rows["triton"][1].startswith("refuses") and rows["memory roofline"][2] == "1x"
    assert speed.summary(speed.section(None, "probe", "cpu")).startswith("not measured on the CPU")


def test_standard_shapes_move_inside_the_declared_limits():
    caps = Capabilities(x_dtypes=("fp16",), n_values=(6, 8), d_multiple=48, d_max=4096, max_tokens=1000)
    shapes = speed.shapes_for(caps)
    assert shapes == [dict(T=128, n=6, D=4080, dtype="fp16"), dict(T=1000, n=6, D=4080, dtype="fp16")]
    assert all(caps.refusal(device="cuda", x_dtype=s["dtype"], n=s["n"], D=s["D"], T=s["T"]) is None for s in shapes)


def test_the_backend_is_timed_beside_golden_its_compiled_form_and_every_built_in():
    reg = default_registry(["tests.onboard_probe:narrow"])
    c = speed.contenders(reg, "narrow_probe", device="cpu")
    builtins = [n for n, src in reg.sources.items() if src.startswith("builtin") and n != "golden"]
    assert list(c) == ["narrow_probe", "golden", "compile(golden)", *builtins]
    assert c["golden"][0] is mhc_pre_backward_manual and c["narrow_probe"][1] is narrow.capabilities
    for name in builtins:     # each one runs here, or says why not
        fn, caps = c[name]
        assert (fn is None and isinstance(caps, str)) or caps is reg.get(name).capabilities


def test_measure_times_each_contender_and_says_why_one_has_no_time():
    calls = []

    def bench(fn):                       # a clock that runs the call once and reports a fixed time
        out = fn()
        calls.append(out[0].shape)
        return 2.0

    def boom(*args):
        raise RuntimeError("boom")

    contenders = {"narrow_probe": (narrow.backward, narrow.capabilities),
                  "golden": (mhc_pre_backward_manual, None),
                  "n8_only": (mhc_pre_backward_manual, Capabilities(n_values=(8,))),
                  "broken": (boom, None), "absent": (None, "no CUDA device")}
    rows = speed.measure(contenders, [dict(T=6, n=4, D=32, dtype="fp32")], 1e9, bench, make_inputs, device="cpu")
    times = rows[0]["times"]
    assert times["narrow_probe"] == times["golden"] == 2.0 and calls == [torch.Size([1, 6, 4, 32])] * 2
    assert times["n8_only"] == "refuses: n=4 not in (8,)"
    assert times["broken"] == "error: RuntimeError: boom" and times["absent"] == "unavailable: no CUDA device"
    assert rows[0]["roofline_ms"] == pytest.approx(bwd_bytes(6, 4, 32, 4) / 1e9 * 1e3)


# ---------------------------------------------------------------- layouts
def _card(tmp_path):
    stats = BackendStats("probe, shape sweep", "cpu")
    stats.ratios = {"dx": [0.1, 0.3], "dbias": [2e5]}
    long_path = tmp_path / ("deep/" * 12) / "probe" / "8c31ce1e08b2.json"
    return {"backend": "probe", "target": "pkg.mod:backend", "device": "cuda", "gpu": "NVIDIA H100",
            "command": "mhc-fuzz onboard pkg.mod:backend", "passed": False,
            "declared": {"n_values": "4", "notes": "a note " * 20},
            "checks": [{"check": "contract", "ok": True, "detail": "name 'probe', " + "fine, " * 30},
                       {"check": "shape sweep within tolerance", "ok": False, "detail": "0/11 cases pass"},
                       {"check": "speed", "ok": True, "detail": speed.summary(_section())}],
            "findings": [{"checks": ["shape sweep within tolerance"], "kind": "tolerance", "components": ["dbias"],
                          "case": "B=1 S=1 n=4 D=16 fp32", "message": "dbias: worst error/bound 5.6e+05",
                          "report": str(long_path),
                          "replay": f"mhc-fuzz replay {long_path} --plugin pkg.mod:backend"}],
            "speed": _section(), "_plot": [stats]}


def test_off_a_terminal_the_card_fits_80_columns(tmp_path):
    out = io.StringIO()
    cardmod.print_card(Console(file=out, width=200, force_terminal=False), _card(tmp_path))
    lines = out.getvalue().splitlines()
    assert lines[0] == "onboarding report card: probe (NVIDIA H100)"
    too_long = [ln for ln in lines if len(ln) > 80 and " " in ln.strip()]   # a lone path may not break
    assert not too_long
    text = "\n".join(lines)
    assert "  FAIL  shape sweep within tolerance" in text and "onboarding FAILED" in text
    assert "8c31ce1e08b2.json" in text and "--plugin pkg.mod:backend" in text
    assert re.search(r"golden +0\.00446 +\S+x +112x slower", text)


def test_on_a_terminal_the_card_is_a_table(tmp_path):
    out = io.StringIO()
    cardmod.print_card(Console(file=out, width=160, force_terminal=True, color_system=None), _card(tmp_path))
    assert "┃ check" in out.getvalue() and "112x slower" in out.getvalue()


def test_markdown_page_has_checks_findings_speed_and_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    page = cardmod.write_markdown(_card(tmp_path), tmp_path / "out" / "card.md")
    text = page.read_text()
    assert text.startswith("# Onboarding report card: `probe`") and "**FAILED** on NVIDIA H100" in text
    assert "| shape sweep within tolerance | **FAIL** | 0/11 cases pass |" in text
    assert "- replay: `mhc-fuzz replay " in text and "| golden |" in text and "112x slower" in text
    assert "![error/bound ratios](card-ratios.png)" in text and (tmp_path / "out" / "card-ratios.png").stat().st_size


def test_markdown_page_without_matplotlib_has_no_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib now raises ImportError
    c = _card(tmp_path)
    c["speed"] = {"measured": False, "why": speed.NOT_ON_CPU}
    text = cardmod.write_markdown(c, tmp_path / "card.md").read_text()
    assert "## Checks" in text and "not measured on the CPU" in text
    assert "ratios.png" not in text and not (tmp_path / "card-ratios.png").exists()
