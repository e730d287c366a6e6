"""pytest plugin (entry point pytest11): the onboarding card as test items of a backend's own suite.

    pytest --mhc-onboard NAME           # a registered backend (e.g. through its entry point)
    pytest --mhc-onboard module:attr    # a backend object, installed or not

Each line of the card (fuzz/onboard.py CHECKS) becomes a test item `mhc-onboard[NAME]::<check>`:
a failing check fails its item with the check's detail and the replay lines of what it found;
a check the card did not reach (the contract failed, it cannot run here, no warm_up()) is
skipped with the reason. The card runs once per session, shared by pytest-xdist workers, and
is printed at the end. Options: --mhc-onboard-budget (the short fuzz, default 20s),
--mhc-onboard-max-cases N (end the short fuzz after N cases), --mhc-onboard-device cuda|cpu,
--mhc-onboard-markdown FILE (the card as a Markdown page; with several backends one page each,
FILE-<spec>.md)."""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import pytest

_cards: dict = {}      # spec -> card built (or read) in this process
_printed: dict = {}    # spec -> the card as text, from the items' reports, for the session's end


def pytest_addoption(parser):
    g = parser.getgroup("mhc-fuzz onboarding")
    g.addoption("--mhc-onboard", action="append", default=[], metavar="NAME|MODULE:ATTR",
                help="run the mhc-fuzz onboarding card of this backend, one test item per check (repeatable)")
    g.addoption("--mhc-onboard-budget", default="20s", help="time for the card's short fuzz (default 20s)")
    g.addoption("--mhc-onboard-max-cases", type=int, default=None, metavar="N",
                help="end the card's short fuzz after N cases, if the budget lasts (the same work on every machine)")
    g.addoption("--mhc-onboard-device", choices=("cuda", "cpu"), default=None,
                help="device for the card (default: cuda when present)")
    g.addoption("--mhc-onboard-markdown", metavar="FILE", help="also write the card as a Markdown page")


def pytest_configure(config):
    if not config.getoption("--mhc-onboard"):
        return
    device = config.getoption("--mhc-onboard-device")
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":     # read when Triton kernels are imported: set it before test modules are
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.hookimpl(tryfirst=True)     # before -k / -m deselect, so they apply to these items too
def pytest_collection_modifyitems(session, config, items):
    for spec in config.getoption("--mhc-onboard"):
        card = OnboardCard.from_parent(session, name=f"mhc-onboard[{spec}]", nodeid=f"mhc-onboard[{spec}]", spec=spec)
        items.extend(card.collect())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    text = getattr(item, "card_text", None)
    if text is not None and call.when == "call":
        outcome.get_result().mhc_onboard_card = (item.spec, text)    # travels with the report (xdist too)


def pytest_runtest_logreport(report):
    spec, text = getattr(report, "mhc_onboard_card", (None, None))
    if spec is not None:
        _printed[spec] = text


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for spec, text in _printed.items():
        terminalreporter.section(f"mhc-fuzz onboarding card: {spec}")
        terminalreporter.line(text)


class OnboardCard(pytest.Collector):
    def __init__(self, *, spec, **kw):
        super().__init__(**kw)
        self.spec = spec

    def collect(self):
        from fuzz.onboard import CHECKS
        return [OnboardItem.from_parent(self, name=check.replace(" ", "-"), check=check, spec=self.spec)
                for check in CHECKS]


class OnboardFailure(AssertionError):
    pass


class OnboardItem(pytest.Item):
    def __init__(self, *, check, spec, **kw):
        super().__init__(**kw)
        self.check, self.spec = check, spec

    def runtest(self):
        from fuzz.card import plain_lines
        card = card_of(self.config, self.spec)
        self.card_text = card["error"] if "error" in card else "\n".join(plain_lines(card))
        if "error" in card:
            raise OnboardFailure(card["error"])
        lines = {c["check"]: c for c in card["checks"]}
        c = lines.get(self.check)
        if c is None:
            if self.check == "warm-up" and lines.get("available", {}).get("ok"):
                pytest.skip("the backend has no warm_up()")
            stop = next((x["check"] for x in card["checks"] if not x["ok"]), "?")
            pytest.skip(f"not reached: the card stopped at {stop!r}")
        self.user_properties.append(("detail", c["detail"]))
        if not c["ok"]:
            found = [f"{f['kind']} ({', '.join(f['components']) or '-'}) at {f['case']}\n  replay: {f['replay']}"
                     for f in card.get("findings") or [] if self.check in f["checks"] and f.get("replay")]
            raise OnboardFailure("\n".join([c["detail"], *found]))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, OnboardFailure):
            return f"onboarding check {self.check!r} of {self.spec} failed: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"mhc-fuzz onboarding of {self.spec}: {self.check}"


def card_of(config, spec: str) -> dict:
    """The card of `spec`, built once: in this process, or under pytest-xdist by the first
    worker that asks, the others reading its copy (a file under a lock)."""
    if spec in _cards:
        return _cards[spec]
    run_id = getattr(config, "workerinput", {}).get("testrunuid")
    if run_id is None:
        _cards[spec] = _build(config, spec)
        return _cards[spec]
    # the run's shared temporary folder (pytest removes old ones), as pytest-xdist recommends
    factory = getattr(config, "_tmp_path_factory", None)
    shared_root = factory.getbasetemp().parent if factory else Path(tempfile.gettempdir())
    folder = shared_root / f"mhc-onboard-{run_id}"
    folder.mkdir(exist_ok=True)
    key = hashlib.sha1(spec.encode()).hexdigest()[:12]
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shared = folder / f"{key}.json"
        if shared.exists():
            _cards[spec] = json.loads(shared.read_text())
            return _cards[spec]
        _cards[spec] = card = _build(config, spec)
        shared.write_text(json.dumps({k: v for k, v in card.items() if not k.startswith("_")}))
        return card


def _build(config, spec: str) -> dict:
    from rich.console import Console
    from fuzz import onboard
    from fuzz.cli import HarnessError, build_parser
    argv = ["onboard", *([spec] if ":" in spec else ["--backend", spec]),
            "--budget", config.getoption("--mhc-onboard-budget"),
            "--reports", str(Path(config.rootpath) / "fuzz-out" / "onboard-reports")]
    for flag in ("device", "max-cases"):
        if config.getoption(f"--mhc-onboard-{flag}") is not None:
            argv += [f"--{flag}", str(config.getoption(f"--mhc-onboard-{flag}"))]
    markdown = config.getoption("--mhc-onboard-markdown")
    if markdown and len(config.getoption("--mhc-onboard")) > 1:      # one page per backend: FILE-<spec>.md
        markdown = Path(markdown).with_name(f"{Path(markdown).stem}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec)}"
                                            f"{Path(markdown).suffix}")
    try:
        card = onboard.build_card(build_parser().parse_args(argv), Console(file=io.StringIO(), width=80))
        onboard.write(card, markdown_path=markdown)
    except HarnessError as exc:
        return {"target": spec, "error": f"mhc-fuzz onboard {spec}: {exc}"}
    except Exception as exc:      # kept as the card's result: every item reports it, none retries
        return {"target": spec, "error": f"mhc-fuzz onboard {spec} raised {type(exc).__name__}: {exc}"}
    return card
