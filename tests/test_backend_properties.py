"""The fuzzer's differential property as pytest tests, one per registered backend.

Same check as `mhc-fuzz run` (fuzz.check.run_case under Hypothesis), with the 'ci'
profile's size limits: on the CPU that is golden and Triton under the interpreter; on a
GPU every available backend. Backends that cannot run here skip with their reason."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from fuzz.check import backend_can_run, run_case
from fuzz.profiles import PROFILES
from fuzz.strategies import cases, outside_limits, unsupported_cases
from impls.registry import default_registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REGISTRY = default_registry(entry_points=False)
EXAMPLES = {"cpu": {"golden": 60, "triton": 8}, "cuda": {}}


def runnable(name):
    """The backend, or a skip with the reason it cannot run on this machine."""
    b = REGISTRY.get(name)
    why = backend_can_run(b, DEVICE)
    if why:
        pytest.skip(f"{name}: {why}")
    return b


@pytest.mark.parametrize("name", REGISTRY.names())
def test_backend_matches_float64_truth(name):
    b = runnable(name)
    limits = PROFILES["ci"].limits(DEVICE)
    if DEVICE == "cpu" and name != "golden":      # interpreted kernels: keep cases tiny
        limits = type(limits)(max_elements=512, max_tokens=16, max_D=64)

    @settings(max_examples=EXAMPLES[DEVICE].get(name, 40), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(params=cases(b.capabilities, limits))
    def prop(params):
        res = run_case(b, params, DEVICE)
        assert not res.failed, f"{res.kind}: {res.message}"

    prop()


@pytest.mark.parametrize("name", REGISTRY.names())
def test_backend_refuses_what_it_does_not_support(name):
    b = runnable(name)
    if name == "golden":        # the reference computes every input: nothing may lie outside
        assert outside_limits(b.capabilities) == [] and unsupported_cases(b.capabilities, DEVICE) is None
        return
    outside = unsupported_cases(b.capabilities, DEVICE)
    if outside is None:
        pytest.skip(f"{name} declares no limits")

    @settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(params=outside)
    def prop(params):
        res = run_case(b, params, DEVICE)
        assert res.status == "refused", f"{res.kind}: {res.message}"

    prop()
