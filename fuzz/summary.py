"""Run results for people (a table, a Markdown page with plots) and machines (JSON, JUnit XML)."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

from fuzz import discrimination
from fuzz.engine import COMPONENTS
from fuzz.tables import FitTable


def _fmt_ratio(r):
    if r is None:
        return "-"
    return "inf" if not math.isfinite(r) or r >= 1e29 else f"{r:.3g}"


def _fmt_share(d):
    if not d or not d["cases"]:
        return "-"
    return f"{100 * d['share']:.0f}%" + (" **flagged**" if not d["discriminating"] else "")


def table(all_stats, interrupted: bool = False) -> FitTable:
    """The run's summary: a table in a terminal, a narrow layout in an 80-column CI log."""
    t = FitTable("mhc-fuzz summary" + (" (INTERRUPTED: partial)" if interrupted else ""),
                 ("backend", "device", "cases", "passed", "failed", "refused", "cases/s", "worst ratio", "findings"),
                 keep=2, right=("cases", "passed", "failed", "refused", "cases/s"))
    for s in all_stats:
        if s.skipped:
            t.add_row(s.name, s.device, "-", "-", "-", "-", "-", f"skipped: {s.skipped}", "")
            continue
        top = max(s.worst, key=s.worst.get) if s.worst else None
        worst = f"{_fmt_ratio(s.worst[top])} ({top})" if top else ""
        finds = "; ".join(f"{f.result.kind}:{','.join(f.result.failing_components()) or '-'} ({f.hits} hits)"
                          for f in s.findings.values())
        if "compiles" in s.backend_stats:
            finds = (finds or "none") + f"; {s.backend_stats['compiles']} compiles"
        blind = discrimination.never(s)
        if blind:
            finds = (finds or "none") + f"; [yellow]no case could tell: {', '.join(blind)}[/]"
        t.add_row(s.name, s.device, str(s.cases), str(s.passed), str(s.failed), str(s.refused),
                  f"{s.cases_per_second():.2f}", worst or "-", finds or "none")
    return t


def summary_dict(all_stats, meta: dict) -> dict:
    backends = []
    for s in all_stats:
        d = s.to_dict()
        d["discrimination"] = discrimination.shares(s)          # per component: cases that could tell
        d["never_discriminated"] = discrimination.never(s)
        backends.append(d)
    return {**meta, "interrupted": bool(meta.get("interrupted")), "failed": any(s.findings for s in all_stats),
            "backends": backends}


def write_json(path: Path, doc: dict):
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_junit(path: Path, all_stats, meta: dict | None = None):
    """One test suite per backend; one test case per distinct finding, or one passing case.
    An interrupted run says so in a property of every suite (a partial result is not a pass)."""
    interrupted = bool((meta or {}).get("interrupted"))
    suites = ET.Element("testsuites", name="mhc-fuzz" + (" (interrupted)" if interrupted else ""))
    for s in all_stats:
        suite = ET.SubElement(suites, "testsuite", name=f"mhc-fuzz.{s.name}", tests="0", failures="0",
                              skipped="0", time=f"{s.seconds:.2f}")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="interrupted", value="true" if interrupted else "false")
        ET.SubElement(props, "property", name="cases", value=str(s.cases))
        if s.skipped:
            case = ET.SubElement(suite, "testcase", classname=f"mhc-fuzz.{s.name}", name="fuzz")
            ET.SubElement(case, "skipped", message=s.skipped)
            suite.set("tests", "1"), suite.set("skipped", "1")
            continue
        if not s.findings:
            ET.SubElement(suite, "testcase", classname=f"mhc-fuzz.{s.name}", name="fuzz", time=f"{s.seconds:.2f}")
            suite.set("tests", "1")
            continue
        for sig, f in s.findings.items():
            case = ET.SubElement(suite, "testcase", classname=f"mhc-fuzz.{s.name}", name=sig)
            fail = ET.SubElement(case, "failure", type=f.result.kind, message=f.result.message[:300])
            fail.text = (f"case: {f.result.params.short()}\nreport: {f.path}\ncases that hit it: {f.hits}\n"
                         f"{f.result.message}")
        suite.set("tests", str(len(s.findings))), suite.set("failures", str(len(s.findings)))
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def format_stats(stats: dict) -> str:
    """A backend's statistics (stats(), warm_up()) on one line: "compiles 40, compile_seconds 183"."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())


def _replay_line(report_path) -> str:
    """The report's own replay line (with the --plugin its backend needs), as it runs."""
    from fuzz.reports import ReportError, load_report
    try:
        return load_report(report_path)["replay"]
    except (ReportError, TypeError):
        return f"mhc-fuzz replay {report_path}"


def write_page(out_dir: Path, all_stats, meta: dict) -> Path:
    """summary.md with the table and, where matplotlib is installed, a plot of error/bound ratios."""
    lines = ["# mhc-fuzz run" + (" (INTERRUPTED)" if meta.get("interrupted") else ""), ""]
    if meta.get("interrupted"):
        lines += ["**Interrupted** (SIGINT/SIGTERM): these numbers cover what ran before the stop; "
                  "backends marked *not run* did not run.", ""]
    lines += [f"- device: {meta.get('device')}" + (f" ({meta['gpu']})" if meta.get("gpu") else "") + "  ",
              f"- budget: {meta.get('budget_s')} s, profile {meta.get('profile')}, seed {meta.get('seed')}, "
              f"workers {meta.get('workers', 1)}  ", f"- started: {meta.get('started')}", "",
              "| backend | cases | passed | failed | refused | not run | cases/s | findings |",
              "|---|---|---|---|---|---|---|---|"]
    for s in all_stats:
        lines.append(f"| {s.name} | {s.cases} | {s.passed} | {s.failed} | {s.refused} | {s.not_run} | "
                     f"{s.cases_per_second():.2f} | {s.skipped or len(s.findings)} |")
    lines += ["", "## Worst error/bound ratio per component (1.0 = at the bound)", "",
              "| backend | " + " | ".join(COMPONENTS) + " |", "|---" * (len(COMPONENTS) + 1) + "|"]
    for s in all_stats:
        lines.append(f"| {s.name} | " + " | ".join(_fmt_ratio(s.worst.get(c)) for c in COMPONENTS) + " |")
    lines += ["", "## Cases that could tell, per component", "",
              "Share of cases in which an all-zero output and the sign-flipped truth would both have "
              "failed. A component no case could tell is **flagged**: the run did not test it.", "",
              "| backend | " + " | ".join(COMPONENTS) + " |", "|---" * (len(COMPONENTS) + 1) + "|"]
    for s in all_stats:
        sh = discrimination.shares(s)
        lines.append(f"| {s.name} | " + " | ".join(_fmt_share(sh.get(c)) for c in COMPONENTS) + " |")
    stats_lines = [f"- {s.name}: " + format_stats(s.backend_stats) for s in all_stats if s.backend_stats]
    stats_lines += [f"- {name}: warm-up before the budget, " + format_stats(st)
                    for name, st in (meta.get("warm_up") or {}).items()]
    if stats_lines:
        lines += ["", "## Backend statistics (e.g. kernel compiles)", ""] + stats_lines
    for s in all_stats:
        for sig, f in s.findings.items():
            lines += ["", f"### {s.name}: {f.result.kind} ({', '.join(f.result.failing_components()) or '-'})",
                      f"- case: `{f.result.params.short()}`", f"- found after {f.detected_after_s:.1f} s; "
                      f"cases that hit it: {f.hits}",
                      f"- {f.result.message[:400]}", f"- replay: `{_replay_line(f.path)}`"]
    # an interrupted run must exit promptly (a CI runner kills it a few seconds after SIGTERM):
    # no plot, whose matplotlib import and drawing take seconds
    plot = None if meta.get("interrupted") else _plot(out_dir, all_stats)
    if plot:
        lines += ["", "## Distribution of error/bound ratios", "", f"![ratios]({plot.name})"]
    page = out_dir / "summary.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def _plot(out_dir: Path, all_stats, filename: str = "ratios.png"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ran = [s for s in all_stats if s.ratios]
    if not ran:
        return None
    fig, axes = plt.subplots(len(ran), 1, figsize=(11, 3.2 * len(ran)), squeeze=False)
    for ax, s in zip(axes[:, 0], ran):
        comps = [c for c in COMPONENTS if s.ratios.get(c)]
        data = [[max(r, 1e-12) for r in s.ratios[c]] for c in comps]
        ax.boxplot(data, tick_labels=comps, whis=(0, 100))
        ax.set_yscale("log")
        ax.axhline(1.0, color="red", lw=1, ls="--", label="bound")
        ax.set_title(f"{s.name}: error / bound per case ({s.cases} cases)")
        ax.set_ylabel("ratio")
        ax.legend(loc="upper right")
    fig.tight_layout()
    path = out_dir / filename
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
