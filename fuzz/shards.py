"""A sharded run (`mhc-fuzz run --workers N|auto`): fuzz processes spread over the GPUs (two
per GPU with auto), the search split by seed, merged into one RunOutcome that the pipeline
writes like any other run.

Each shard is `mhc-fuzz run` itself in a child process with CUDA_VISIBLE_DEVICES pinned to
one GPU, a share of its memory (MHC_FUZZ_GPU_SHARE: the shards on that GPU) and its own seed
(seed*1000 + i), writing to the shared reports folder (safe: reports are locked and atomic)
and its full statistics to out/worker-i/stats-R.json. A shard that dies is restarted for the
rest of the budget. On SIGINT/SIGTERM (to this process or to the whole
group) the shards stop like any interrupted run, and what they did is merged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fuzz import stop
from fuzz.errors import EXIT_FOUND, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, HarnessError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
GRACE_S = 30.0        # beyond budget + one case timeout before a shard is stopped by force
STOP_WAIT_S = 4.0     # a stopped shard writes its statistics within this
# shards per GPU with --workers auto: a case waits on the CPU (Hypothesis, the checks' launches)
# about as long as on the GPU, so a second shard fills the GPU's idle time; each may hold half
# its memory (GPU_SHARE_ENV, fuzz/executor.py)
WORKERS_PER_GPU = 2
GPU_SHARE_ENV = "MHC_FUZZ_GPU_SHARE"


def gpu_count_without_cuda_init() -> int | None:
    """GPUs the driver lists, read without initialising CUDA (CUDA_VISIBLE_DEVICES must be
    set before that); None where the driver does not list them."""
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else None


def gpu_count() -> int:
    found = gpu_count_without_cuda_init()
    if found is not None:
        return found
    import torch
    return torch.cuda.device_count()


def worker_count(spec: str, device: str, large: bool = False) -> int:
    """How many shards: N, or with auto WORKERS_PER_GPU per GPU (one for the large tier, whose
    cases need most of a GPU's memory), half the cores on the CPU."""
    if spec == "auto":
        if device != "cuda":
            return max(1, (os.cpu_count() or 2) // 2)
        return (1 if large else WORKERS_PER_GPU) * max(1, gpu_count())
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise HarnessError(f"--workers {spec!r}: expected a positive integer or auto")
    return n


def _child_argv(plan, names, seed: int, stats_path: Path, budget_s: float) -> list:
    argv = [sys.executable, "-m", "fuzz.cli", "run", "--backend", ",".join(names), "--budget", f"{budget_s:.1f}s",
            "--profile", plan.profile.name, "--seed", str(seed), "--reports", str(plan.reports_dir),
            "--out", str(stats_path.parent), "--db", plan.db_spec, "--case-timeout", str(plan.case_timeout_s),
            "--device", plan.device, "--no-warm-up", "--stats-out", str(stats_path)]
    for p in plan.plugins:
        argv += ["--plugin", p]
    if plan.tolerances:
        argv += ["--tolerances", plan.tolerances]
    if not plan.isolate:
        argv.append("--no-isolate")
    if plan.max_cases is not None:
        argv += ["--max-cases", str(plan.max_cases)]
    return argv


def fuzz_sharded(plan, names: list, console):
    """Run the shards; returns (merged BackendStats list, number of workers, interrupted)."""
    from fuzz.engine import BackendStats
    n = worker_count(plan.workers, plan.device, plan.profile.limits(plan.device).large)
    gpus = gpu_count() if plan.device == "cuda" else 0
    per_gpu = shards_per_gpu(n, gpus) if plan.device == "cuda" else {}
    where = f" ({gpus} GPU{'s' * (gpus > 1)}, {_spread(per_gpu)})" if per_gpu else ""
    console.print(f"{n} workers on {plan.device}{where}")
    if not names:
        return [], n, False
    shards = {}

    def launch(i):
        env = dict(os.environ)
        env.update(gpu_env(i, per_gpu))
        restarts = shards[i]["restarts"] + 1 if i in shards else 0
        folder = plan.out_dir / f"worker-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        stats_path = folder / f"stats-{restarts}.json"
        log = open(plan.out_dir / f"worker-{i}.log", "a")
        left = max(1.0, plan.deadline - time.monotonic())
        # started with SIGINT/SIGTERM blocked: a signal to the group while it imports must not kill
        # it (fuzz/stop.py: a shard ignores them, then unblocks; its parent stops it with SIGUSR1)
        proc = subprocess.Popen(_child_argv(plan, names, plan.seed * 1000 + i + 100 * restarts, stats_path, left),
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS))
        shards[i] = {"proc": proc, "restarts": restarts, "log": log, "stats": shards.get(i, {}).get("stats", [])
                     + [stats_path]}

    for i in range(n):
        launch(i)
    with stop.cooperative():
        interrupted = _supervise(plan, shards, launch, console)
    merged = {}
    for sh in shards.values():
        sh["log"].close()
        for path in sh["stats"]:
            if not path.exists():        # a shard that died before writing: its cases are lost
                continue
            for d in json.loads(path.read_text())["backends"]:
                s = BackendStats.from_dict(d)
                if s.name not in merged or merged[s.name].skipped is not None:
                    merged[s.name] = s
                elif s.skipped is None:
                    merged[s.name].merge(s)
    stats = [merged[nm] for nm in names if nm in merged]
    return stats, n, interrupted


def shards_per_gpu(n: int, gpus: int) -> dict:
    """{GPU: how many of n shards run on it}, shard i on GPU i % gpus."""
    return {g: len(range(g, n, gpus)) for g in range(gpus)}


def gpu_env(i: int, per_gpu: dict) -> dict:
    """Shard i's GPU, and its share of that GPU's memory (fuzz/executor.py, share_gpu_memory)."""
    if not per_gpu:
        return {}
    gpu = i % len(per_gpu)
    return {"CUDA_VISIBLE_DEVICES": str(gpu), GPU_SHARE_ENV: str(per_gpu[gpu])}


def _spread(per_gpu: dict) -> str:
    counts = sorted(set(per_gpu.values()))
    if len(counts) == 1:
        return "one each" if counts == [1] else f"{counts[0]} each"
    return ", ".join(f"{k} on GPU {g}" for g, k in per_gpu.items())


def _supervise(plan, shards, launch, console) -> bool:
    """Wait for the shards; restart one that dies while budget is left; stop them all on a
    signal or once they overrun. Returns whether the run was interrupted."""
    hard_end = plan.deadline + plan.case_timeout_s + GRACE_S
    interrupted = False
    while True:
        if stop.requested() or time.monotonic() > hard_end:
            _stop_all(shards)
            return interrupted or stop.requested()
        running = 0
        for i, sh in shards.items():
            rc = sh["proc"].poll()
            if rc is None:
                running += 1
            elif rc == EXIT_USAGE:
                _stop_all(shards)
                raise HarnessError(f"worker {i} refused its options; see {plan.out_dir / f'worker-{i}.log'}")
            elif rc not in (EXIT_OK, EXIT_FOUND, EXIT_INTERRUPTED) and plan.deadline - time.monotonic() > 10:
                console.print(f"[yellow]worker {i} died (exit {rc}); restarting[/]")
                sh["log"].close()
                launch(i)
                running += 1
            elif rc == EXIT_INTERRUPTED:
                interrupted = True
        if not running:
            return interrupted
        time.sleep(0.1)


def _stop_all(shards):
    for sh in shards.values():
        if sh["proc"].poll() is None:
            sh["proc"].send_signal(signal.SIGUSR1)      # see fuzz/stop.py: stop like an interrupted run
    end = time.monotonic() + STOP_WAIT_S
    for sh in shards.values():
        try:
            sh["proc"].wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            sh["proc"].kill()
            sh["proc"].wait()
