"""A fixed sample of cases, written as report files, for passes that replay cases rather than
fuzz them: the nightly sanitizer pass replays each backend's reports and this sample under
every compute-sanitizer tool (`mhc-fuzz replay --sanitize all`).

    python -m fuzz.sample --backend triton,tilelang --out fuzz-out/sanitize-sample --reports reports

writes OUT/<backend>/<id>.json: the same cases every time (Hypothesis, derandomized, from the
backend's own capabilities), small enough for the sanitizers (which run kernels 10-100x
slower), and kind "sample": they are not failures, and they live outside reports/. With
--reports, the backend's own reports are copied in too, those of at most --max-elements
elements (a large-tier case would take hours under a sanitizer)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from fuzz.strategies import Limits

SANITIZER_LIMITS = Limits(1 << 16, 512, 1024)      # elements, tokens, hidden size


def sample_cases(caps, count: int, limits: Limits = SANITIZER_LIMITS) -> list:
    """`count` cases inside caps, the same on every call and every machine."""
    from hypothesis import HealthCheck, Phase, given, settings
    from fuzz.strategies import cases
    seen = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(cases(caps, limits))
    def collect(p):
        if p not in seen and len(seen) < count:
            seen.append(p)

    collect()
    return seen


def write_sample(backend: str, params: list, out: Path, device: str) -> list:
    from fuzz.reports import SAMPLE_KIND, SCHEMA
    folder = out / backend
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in params:
        d = p.to_dict()
        rid = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
        path = folder / f"{rid}.json"
        rep = {"schema": SCHEMA, "id": rid, "backend": backend, "signature": f"{backend}|sample|{rid}", "kind": SAMPLE_KIND,
               "failing_components": [], "message": "a fixed sample case (not a failure)", "params": d,
               "device": device, "verdicts": [], "plugins": [], "replay": f"mhc-fuzz replay {path}",
               "expected_failure": None}
        path.write_text(json.dumps(rep, indent=2) + "\n")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.sample", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True, help="NAME[,NAME]: whose capabilities the cases come from")
    ap.add_argument("--out", required=True, help="folder to write OUT/<backend>/<id>.json into")
    ap.add_argument("--count", type=int, default=6, help="cases per backend (default 6)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE:ATTR")
    ap.add_argument("--reports", help="also copy in each backend's reports from this folder")
    ap.add_argument("--max-elements", type=int, default=1 << 22, help="largest report case copied (T*n*D)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from impls.registry import default_registry
    reg = default_registry(args.plugin)
    for name in [n.strip() for n in args.backend.split(",") if n.strip()]:
        if name not in reg.backends:
            print(f"python -m fuzz.sample: error: no backend {name!r} (registered: {', '.join(reg.names())})",
                  file=sys.stderr)
            return 2
        paths = write_sample(name, sample_cases(reg.get(name).capabilities, args.count), Path(args.out), args.device)
        print(f"{name}: {len(paths)} cases in {Path(args.out) / name}")
        if args.reports:
            copy_reports(name, Path(args.reports), Path(args.out), args.max_elements)
    return 0


def copy_reports(backend: str, reports: Path, out: Path, max_elements: int):
    from fuzz.cases import CaseParams
    from fuzz.reports import ReportError, load_report
    kept = []
    for path in sorted((reports / backend).glob("*.json")):
        try:
            p = CaseParams.from_dict(load_report(path)["params"])
        except ReportError as exc:
            print(f"{backend}: skipped {path}: {exc}")
            continue
        if p.T * p.n * p.D > max_elements:
            print(f"{backend}: skipped {path}: {p.T * p.n * p.D} elements (more than {max_elements})")
            continue
        (out / backend / path.name).write_text(path.read_text())
        kept.append(path)
    print(f"{backend}: {len(kept)} reports copied from {reports / backend}")


if __name__ == "__main__":
    sys.exit(main())
