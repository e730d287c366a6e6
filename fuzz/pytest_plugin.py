"""pytest plugin (entry point pytest11): reports as regression tests, and one GPU per xdist worker.

Every reports/<backend>/<id>.json is collected as a file of test items: one for the report's
own backend, which must pass it once its bug is fixed, and one for every other registered
backend (built-ins and entry points), which must pass it too (a case that broke one kernel
is a good case for all). A report with "expected_failure": {"reason": ...} is a strict xfail
for its own backend, so the fix shows as an XPASS failure until the marker is removed.

Reports are data: collecting one never imports what it names. A backend that only a plugin
provides (the planted bugs of tests/mutants) is loaded by the person running pytest, with
--mhc-plugin MODULE:ATTR or the ini key mhc_plugins; it replays its own reports only. A
report whose backend is not loaded is skipped with the option that would load it. Cases run
in a worker process (fuzz/executor.py): a crash or a hang is a verdict, not the end of pytest.

Options: --mhc-reports DIR (default: reports), --mhc-no-reports, --mhc-device cuda|cpu,
--mhc-plugin MODULE:ATTR (repeatable; ini: mhc_plugins), --mhc-in-process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("mhc-fuzz")
    g.addoption("--mhc-reports", default="reports", help="folder of fuzz reports collected as regression tests")
    g.addoption("--mhc-no-reports", action="store_true", help="do not collect fuzz reports")
    g.addoption("--mhc-device", choices=("cuda", "cpu"), default=None, help="device for report replays")
    g.addoption("--mhc-plugin", action="append", default=[], metavar="MODULE:ATTR",
                help="load a backend that reports name (e.g. tests.mutants:stream0_only); repeatable")
    g.addoption("--mhc-in-process", action="store_true",
                help="replay reports in the pytest process (no containment of crashes and hangs)")
    parser.addini("mhc_plugins", type="linelist", default=[],
                  help="MODULE:ATTR backends that reports name, loaded for their replays (as --mhc-plugin)")


def _gpu_count() -> int:
    from fuzz.shards import gpu_count_without_cuda_init
    return gpu_count_without_cuda_init() or 0


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")          # gw0, gw1, ...
    if worker and "CUDA_VISIBLE_DEVICES" not in os.environ:
        gpus = _gpu_count()
        if gpus > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker[2:]) % gpus)


def pytest_collect_file(file_path: Path, parent):
    config = parent.config
    if config.getoption("--mhc-no-reports") or file_path.suffix != ".json":
        return None
    root = Path(config.getoption("--mhc-reports"))
    if not root.is_absolute():
        root = Path(config.rootpath) / root
    try:
        file_path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return ReportFile.from_parent(parent, path=file_path)


_REGISTRY = {}
_EXECUTORS = {}


def _plugins(config) -> tuple:
    """The plugins of the person running pytest (never a report's)."""
    return tuple(dict.fromkeys(list(config.getini("mhc_plugins")) + list(config.getoption("--mhc-plugin"))))


def _registry(plugins: tuple):
    if plugins not in _REGISTRY:
        from impls.registry import default_registry
        _REGISTRY[plugins] = default_registry(plugins)
    return _REGISTRY[plugins]


def _executor(config, plugins: tuple, device: str):
    """One worker process per (plugins, device) for the whole session, replaced when it dies."""
    from fuzz.executor import InProcessExecutor, SubprocessExecutor
    if config.getoption("--mhc-in-process"):
        return InProcessExecutor(_registry(plugins), device)
    key = (plugins, device)
    if key not in _EXECUTORS:
        import atexit
        _EXECUTORS[key] = SubprocessExecutor(plugins, device)
        atexit.register(_EXECUTORS[key].close)
    return _EXECUTORS[key]


def _device(config) -> str:
    chosen = config.getoption("--mhc-device")
    if chosen:
        return chosen
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


class ReportFile(pytest.File):
    def collect(self):
        from fuzz.reports import ReportError, load_report
        try:
            rep = load_report(self.path)
        except ReportError as exc:
            yield ReportItem.from_parent(self, name="invalid-report", report=None, backend=None, error=str(exc))
            return
        device = _device(self.config)
        if device == "cpu":
            os.environ.setdefault("TRITON_INTERPRET", "1")
        reg = _registry(_plugins(self.config))
        # every registered backend; a plugin's backend (a planted bug) only on its own reports
        names = [n for n in reg.backends if not reg.sources[n].startswith("--plugin ")]
        if rep["backend"] not in names:
            names.insert(0, rep["backend"])
        for name in names:
            item = ReportItem.from_parent(self, name=name, report=rep, backend=name, device=device)
            xf = rep.get("expected_failure")
            if xf and name == rep["backend"]:
                item.add_marker(pytest.mark.xfail(strict=True, reason=xf["reason"]))
            yield item


class ReportFailure(AssertionError):
    pass


def _not_loaded(backend: str, report: dict, reg) -> str:
    targets = report.get("plugins") or []
    failed = [reg.errors[f"--plugin {t}"] for t in targets if f"--plugin {t}" in reg.errors]
    if backend == report["backend"] and failed:
        return f"backend {backend} is not loaded: {failed[0]}"
    if backend == report["backend"] and targets:
        return (f"backend {backend} is not loaded: load it with "
                + " ".join(f"--mhc-plugin {t}" for t in targets) + " (or the ini key mhc_plugins)")
    return f"backend {backend} is not registered here"


class ReportItem(pytest.Item):
    def __init__(self, *, report, backend, device="cpu", error=None, **kw):
        super().__init__(**kw)
        self.report, self.backend, self.device, self.error = report, backend, device, error

    def runtest(self):
        if self.error:
            raise ReportFailure(self.error)
        from fuzz.cases import CaseParams
        from fuzz.check import backend_can_run
        from fuzz.reports import tensors_path
        from fuzz.sizes import too_big
        plugins = _plugins(self.config)
        reg = _registry(plugins)
        if self.backend not in reg.backends:
            pytest.skip(_not_loaded(self.backend, self.report, reg))
        b = reg.get(self.backend)
        why = backend_can_run(b, self.device)
        if why:
            pytest.skip(f"{self.backend} cannot run on {self.device}: {why}")
        params = CaseParams.from_dict(self.report["params"])
        limit = 1 << 18 if self.device == "cpu" else 1 << 28     # keeps the test suite quick
        if params.T * params.n * params.D > limit and b.capabilities.refusal(
                **params.capability_query(self.device)) is None:
            pytest.skip(f"case of {params.T * params.n * params.D} elements is too big for {self.device}")
        why = too_big(params, self.device)
        if why:
            pytest.skip(why)
        from fuzz.context import unavailable
        from fuzz.history import needs_fresh_worker, replay_in_fresh_worker
        why = unavailable(params, self.device)
        if why:
            pytest.skip(f"report {self.report['id']}: its context is unavailable here: {why}")
        timeout = self.report.get("case_timeout_s") or 300.0
        tensors = tensors_path(self.path, self.report)
        tensors = None if tensors is None else str(tensors)
        missing = [h["backend"] for h in self.report.get("history") or [] if h["backend"] not in reg.backends]
        if missing:
            pytest.skip(f"report {self.report['id']}: its earlier calls need backend {missing[0]}, not loaded here")
        if needs_fresh_worker(self.report):    # earlier calls, or the first call in a process
            res = replay_in_fresh_worker(self.report, self.backend, self.device, plugins, None, timeout, tensors)
        else:
            ex = _executor(self.config, plugins, self.device)
            ex.case_timeout_s = timeout
            res = ex.run(self.backend, params, tensors=tensors)
        if res.failed:
            raise ReportFailure(f"{res.kind}: {res.message}")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ReportFailure):
            rid = self.report["id"] if self.report else self.path.name
            return f"report {rid} fails on {self.backend} ({self.device}): {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"report {self.path.name} on {self.backend}"
