"""Set-up shared by every command that fuzzes (run, mutants, onboard): the budget, the
device and its environment, the registry, the profile, and the FuzzOptions and executor they
give. Each is validated here, so bad input is a HarnessError (one line, exit 2) wherever it
comes from."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import fuzz
from fuzz.errors import HarnessError

WRITE_RESERVE_S = 3.0     # the end of the budget kept for the summary, JUnit and the plot


def parse_budget(text: str, option: str = "--budget") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", str(text))
    if not m:
        raise HarnessError(f"{option} {text!r}: expected a duration like 90s, 10m or 1.5h")
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if seconds <= 0:
        raise HarnessError(f"{option} {text!r}: must be more than zero")
    if seconds > 7 * 24 * 3600:
        raise HarnessError(f"{option} {text!r}: more than a week; split the run")
    return seconds


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def pick_device(requested: str | None, console) -> str:
    if requested == "cuda" and not cuda_available():
        raise HarnessError("--device cuda: no CUDA device is visible on this machine")
    if requested:
        return requested
    if cuda_available():
        return "cuda"
    console.print("[yellow]notice:[/] no CUDA device: running on the CPU (small shapes; Triton interpreted)")
    return "cpu"


def prepare_device_env(device: str):
    """Triton kernels can only run interpreted on the CPU; it must be set before they are imported."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def plugin_path_env() -> dict:
    """Plugins named module:attr are imported from the working directory too (e.g.
    tests.mutants:NAME from the checkout), in this process and in its workers."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}


def load_registry(plugins, console, quiet: bool = False):
    from impls.registry import default_registry
    plugins = list(dict.fromkeys(plugins))     # the same target twice is one plugin
    if plugins:
        plugin_path_env()
    reg = default_registry(plugins)
    if not quiet:
        for msg in reg.errors.values():
            console.print(f"[red]backend error:[/] {msg}")
    for target in plugins:
        if f"--plugin {target}" in reg.errors:
            raise HarnessError(reg.errors[f"--plugin {target}"])
    return reg


def select_backends(reg, spec: str) -> list:
    if spec == "all":
        return reg.names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in reg.backends:
            raise HarnessError(f"--backend {n}: no such backend (registered: {', '.join(reg.names()) or 'none'})")
    return names


def writable_dir(path, flag: str) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"{flag} {path}: not writable: {exc.strerror or exc}") from None
    return p


def load_profile(name: str):
    from fuzz.profiles import ProfileError, get_profile
    try:
        return get_profile(name)
    except ProfileError as exc:
        raise HarnessError(str(exc)) from None


def open_database(spec: str):
    from fuzz.engine import open_database as open_db
    try:
        return open_db(spec)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None


@dataclass
class RunPlan:
    """Everything a fuzz run needs, validated."""
    device: str
    budget_s: float
    profile: object
    registry: object
    backends: list                      # names, in order
    plugins: tuple = ()
    seed: int = 0
    db_spec: str = "none"
    reports_dir: Path | None = None
    out_dir: Path | None = None
    junit: Path | None = None
    json: Path | None = None
    tolerances: str | None = None
    case_timeout_s: float = 300.0
    shrink_budget_s: float = 120.0      # per chunk: how long a failure is shrunk (fuzz/engine.py)
    isolate: bool = True
    stop_on_first_failure: bool = False
    warm_up: bool = True
    workers: str | None = None          # None or "1": one process; N or "auto": sharded
    max_cases: int | None = None        # per backend (and per shard): a fixed amount of work
    argv: list = field(default_factory=list)
    started: float = field(default_factory=lambda: fuzz.STARTED)   # process start: imports count too

    @property
    def deadline(self) -> float:
        """When fuzzing must end: the budget, less a reserve for writing the summary."""
        return self.started + self.budget_s - min(WRITE_RESERVE_S, 0.1 * self.budget_s)

    def fuzz_options(self, **overrides):
        from fuzz.engine import FuzzOptions
        opts = dict(device=self.device, chunk_examples=self.profile.chunk_examples,
                    limits=self.profile.limits(self.device), seed=self.seed,
                    database=open_database(self.db_spec), reports_dir=self.reports_dir, plugins=tuple(self.plugins),
                    check_determinism=self.profile.check_determinism,
                    stop_on_first_failure=self.stop_on_first_failure, deadline=self.deadline,
                    max_cases=self.max_cases, shrink_budget_s=self.shrink_budget_s)
        opts.update(overrides)
        return FuzzOptions(**opts)

    def executor(self, env: dict | None = None):
        from fuzz.executor import InProcessExecutor, SubprocessExecutor
        if not self.isolate:
            return InProcessExecutor(self.registry, self.device, self.tolerances)
        return SubprocessExecutor(self.plugins, self.device, self.tolerances, self.case_timeout_s,
                                  env={**(plugin_path_env() if self.plugins else {}), **(env or {})})


def make_plan(*, backend: str, budget: str, device: str | None, profile: str, plugins, console,
              quiet_registry: bool = False, **fields) -> RunPlan:
    """Validate a command's options into a RunPlan (budget first: it is the cheapest check)."""
    from fuzz import tolerances as tolmod
    budget_s = parse_budget(budget)
    prof = load_profile(profile)
    tolmod.load(fields.get("tolerances"))          # fail early, with the file's own message
    dev = pick_device(device, console)
    prepare_device_env(dev)
    reg = load_registry(plugins, console, quiet=quiet_registry)
    names = select_backends(reg, backend)
    return RunPlan(dev, budget_s, prof, reg, names, tuple(dict.fromkeys(plugins)), **fields)
