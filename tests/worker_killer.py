"""A plugin that imports fine here but kills any worker process that imports it (for the
test that a worker which cannot start is a harness error, exit 2, not a finding)."""
import multiprocessing
import os

from impls.golden_backend import GoldenBackend

if multiprocessing.parent_process() is not None:
    os._exit(3)


class WorkerKiller(GoldenBackend):
    name = "worker_killer"


backend = WorkerKiller()
