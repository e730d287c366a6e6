"""Load and validate tolerances.yaml, and turn an entry into a per-element bound.

The formula and the derivation of every constant are written in tolerances.yaml itself."""
from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from fuzz.precision import UNIT_ROUNDOFF, smallest_normal
from impls.schema import BACKWARD_OUTPUTS as BACKWARD, FORWARD_OUTPUTS as FORWARD, X_DTYPES

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "tolerances.yaml"
LENGTH_SYMBOLS = ("T", "n", "D", "F")
COMPONENT_KEYS = {"stored_in", "sums", "roundings", "gemm_operands", "per_dtype"}
DTYPE_KEYS = {"output_ulps"}


class ToleranceFileError(ValueError):
    """tolerances.yaml is malformed; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Rule:
    component: str
    x_dtype: str
    stored_in: str          # "x" or a format name
    sums: tuple[str, ...]   # length expressions over T, n, D, F
    roundings: float
    gemm_operands: float
    output_ulps: float
    lam: float
    underflow: float = 0.0

    def out_format(self) -> str:
        return self.x_dtype if self.stored_in == "x" else self.stored_in

    def accumulation_factor(self, dims: dict) -> float:
        """k_acc: probabilistic bound capped by the worst case (see tolerances.yaml)."""
        lengths = [max(1, eval_length(expr, dims)) for expr in self.sums]
        probabilistic = self.roundings + self.lam * sum(math.sqrt(L) for L in lengths)
        worst = self.roundings + sum(lengths)
        return min(probabilistic, worst)

    def bound(self, truth: torch.Tensor, magnitude: torch.Tensor, dims: dict,
              u_acc: float, u_gemm: float) -> torch.Tensor:
        out = self.out_format()
        k_acc = self.accumulation_factor(dims)
        floor = smallest_normal(out)
        return (magnitude * (u_acc * k_acc + self.gemm_operands * u_gemm)
                + 2 * self.output_ulps * UNIT_ROUNDOFF[out] * truth.abs().clamp_min(floor)
                + self.underflow)


def eval_length(expr: str, dims: dict) -> int:
    """Evaluate a length expression like 'T*F' or 'n*D' (products of symbols and ints)."""
    value = 1
    for factor in _factors(expr):
        value *= factor if isinstance(factor, int) else int(dims[factor])
    return value


@functools.lru_cache(maxsize=None)
def _factors(expr: str) -> tuple:
    """The factors of a length expression, symbols as names (parsed once: bounds are computed
    for every component of every case)."""
    node = ast.parse(expr, mode="eval").body

    def walk(nd):
        if isinstance(nd, ast.BinOp) and isinstance(nd.op, ast.Mult):
            return walk(nd.left) + walk(nd.right)
        if isinstance(nd, ast.Name) and nd.id in LENGTH_SYMBOLS:
            return (nd.id,)
        if isinstance(nd, ast.Constant) and isinstance(nd.value, int) and not isinstance(nd.value, bool):
            return (nd.value,)
        raise ValueError(expr)
    return walk(node)


@dataclass(frozen=True)
class Tolerances:
    path: str
    rules: dict   # (component, x_dtype) -> Rule

    def rule(self, component: str, x_dtype: str) -> Rule:
        return self.rules[(component, x_dtype)]


def load(path: str | Path | None = None) -> Tolerances:
    path = Path(path) if path else DEFAULT_PATH
    where = str(path)

    def fail(key, problem):
        raise ToleranceFileError(f"{where}: {key}: {problem}")

    try:
        text = path.read_text()
    except OSError as exc:
        raise ToleranceFileError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark else "document"
        raise ToleranceFileError(f"{where}: {at}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(doc, dict):
        fail("(top level)", "must be a mapping with keys version, lambda, components")
    unknown = set(doc) - {"version", "lambda", "underflow", "components"}
    if unknown:
        fail(sorted(unknown)[0], "unknown key (expected version, lambda, underflow, components)")
    if doc.get("version") != 1:
        fail("version", f"must be 1, got {doc.get('version')!r}")
    lam = _number(doc.get("lambda"), "lambda", fail)
    underflow = _number(doc.get("underflow"), "underflow", fail)
    comps = doc.get("components")
    if not isinstance(comps, dict):
        fail("components", "missing or not a mapping")
    expected = set(BACKWARD) | set(FORWARD)
    for name in sorted(expected - set(comps)):
        fail(f"components.{name}", "missing")
    for name in sorted(set(comps) - expected):
        fail(f"components.{name}", f"unknown component (expected one of {sorted(expected)})")
    rules = {}
    for name, entry in comps.items():
        key = f"components.{name}"
        if not isinstance(entry, dict):
            fail(key, "must be a mapping")
        for k in sorted(COMPONENT_KEYS - set(entry)):
            fail(f"{key}.{k}", "missing")
        for k in sorted(set(entry) - COMPONENT_KEYS):
            fail(f"{key}.{k}", f"unknown key (expected {sorted(COMPONENT_KEYS)})")
        stored = entry["stored_in"]
        if stored != "x" and stored not in ("fp32", "fp64"):
            fail(f"{key}.stored_in", f"must be 'x', 'fp32' or 'fp64', got {stored!r}")
        sums = entry["sums"]
        if not isinstance(sums, list) or not sums:
            fail(f"{key}.sums", "must be a non-empty list of length expressions over T, n, D, F")
        for i, expr in enumerate(sums):
            try:
                eval_length(str(expr), dict.fromkeys(LENGTH_SYMBOLS, 2))
            except (ValueError, SyntaxError):
                fail(f"{key}.sums[{i}]", f"{expr!r} is not a product of T, n, D, F and integers")
        roundings = _number(entry["roundings"], f"{key}.roundings", fail)
        gemm = _number(entry["gemm_operands"], f"{key}.gemm_operands", fail)
        per = entry["per_dtype"]
        if not isinstance(per, dict):
            fail(f"{key}.per_dtype", "must be a mapping of x dtype to settings")
        for dt in X_DTYPES:
            if dt not in per:
                fail(f"{key}.per_dtype.{dt}", "missing")
        for dt in per:
            if dt not in X_DTYPES:
                fail(f"{key}.per_dtype.{dt}", f"unknown x dtype (expected {list(X_DTYPES)})")
            d = per[dt]
            if not isinstance(d, dict):
                fail(f"{key}.per_dtype.{dt}", "must be a mapping")
            for k in sorted(DTYPE_KEYS - set(d)):
                fail(f"{key}.per_dtype.{dt}.{k}", "missing")
            for k in sorted(set(d) - DTYPE_KEYS):
                fail(f"{key}.per_dtype.{dt}.{k}", f"unknown key (expected {sorted(DTYPE_KEYS)})")
            ulps = _number(d["output_ulps"], f"{key}.per_dtype.{dt}.output_ulps", fail)
            rules[(name, dt)] = Rule(name, dt, stored, tuple(str(s) for s in sums), roundings, gemm, ulps, lam,
                                     underflow)
    return Tolerances(where, rules)


def _number(value, key, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(key, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        fail(key, f"must be a finite non-negative number, got {value!r}")
    return float(value)
