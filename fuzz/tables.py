"""Tables that stay readable at any width.

Output that is not a terminal (every CI log) is 80 columns wide, where a table of ten
columns is cut to "back…", "sour…". A FitTable picks its layout when it is printed: the
full table where it fits, else a narrow one: each row's key columns on one line, its other
columns as "label: value" details below it (empty ones left out), wrapped and indented."""
from __future__ import annotations

from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


class FitTable:
    def __init__(self, title: str, columns, keep=1, right=()):
        """columns: names, in order; keep: how many leading columns stay on a row's first
        line in the narrow layout; right: names of right-justified columns."""
        self.title, self.columns, self.keep, self.right = title, list(columns), keep, set(right)
        self.rows = []

    def add_row(self, *cells):
        self.rows.append([str(c) for c in cells])

    def wide(self) -> Table:
        t = Table(title=self.title)
        for col in self.columns:
            t.add_column(col, justify="right" if col in self.right else "left")
        for row in self.rows:
            t.add_row(*row)
        return t

    def narrow(self, console, width: int) -> Group:
        parts = [Text(self.title, style="italic")]
        for row in self.rows:
            head = Text.from_markup("  ".join(c for c in row[:self.keep] if c))
            head.stylize("bold", 0, len(Text.from_markup(row[0]).plain))
            parts.append(head)
            detail = Text.from_markup("; ".join(f"{col}: {cell}" for col, cell in
                                                zip(self.columns[self.keep:], row[self.keep:]) if cell not in ("", "-")))
            for line in detail.wrap(console, max(20, width - 4)) if detail.plain else ():
                line.rstrip()
                parts.append(Text("    ") + line)
        return Group(*parts)

    def __rich_console__(self, console, options):
        table = self.wide()
        natural = Measurement.get(console, options.update_width(1 << 20), table).maximum
        yield table if natural <= options.max_width else self.narrow(console, options.max_width)
