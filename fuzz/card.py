"""The onboarding report card for people: a table in a terminal, plain lines of at most 80
columns where the output is not a terminal (CI logs cut longer lines), and a Markdown page
for a pull request with a plot of the error/bound ratios.

A card (built by fuzz/onboard.py) is a dict: backend, target, device, passed, declared
{field: text}, checks [{check, ok, detail}], findings [{checks, kind, components,
case, message, report, replay}], speed (fuzz/speed.py's section), and "_plot" (the statistics to
draw, not written to JSON)."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from fuzz import speed as speedmod

WIDTH = 80


# ---------------------------------------------------------------- what was declared
def declared(caps) -> dict:
    """Every Capabilities field that differs from its default, as text: what the backend
    declared. Built from the dataclass's fields, so a new field shows up without changes here."""
    described = caps.describe()
    out = {}
    for f in dataclasses.fields(caps):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING     # a field without a default is always declared
        value = getattr(caps, f.name)
        if default is dataclasses.MISSING or value != default:
            out[f.name] = value_text(described.get(f.name, value) if isinstance(described, dict) else value)
    return out


def value_text(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={value_text(x)}" for k, x in v.items())
    if isinstance(v, (tuple, list, set, frozenset)):
        return ", ".join(value_text(x) for x in v)
    return str(v)


# ---------------------------------------------------------------- plain lines (CI logs)
def _wrapped(text: str, indent: int, width: int) -> list:
    pad = " " * indent
    return textwrap.wrap(text, width, initial_indent=pad, subsequent_indent=pad,
                         break_long_words=False, break_on_hyphens=False) or [pad.rstrip()]


def title(card) -> str:
    where = card.get("gpu") or card.get("device") or "?"
    return f"onboarding report card: {card.get('backend') or card.get('target')} ({where})"


def plain_lines(card, width: int = WIDTH) -> list:
    """The whole card as lines of at most `width` columns (a path or command longer than that
    stays whole on its own line)."""
    lines = [title(card)]
    if card.get("declared"):
        lines.append("declared:")
        for k, v in card["declared"].items():
            lines += _wrapped(f"{k}: {v}", 2, width)
    lines.append("checks:")
    for c in card["checks"]:
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['check']}")
        if c["detail"]:
            lines += _wrapped(c["detail"], 8, width)
    if card.get("findings"):
        lines.append("findings:")
        for f in card["findings"]:
            lines += _wrapped(f"{f['kind']} ({', '.join(f['components']) or '-'}) at {f['case']}, found by: "
                              + ", ".join(f["checks"]), 2, width)
            lines += _wrapped(f["message"], 6, width)
            if f.get("replay"):
                lines += _wrapped("replay: " + f["replay"], 6, width)
    sec = card.get("speed")
    if sec and sec.get("measured"):
        lines += _wrapped(f"speed {speedmod.where(sec)}:", 0, width)
        for shape in sec["shapes"]:
            lines.append(f"  {speedmod.shape_title(shape)}")
            rows = [("", "ms", "x roofline", f"{sec['backend']} vs it")] + speedmod.rows(sec, shape)
            w0 = max(len(r[0]) for r in rows)
            for label, ms, roof, vs in rows:
                if roof or vs or label == "":
                    lines.append(f"    {label:<{w0}} {ms:>9} {roof:>10}  {vs}".rstrip())
                else:                       # refused or raised: the reason, wrapped
                    lines.append(f"    {label}")
                    lines += _wrapped(ms, 6, width)
    lines.append("onboarding passed" if card["passed"] else "onboarding FAILED")
    return lines


# ---------------------------------------------------------------- terminal
def print_card(console, card) -> None:
    """A rich table in a terminal; the plain 80-column lines anywhere else (CI logs, files)."""
    if not console.is_terminal:
        for line in plain_lines(card):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    from rich.table import Table
    t = Table(title=title(card))
    for col in ("check", "result", "detail"):
        t.add_column(col)
    for c in card["checks"]:
        t.add_row(c["check"], "[green]PASS[/]" if c["ok"] else "[red]FAIL[/]", c["detail"])
    console.print(t)
    if card.get("declared"):
        console.print("declared: " + "; ".join(f"{k} {v}" for k, v in card["declared"].items()), markup=False)
    for f in card.get("findings") or []:
        console.print(f"[red]{f['kind']}[/] ({', '.join(f['components']) or '-'}) at {f['case']}, found by "
                      f"{', '.join(f['checks'])}: {f['message']}", highlight=False)
        if f.get("replay"):
            console.print(f"  replay: {f['replay']}", markup=False, highlight=False)
    sec = card.get("speed")
    if sec and sec.get("measured"):
        for shape in sec["shapes"]:
            st = Table(title=f"speed on {sec['device']}: {speedmod.shape_title(shape)}")
            for col in ("", "ms", "x roofline", f"{sec['backend']} vs it"):
                st.add_column(col, justify="left" if not col or col.endswith("vs it") else "right")
            for r in speedmod.rows(sec, shape):
                st.add_row(*r)
            console.print(st)
    console.print("[green]onboarding passed[/]" if card["passed"] else "[red]onboarding failed[/]")


# ---------------------------------------------------------------- Markdown
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(card, path) -> Path:
    """The card as a Markdown page for a pull request; the plot of error/bound ratios beside
    it (`<name>-ratios.png`) when matplotlib is installed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    verdict = "passed" if card["passed"] else "FAILED"
    lines = [f"# Onboarding report card: `{card.get('backend') or card.get('target')}`", "",
             f"**{verdict}** on {card.get('gpu') or card.get('device')}"
             + (f" · `{card['command']}`" if card.get("command") else ""), ""]
    if card.get("declared"):
        lines += ["## Declared", "", "| capability | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in card["declared"].items()]
        lines.append("")
    lines += ["## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'PASS' if c['ok'] else '**FAIL**'} | {_cell(c['detail'])} |" for c in card["checks"]]
    if card.get("findings"):
        lines += ["", "## Findings"]
        for f in card["findings"]:
            lines += ["", f"### {f['kind']} ({', '.join(f['components']) or '-'})", "",
                      f"- found by: {', '.join(f['checks'])}", f"- case: `{f['case']}`", f"- {_cell(f['message'])}"]
            if f.get("replay"):
                lines.append(f"- replay: `{f['replay']}`")
    sec = card.get("speed")
    lines += ["", "## Speed", ""]
    if sec and sec.get("measured"):
        lines += ["Timed " + _cell(speedmod.where(sec)) + "."]
        for shape in sec["shapes"]:
            lines += ["", f"### {speedmod.shape_title(shape)}", "",
                      f"| | ms | x roofline | {sec['backend']} vs it |", "|---|---:|---:|---|"]
            lines += ["| " + " | ".join(_cell(x) for x in r) + " |" for r in speedmod.rows(sec, shape)]
    else:
        lines.append(_cell((sec or {}).get("why", "not measured")) + ".")
    plot = _plot(card, path)
    if plot:
        lines += ["", "## Error/bound ratios", "", "Every case's worst error/bound per output (1.0 = at the bound).",
                  "", f"![error/bound ratios]({plot.name})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(card, page: Path):
    from fuzz.summary import _plot as draw
    stats = [s for s in card.get("_plot") or [] if s.ratios]
    if not stats:
        return None
    return draw(page.parent, stats, f"{page.stem}-ratios.png")
