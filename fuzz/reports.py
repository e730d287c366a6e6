"""Failure reports: one self-contained JSON file per distinct failure.

reports/<backend>/<id>.json, where id is derived from the failure's signature (backend,
failure kind, failing components): a second failure with the same signature replaces the
file only if its case is smaller, so each bug keeps its smallest reproducer. Writes are
atomic (temp file + rename) under an exclusive lock on the backend's folder, so many
workers can write at once and a run killed at any moment leaves only complete files."""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from fuzz.cases import CaseParams

SCHEMA = 1
REQUIRED = ("schema", "id", "backend", "signature", "kind", "params", "device", "replay")


class ReportError(ValueError):
    """A report file is unreadable or malformed; the message names the file and the problem."""


def case_size(params: CaseParams) -> tuple:
    """Smaller is simpler: elements first, then the values' distance from the defaults."""
    p = params
    fancy = (abs(p.x_scale) + abs(p.grad_scale) + abs(p.phi_scale) + abs(p.gamma_scale)
             + abs(p.bias_shift) + p.zero_tokens + p.outliers + (p.layout != "contiguous")
             + (p.x_dtype != "bf16") + (not p.use_gamma) + sum(a != 1.0 for a in p.alpha)
             + len(p.arg_layouts) + len(p.arg_dtypes) + len(p.context()))
    return (p.T * p.n * p.D, p.T, p.D, p.n, fancy)


def report_id(signature: str) -> str:
    return hashlib.sha1(signature.encode()).hexdigest()[:12]


def environment(device: str) -> dict:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "host": platform.node(), "git_commit": _git_commit()}
    for mod in ("triton", "tilelang"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def build_report(result, *, detected_after_s: float | None = None, plugins=(), env: dict | None = None) -> dict:
    sig = result.signature()
    rid = report_id(sig)
    plugin_flags = "".join(f" --plugin {p}" for p in plugins)
    return {
        "schema": SCHEMA,
        "id": rid,
        "backend": result.backend,
        "signature": sig,
        "kind": result.kind,
        "failing_components": result.failing_components(),
        "message": result.message,
        "params": result.params.to_dict(),
        "device": result.device,
        "verdicts": [v.to_dict() for v in result.verdicts],
        "worst_ratio": result.worst_ratio(),
        "detected_after_s": detected_after_s,
        "found_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": env if env is not None else environment(result.device),
        "plugins": list(plugins),
        "replay": f"mhc-fuzz replay {{path}}{plugin_flags}",
        # the calls its process must make first (a history-dependent failure; replay makes them)
        "history": list(result.history),
        # An unfixed bug stays here as a strict expected failure: set "fixed": false with a reason.
        "expected_failure": None,
    }


@contextlib.contextmanager
def _locked(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files of writers that died between creating and renaming them
    (SIGKILL, power loss). Call with the folder's lock held: a live writer only has a temporary
    file while it holds that lock, so every one found then is stale."""
    n = 0
    for tmp in folder.glob(".*.json.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            n += 1
    return n


def sweep_reports_dir(reports_dir: str | Path) -> int:
    """Remove stale temporary files from every backend folder of a reports directory (each
    under its lock); returns how many. A run calls it first, so a killed run's debris is gone
    before anything is uploaded or collected."""
    root = Path(reports_dir)
    if not root.is_dir():
        return 0
    n = 0
    for folder in root.iterdir():
        if folder.is_dir():
            with _locked(folder):
                n += _remove_stale_temps(folder)
    return n


def _atomic_write(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_report(report: dict, reports_dir: str | Path) -> tuple[Path, bool]:
    """Write (or keep the smaller existing) report. Returns (path, written)."""
    folder = Path(reports_dir) / report["backend"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report['id']}.json"
    report = dict(report, replay=report["replay"].replace("{path}", str(path)))
    with _locked(folder):
        _remove_stale_temps(folder)
        if path.exists():
            try:
                old = load_report(path)
                if case_size(CaseParams.from_dict(old["params"])) <= case_size(CaseParams.from_dict(report["params"])):
                    return path, False
                report["expected_failure"] = old.get("expected_failure")
            except ReportError:
                pass   # a damaged file is replaced by a good one
        _atomic_write(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path, True


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: a report must be a JSON object")
    for key in REQUIRED:
        if key not in doc:
            raise ReportError(f"{path}: missing key {key!r}")
    if doc["schema"] != SCHEMA:
        raise ReportError(f"{path}: schema {doc['schema']!r} is not supported (expected {SCHEMA})")
    try:
        CaseParams.from_dict(doc["params"])
    except (TypeError, ValueError) as exc:
        raise ReportError(f"{path}: params: {exc}") from exc
    history = doc.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) and isinstance(h.get("backend"), str)
                                                and isinstance(h.get("params"), dict) for h in history):
        raise ReportError(f"{path}: history must be a list of {{\"backend\": name, \"params\": {{...}}}}")
    try:
        for h in history:
            CaseParams.from_dict(h["params"])
    except (TypeError, ValueError) as exc:
        raise ReportError(f"{path}: history: params: {exc}") from exc
    xf = doc.get("expected_failure")
    if xf is not None and not (isinstance(xf, dict) and isinstance(xf.get("reason"), str)):
        raise ReportError(f"{path}: expected_failure must be null or an object with a 'reason' string")
    return doc


def iter_reports(reports_dir: str | Path):
    root = Path(reports_dir)
    return sorted(root.glob("*/*.json")) if root.is_dir() else []
