"""Root conftest: load the mhc-fuzz pytest plugins when the package is not installed (run
from a plain checkout, e.g. with PYTHONPATH); once installed, their pytest11 entry points do."""
from importlib.metadata import entry_points

_installed = {ep.value for ep in entry_points(group="pytest11")}
if "fuzz.pytest_onboard" not in _installed:
    pytest_plugins = ["fuzz.pytest_onboard"]
if "fuzz.pytest_plugin" not in _installed:
    from fuzz.pytest_plugin import (pytest_addoption, pytest_collect_file,  # noqa: F401
                                    pytest_configure)
