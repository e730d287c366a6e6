"""Under pytest-xdist each worker sees one GPU: gwN gets GPU N mod count."""
import fuzz.pytest_plugin as plugin


def test_worker_is_pinned_to_one_gpu(monkeypatch):
    monkeypatch.setattr(plugin, "_gpu_count", lambda: 2)
    for worker, gpu in (("gw0", "0"), ("gw1", "1"), ("gw2", "0")):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        plugin.pytest_configure(None)
        assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == gpu


def test_explicit_choice_and_single_gpu_are_left_alone(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(plugin, "_gpu_count", lambda: 8)
    plugin.pytest_configure(None)
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(plugin, "_gpu_count", lambda: 1)
    plugin.pytest_configure(None)
    assert "CUDA_VISIBLE_DEVICES" not in __import__("os").environ
