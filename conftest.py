"""Root conftest: load the mhc-fuzz pytest plugin when the package is not installed (run
from a plain checkout, e.g. with PYTHONPATH); once installed, its pytest11 entry point does."""
from importlib.metadata import entry_points

if not any(ep.value == "fuzz.pytest_plugin" for ep in entry_points(group="pytest11")):
    from fuzz.pytest_plugin import (pytest_addoption, pytest_collect_file,  # noqa: F401
                                    pytest_configure)
