"""pytest plugin (entry point pytest11): reports as regression tests, and one GPU per xdist worker.

Every reports/<backend>/<id>.json is collected as a file of test items, one per registered
backend: the report's own backend must pass it once its bug is fixed, and every other
backend must pass it too (a case that broke one kernel is a good case for all). A report
with "expected_failure": {"reason": ...} is a strict xfail for its own backend, so the fix
shows as an XPASS failure until the marker is removed.

Options: --mhc-reports DIR (default: reports), --mhc-no-reports, --mhc-device cuda|cpu."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("mhc-fuzz")
    g.addoption("--mhc-reports", default="reports", help="folder of fuzz reports collected as regression tests")
    g.addoption("--mhc-no-reports", action="store_true", help="do not collect fuzz reports")
    g.addoption("--mhc-device", choices=("cuda", "cpu"), default=None, help="device for report replays")


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


def _registry(plugins: tuple):
    if plugins not in _REGISTRY:
        from impls.registry import default_registry
        _REGISTRY[plugins] = default_registry(plugins)
    return _REGISTRY[plugins]


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
        reg = _registry(tuple(rep.get("plugins") or ()))
        names = list(reg.backends)
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


class ReportItem(pytest.Item):
    def __init__(self, *, report, backend, device="cpu", error=None, **kw):
        super().__init__(**kw)
        self.report, self.backend, self.device, self.error = report, backend, device, error

    def runtest(self):
        if self.error:
            raise ReportFailure(self.error)
        from fuzz.cases import CaseParams
        from fuzz.check import backend_can_run, run_case
        reg = _registry(tuple(self.report.get("plugins") or ()))
        if self.backend not in reg.backends:
            pytest.skip(f"backend {self.backend} is not registered here")
        b = reg.get(self.backend)
        why = backend_can_run(b, self.device)
        if why:
            pytest.skip(f"{self.backend} cannot run on {self.device}: {why}")
        params = CaseParams.from_dict(self.report["params"])
        limit = 1 << 18 if self.device == "cpu" else 1 << 28
        if params.T * params.n * params.D > limit and b.capabilities.refusal(
                device=self.device, x_dtype=params.x_dtype, n=params.n, D=params.D, T=params.T) is None:
            pytest.skip(f"case of {params.T * params.n * params.D} elements is too big for {self.device}")
        from fuzz.context import unavailable
        from fuzz.history import needs_fresh_worker, replay_in_fresh_worker
        if unavailable(params, self.device):
            pytest.skip(f"report {self.report['id']}: {unavailable(params, self.device)}")
        if needs_fresh_worker(self.report):    # earlier calls, or the first call in a process
            res = replay_in_fresh_worker(self.report, self.backend, self.device, tuple(self.report.get("plugins") or ()))
        else:
            res = run_case(b, params, self.device)
        if res.failed:
            raise ReportFailure(f"{res.kind}: {res.message}")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ReportFailure):
            rid = self.report["id"] if self.report else self.path.name
            return f"report {rid} fails on {self.backend} ({self.device}): {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"report {self.path.name} on {self.backend}"
