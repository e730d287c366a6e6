"""Failure reports: one self-contained JSON file per distinct failure.

reports/<backend>/<id>.json, where id is derived from the failure's signature (backend,
failure kind, failing components): a second failure with the same signature replaces the
file only if its case is smaller, so each bug keeps its smallest reproducer. Writes are
atomic (temp file + rename) under an exclusive lock on the backend's folder, so many
workers can write at once and a run killed at any moment leaves only complete files.

A report is data. Reports travel (nightly artifacts, pull requests), so loading one checks
every field and never imports or calls anything it names: its "plugins" only say which
--plugin options loaded its backend when it was found, for the command a person may choose
to run. A case is either generated from "params", or (a reduced case) the tensors of the
file named by "tensors", stored beside the report in safetensors format."""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from fuzz.cases import CaseParams
from fuzz.kinds import FailureKind

# The report format. Schema 2 added the call's context and every input's layout and dtype to
# "params", and "history"; a report of schema 1 has none of them and means the default
# context (a schema 1 harness refuses a schema 2 report instead of replaying it without them).
SCHEMA = 2
SCHEMAS = (1, 2)                    # what load_report() reads
ADDED_IN_SCHEMA = {2: {"report": ("history",),
                       "params": ("arg_layouts", "arg_dtypes", "grad_mode", "stream", "placement", "calls",
                                  "first_call")}}
MAX_HISTORY = 64                    # earlier calls a report may list (a worker's log keeps 32)
SAMPLE_KIND = "sample"     # a case written to be replayed (fuzz/sample.py), not a failure
REQUIRED = ("schema", "id", "backend", "signature", "kind", "params", "device", "replay")
MAX_REPORT_BYTES = 4 << 20          # reports are a few kB; anything bigger is not one
PLUGIN_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*")
TENSORS_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.safetensors")


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
        loaded = sys.modules.get(mod)
        try:      # not imported here for this: importing tilelang takes seconds
            env[mod] = getattr(loaded, "__version__", None) if loaded else metadata.version(mod)
        except metadata.PackageNotFoundError:
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


def plugins_providing(backend: str, plugins) -> list:
    """The --plugin targets among `plugins` that can have provided `backend`: a target whose
    object (already imported here by the run) has another name is dropped; one this process
    cannot see without importing or calling something is kept."""
    kept = []
    for target in dict.fromkeys(plugins):
        module, _, attr = target.partition(":")
        obj = sys.modules.get(module)
        for part in attr.split(".") if obj is not None else ():
            obj = getattr(obj, part, None)
        name = getattr(obj, "name", None) if obj is not None else None
        if not isinstance(name, str) or name == backend:
            kept.append(target)
    return kept


def replay_command(path, plugins=(), command: str = "replay") -> str:
    """The shell command that replays (or reduces, ...) the case at `path` with `plugins`
    loaded, quoted for a POSIX shell."""
    words = ["mhc-fuzz", command, str(path)] + [w for p in plugins for w in ("--plugin", p)]
    return " ".join(shlex.quote(w) for w in words)


def build_report(result, *, detected_after_s: float | None = None, plugins=(), env: dict | None = None) -> dict:
    sig = result.signature()
    rid = report_id(sig)
    plugins = plugins_providing(result.backend, plugins)
    plugin_flags = "".join(f" --plugin {shlex.quote(p)}" for p in plugins)
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
        # a hang is replayed with the limit it overran (the time the run waited for it)
        "case_timeout_s": round(result.seconds, 1) if result.kind == FailureKind.TIMEOUT else None,
        # the calls its process must make first (a history-dependent failure; replay makes them)
        "history": [dict(h) for h in result.history],
        # An unfixed bug stays here as a strict expected failure: {"reason": "..."}.
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
    for pattern in (".*.json.*.tmp", ".*.safetensors.*.tmp"):     # reports, and reduced cases' tensors
        for tmp in folder.glob(pattern):
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


def write_report(report: dict, reports_dir: str | Path, tensors: dict | None = None) -> tuple[Path, bool]:
    """Write (or keep the smaller existing) report. Returns (path, written). With `tensors`
    (a reduced case: name -> tensor), they are stored beside it as <id>-<hash>.safetensors."""
    folder = Path(reports_dir) / report["backend"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report['id']}.json"
    report = dict(report, replay=report["replay"].replace("{path}", shlex.quote(str(path))))
    with _locked(folder):
        _remove_stale_temps(folder)
        old = None
        if path.exists():
            try:
                old = load_report(path)
                if case_size(CaseParams.from_dict(old["params"])) <= case_size(CaseParams.from_dict(report["params"])):
                    return path, False
                report["expected_failure"] = old.get("expected_failure")
            except ReportError:
                pass   # a damaged file is replaced by a good one
        if tensors is not None:
            report["tensors"] = _write_tensors(folder, report["id"], tensors)
        _atomic_write(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
        if old and old.get("tensors") and old["tensors"] != report.get("tensors"):
            with contextlib.suppress(FileNotFoundError):
                (folder / old["tensors"]).unlink()     # the replaced case's tensors
    return path, True


def _write_tensors(folder: Path, rid: str, tensors: dict) -> str:
    """Store a case's tensors (safetensors, never pickle) under a name that has their hash in
    it, so that the tensors of a report being replaced are never overwritten."""
    from safetensors.torch import save
    blob = save({k: t.detach().cpu().contiguous() for k, t in tensors.items() if t is not None})
    name = f"{rid}-{hashlib.sha1(blob).hexdigest()[:10]}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return name


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"{path}: more than {MAX_REPORT_BYTES >> 20} MiB: not a report")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not UTF-8 text (byte {exc.start}): not a report") from exc


def _short(value) -> str:
    """repr() of a value read from a report, cut to a length fit for one line."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_backend_name(name) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 100 and name.replace("-", "_").replace(".", "_").isidentifier()


def _check_older_schema(path, doc: dict):
    """A report of an older schema holds none of the fields added since: what it leaves out means
    what it meant then (the default context, no earlier calls)."""
    for schema, added in ADDED_IN_SCHEMA.items():
        if doc["schema"] < schema:
            late = [k for k in added["report"] if k in doc]
            late += [f"params.{k}" for k in added["params"] if isinstance(doc["params"], dict) and k in doc["params"]]
            if late:
                raise ReportError(f"{path}: {', '.join(late)}: added in schema {schema}, "
                                  f"but the report is schema {doc['schema']}")


def _check_history(path, doc: dict):
    """"history": the calls its process made before the case (a history-dependent failure),
    each {"backend": name, "params": {...}}, checked as the case's own backend and params are."""
    history = doc.get("history", [])
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        raise ReportError(f"{path}: history must be a list of at most {MAX_HISTORY} earlier calls")
    for i, h in enumerate(history):
        if not (isinstance(h, dict) and set(h) == {"backend", "params"}):
            raise ReportError(f"{path}: history[{i}] must be an object with exactly the keys backend and params")
        if not _is_backend_name(h["backend"]):
            raise ReportError(f"{path}: history[{i}]: backend must be a backend name, got {_short(h['backend'])}")
        if not isinstance(h["params"], dict):
            raise ReportError(f"{path}: history[{i}]: params must be an object")
        try:
            p = CaseParams.from_dict(h["params"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ReportError(f"{path}: history[{i}]: params: {str(exc)[:200]}") from None
        if p.first_call:
            raise ReportError(f"{path}: history[{i}]: params: an earlier call cannot be a first call")
    if (doc["kind"] == FailureKind.HISTORY_DEPENDENT) != bool(history):
        raise ReportError(f"{path}: history: a {FailureKind.HISTORY_DEPENDENT} report has its earlier calls, "
                          f"and only such a report has any (kind {doc['kind']}, {len(history)} earlier calls)")


def load_report(path: str | Path) -> dict:
    """Read and check a report; ReportError (one line naming the file) for anything wrong.
    Nothing the report names is imported or called."""
    path = Path(path)
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from exc
    except RecursionError:
        raise ReportError(f"{path}: not a report: JSON nested too deeply") from None
    except ValueError as exc:            # e.g. an integer of more digits than Python converts
        raise ReportError(f"{path}: not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: a report must be a JSON object")
    for key in REQUIRED:
        if key not in doc:
            raise ReportError(f"{path}: missing key {key!r}")
    if isinstance(doc["schema"], bool) or not isinstance(doc["schema"], int) or doc["schema"] not in SCHEMAS:
        raise ReportError(f"{path}: schema {_short(doc['schema'])} is not supported "
                          f"(expected {' or '.join(map(str, SCHEMAS))})")
    if doc["schema"] < SCHEMA:
        _check_older_schema(path, doc)
    for key in ("id", "signature", "replay"):
        if not isinstance(doc[key], str):
            raise ReportError(f"{path}: {key} must be a string")
    backend = doc["backend"]
    if not _is_backend_name(backend):
        raise ReportError(f"{path}: backend must be a backend name, got {_short(backend)}")
    if doc["kind"] not in {k.value for k in FailureKind} | {SAMPLE_KIND}:
        raise ReportError(f"{path}: kind {_short(doc['kind'])} is not a failure kind "
                          f"({', '.join(k.value for k in FailureKind)})")
    if doc["device"] not in ("cpu", "cuda"):
        raise ReportError(f"{path}: device must be cpu or cuda, got {_short(doc['device'])}")
    if not isinstance(doc["params"], dict):
        raise ReportError(f"{path}: params must be an object")
    try:
        CaseParams.from_dict(doc["params"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ReportError(f"{path}: params: {str(exc)[:200]}") from None
    _check_history(path, doc)
    plugins = doc.get("plugins") or []
    if not (isinstance(plugins, list) and len(plugins) <= 64
            and all(isinstance(t, str) and PLUGIN_TARGET.fullmatch(t) for t in plugins)):
        raise ReportError(f"{path}: plugins must be a list of module:attr names")
    xf = doc.get("expected_failure")
    if xf is not None and not (isinstance(xf, dict) and isinstance(xf.get("reason"), str)):
        raise ReportError(f"{path}: expected_failure must be null or an object with a 'reason' string")
    timeout = doc.get("case_timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 24 * 3600):
        raise ReportError(f"{path}: case_timeout_s must be null or a number of seconds up to a day")
    tensors = doc.get("tensors")
    if tensors is not None:
        if not (isinstance(tensors, str) and TENSORS_FILE.fullmatch(tensors)):
            raise ReportError(f"{path}: tensors must be the name of a .safetensors file beside the report")
        if not (path.parent / tensors).is_file():
            raise ReportError(f"{path}: its tensors file {tensors} is missing (it is stored beside the report)")
    return doc


def tensors_path(report_path: str | Path, report: dict) -> Path | None:
    """Where a reduced case's tensors are (beside its report), or None for a generated case."""
    return Path(report_path).parent / report["tensors"] if report.get("tensors") else None


def iter_reports(reports_dir: str | Path):
    root = Path(reports_dir)
    return sorted(root.glob("*/*.json")) if root.is_dir() else []
