"""The registry: built-ins, entry points, --plugin targets, and broken ones reported by name."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from impls.golden_backend import GoldenBackend
from impls.registry import (BackendContractError, Capabilities, Registry, UnsupportedInputError,
                            check_inputs, default_registry, resolve_target, validate_backend, warm_up)
from conftest import ROOT


def test_builtins_include_golden():
    reg = default_registry(entry_points=False)
    assert "golden" in reg.backends
    assert reg.get("golden").capabilities.has_forward


def test_unknown_backend_name_lists_known():
    with pytest.raises(KeyError, match="registered: .*golden"):
        default_registry(entry_points=False).get("nope")


@pytest.mark.parametrize("caps, match", [
    (dict(devices=("tpu",)), "devices"),
    (dict(x_dtypes=("int8",)), "x_dtypes"),
    (dict(n_values=(0,)), "n_values"),
    (dict(d_multiple=0), "d_multiple"),
    (dict(gemm_precision="fp8"), "gemm_precision"),
    (dict(gemm_precision={"dx": "fp8"}), "gemm_precision"),
    (dict(gemm_precision={"dy": "tf32"}), "key 'dy'"),
    (dict(gemm_precision={"dx:int8": "tf32"}), "key 'dx:int8'"),
    (dict(gemm_precision=["tf32"]), "string or a dict"),
])
def test_invalid_capabilities_are_refused(caps, match):
    with pytest.raises(BackendContractError, match=match):
        Capabilities(**caps)


def test_gemm_precision_per_output():
    """The most specific key wins: '<output>:<x dtype>', then '<output>', then 'default'."""
    c = Capabilities(gemm_precision={"dx:bf16": "tf32", "dphi": "bf16", "default": "fp16"})
    assert c.gemm_precision_of("dx", "bf16") == "tf32"
    assert c.gemm_precision_of("dx", "fp32") == "fp16"
    assert c.gemm_precision_of("dphi", "fp32") == "bf16"
    assert Capabilities(gemm_precision={"dx": "tf32"}).gemm_precision_of("dgamma", "bf16") == "fp32"
    assert Capabilities(gemm_precision="tf32").gemm_precision_of("dgamma", "bf16") == "tf32"
    assert c.gemm_summary() == "dx:bf16=tf32, dphi=bf16; else fp16"


def test_capability_refusal_reasons():
    c = Capabilities(devices=("cuda",), n_values=(4,), d_multiple=16, d_max=128, max_tokens=10)
    assert c.refusal(device="cpu", x_dtype="bf16", n=4, D=16, T=1).startswith("device")
    assert "n=3" in c.refusal(device="cuda", x_dtype="bf16", n=3, D=16, T=1)
    assert "multiple of 16" in c.refusal(device="cuda", x_dtype="bf16", n=4, D=17, T=1)
    assert "D=144 > 128" in c.refusal(device="cuda", x_dtype="bf16", n=4, D=144, T=1)
    assert "T=11" in c.refusal(device="cuda", x_dtype="bf16", n=4, D=16, T=11)
    assert c.refusal(device="cuda", x_dtype="bf16", n=4, D=32, T=10) is None


def test_check_inputs_raises_unsupported():
    import torch
    c = Capabilities(n_values=(4,))
    with pytest.raises(UnsupportedInputError, match="mine: unsupported input: n=2"):
        check_inputs(c, "mine", torch.zeros(1, 1, 2, 8))


class _NoCaps:
    name = "nocaps"

    def backward(self, *a):
        return a


def test_contract_violations_name_the_source(monkeypatch):
    mod = type(sys)("fake_backends_mod")
    mod.nocaps = _NoCaps()
    mod.factory_raises = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "fake_backends_mod", mod)
    with pytest.raises(BackendContractError, match="capabilities"):
        resolve_target("fake_backends_mod:nocaps", "--plugin fake_backends_mod:nocaps")
    with pytest.raises(BackendContractError, match="factory raised ZeroDivisionError"):
        resolve_target("fake_backends_mod:factory_raises", "x")
    with pytest.raises(BackendContractError, match="module:attr"):
        resolve_target("no_colon", "x")
    reg = Registry().load_builtins().load_plugin("fake_backends_mod:nocaps").load_plugin("no_such_mod_xyz:b")
    assert "golden" in reg.backends
    assert "capabilities" in reg.errors["--plugin fake_backends_mod:nocaps"]
    assert "cannot import 'no_such_mod_xyz'" in reg.errors["--plugin no_such_mod_xyz:b"]


def test_duplicate_name_is_an_error():
    reg = Registry().load_builtins()
    reg.load_plugin("impls.golden_backend:GoldenBackend")   # a factory returning another 'golden'
    assert "already registered" in reg.errors["--plugin impls.golden_backend:GoldenBackend"]


def _fake_distribution(tmp_path, entries: dict, module_code: str):
    """An installed distribution on sys.path with entry points in group mhc_fuzz.backends."""
    dist = tmp_path / "fake_mhc_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-mhc-plugins\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (dist / "entry_points.txt").write_text(f"[mhc_fuzz.backends]\n{lines}\n")
    (tmp_path / "fake_mhc_plugins.py").write_text(textwrap.dedent(module_code))
    return tmp_path


PLUGIN_CODE = '''
from impls.golden_backend import GoldenBackend
class Good(GoldenBackend):
    name = "ep_good"
good = Good()
def broken_factory():
    raise RuntimeError("driver not found")
'''


def test_entry_points_load_and_broken_ones_do_not_stop_others(tmp_path, monkeypatch):
    site = _fake_distribution(tmp_path, {"good": "fake_mhc_plugins:good", "bad": "fake_mhc_plugins:broken_factory",
                                         "missing": "no_such_module_qq:thing"}, PLUGIN_CODE)
    monkeypatch.syspath_prepend(str(site))
    reg = default_registry()
    assert "ep_good" in reg.backends and "golden" in reg.backends
    errs = " ".join(reg.errors.values())
    assert "entry point bad" in errs and "driver not found" in errs
    assert "entry point missing" in errs and "no_such_module_qq" in errs


def test_cli_backends_lists_and_reports_broken_entry_point(tmp_path):
    site = _fake_distribution(tmp_path, {"good": "fake_mhc_plugins:good", "bad": "fake_mhc_plugins:broken_factory"},
                              PLUGIN_CODE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), COLUMNS="200")
    out_json = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "fuzz.cli", "backends", "--json", str(out_json)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "golden" in proc.stdout and "ep_good" in proc.stdout
    assert "entry point bad" in proc.stdout and "driver not found" in proc.stdout
    doc = json.loads(out_json.read_text())
    names = {b["name"] for b in doc["backends"]}
    assert {"golden", "ep_good"} <= names
    assert any("driver not found" in m for m in doc["errors"].values())


def test_warm_up_is_optional_callable_and_contained(monkeypatch):
    import impls.registry
    clock = [100.0]            # a clock that only the hooks below move: seconds is the hook's time
    monkeypatch.setattr(impls.registry.time, "perf_counter", lambda: clock[0])

    class NoHook(GoldenBackend):
        name = "no_hook"

    class Hook(GoldenBackend):
        name = "hook"

        def warm_up(self):
            clock[0] += 2.5
            return {"kernels": 7}

    class Raises(GoldenBackend):
        name = "raises"

        def warm_up(self):
            raise OSError("disk full\nmore detail")

    class NotCallable(GoldenBackend):
        name = "not_callable"
        warm_up = 3

    assert warm_up(NoHook()) is None
    st = warm_up(Hook())
    assert st == {"seconds": 2.5, "kernels": 7}
    assert warm_up(Raises())["error"] == "OSError: disk full"          # one line, and the caller goes on
    with pytest.raises(BackendContractError, match="'warm_up' must be callable"):
        validate_backend(NotCallable(), "test")
