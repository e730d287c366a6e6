"""tolerances.yaml loads, and a broken one fails with a message naming file, key and problem."""
import math

import pytest
import torch
import yaml

from fuzz import tolerances
from fuzz.truth import BACKWARD, FORWARD

GOOD = tolerances.DEFAULT_PATH.read_text()


def test_project_file_has_every_component_and_dtype():
    t = tolerances.load()
    for comp in BACKWARD + FORWARD:
        for dt in ("bf16", "fp16", "fp32"):
            assert t.rule(comp, dt).output_ulps > 0


@pytest.mark.parametrize("mutate, key, problem", [
    (lambda s: s.replace("lambda: 8.0", "lambda: -1"), "lambda", "non-negative"),
    (lambda s: s.replace("lambda: 8.0", "lambda: eight"), "lambda", "must be a number"),
    (lambda s: s.replace("    roundings: 16\n", "", 1), "components.dx.roundings", "missing"),
    (lambda s: s.replace("    roundings: 16\n", "    roundings: 16\n    rounding: 3\n", 1),
     "components.dx.rounding", "unknown key"),
    (lambda s: s.replace("      fp16: {output_ulps: 1.5}\n", "", 1), "components.dx.per_dtype.fp16", "missing"),
    (lambda s: s.replace("sums: [D, F]", "sums: [D, Q]", 1), "components.dx.sums[1]", "not a product"),
    (lambda s: s.replace("  dgamma:\n", "  dgama:\n", 1), "components.dgamma", "missing"),
    (lambda s: s + "extra: 1\n", "extra", "unknown key"),
    (lambda s: s.replace("stored_in: x ", "stored_in: int8 ", 1), "components.dx.stored_in", "must be"),
    (lambda s: s.replace("components:", "components: [", 1), "line", "not valid YAML"),
])
def test_broken_file_is_named(tmp_path, mutate, key, problem):
    bad = mutate(GOOD)
    assert bad != GOOD
    path = tmp_path / "tol.yaml"
    path.write_text(bad)
    with pytest.raises(tolerances.ToleranceFileError) as err:
        tolerances.load(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and problem in msg


def test_missing_file(tmp_path):
    with pytest.raises(tolerances.ToleranceFileError) as err:
        tolerances.load(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"


@pytest.mark.parametrize("text, where", [
    ("version: 1\nlambda: [1,\n  2\ncomponents: {}\n", "line 4: not valid YAML: expected ',' or ']', but got ':'"),
    ("a: b: c\n", "line 1: not valid YAML: mapping values are not allowed here"),
    ("version: 1\n\x07\n", "document: not valid YAML: unacceptable character #x0007"),
])
def test_yaml_syntax_errors_name_the_line(tmp_path, text, where):
    path = tmp_path / "tol.yaml"
    path.write_text(text)
    with pytest.raises(tolerances.ToleranceFileError) as err:
        tolerances.load(path)
    assert str(err.value).startswith(f"{path}: {where}")
    if where.startswith("line"):
        assert str(err.value) == f"{path}: {where}"


def test_accumulation_factor_is_capped_by_the_worst_case():
    r = tolerances.load().rule("dbias", "bf16")
    small = r.accumulation_factor(dict(T=1, n=1, D=1, F=3))
    assert small == r.roundings + 2          # two sums of one term: worst case L
    big = r.accumulation_factor(dict(T=65536, n=4, D=7168, F=24))
    assert big == pytest.approx(r.roundings + r.lam * (65536 ** 0.5 + 7168 ** 0.5))


def _dump(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _set(path, value):
    """A mutation of the parsed file: set (or, with value DELETE, remove) doc[path...]."""
    def mutate(doc):
        *parents, last = path
        for k in parents:
            doc = doc[k]
        if value is DELETE:
            del doc[last]
        else:
            doc[last] = value
    return mutate


DELETE = object()
COMPONENTS = sorted(BACKWARD + FORWARD)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.clear() or d.update({"items": None}), "items: unknown key (expected version, lambda, underflow, "
                                                       "components)"),
    (_set(["version"], 2), "version: must be 1, got 2"),
    (_set(["version"], DELETE), "version: must be 1, got None"),
    (_set(["lambda"], True), "lambda: must be a number, got True"),
    (_set(["lambda"], float("inf")), "lambda: must be a finite non-negative number, got inf"),
    (_set(["underflow"], -1), "underflow: must be a finite non-negative number, got -1"),
    (_set(["components"], 3), "components: missing or not a mapping"),
    (_set(["components", "dgamma"], DELETE), "components.dgamma: missing"),
    (_set(["components", "dfoo"], {}), f"components.dfoo: unknown component (expected one of {COMPONENTS})"),
    (_set(["components", "dx"], 3), "components.dx: must be a mapping"),
    (_set(["components", "dx", "sums"], DELETE), "components.dx.sums: missing"),
    (_set(["components", "dx", "extra"], 1), "components.dx.extra: unknown key (expected ['gemm_operands', "
                                              "'per_dtype', 'roundings', 'stored_in', 'sums'])"),
    (_set(["components", "dx", "stored_in"], "int8"), "components.dx.stored_in: must be 'x', 'fp32' or 'fp64', "
                                                      "got 'int8'"),
    (_set(["components", "dx", "sums"], "D"), "components.dx.sums: must be a non-empty list of length "
                                              "expressions over T, n, D, F"),
    (_set(["components", "dx", "sums"], []), "components.dx.sums: must be a non-empty list of length "
                                             "expressions over T, n, D, F"),
    (_set(["components", "dx", "sums"], ["D", "F+1"]), "components.dx.sums[1]: 'F+1' is not a product of T, n, "
                                                       "D, F and integers"),
    (_set(["components", "dx", "roundings"], "x"), "components.dx.roundings: must be a number, got 'x'"),
    (_set(["components", "dx", "gemm_operands"], -1), "components.dx.gemm_operands: must be a finite "
                                                      "non-negative number, got -1"),
    (_set(["components", "dx", "per_dtype"], []), "components.dx.per_dtype: must be a mapping of x dtype to "
                                                  "settings"),
    (_set(["components", "dx", "per_dtype", "fp16"], DELETE), "components.dx.per_dtype.fp16: missing"),
    (_set(["components", "dx", "per_dtype", "int8"], {"output_ulps": 1}),
     "components.dx.per_dtype.int8: unknown x dtype (expected ['bf16', 'fp16', 'fp32'])"),
    (_set(["components", "dx", "per_dtype", "bf16"], 1.5), "components.dx.per_dtype.bf16: must be a mapping"),
    (_set(["components", "dx", "per_dtype", "bf16"], {}), "components.dx.per_dtype.bf16.output_ulps: missing"),
    (_set(["components", "dx", "per_dtype", "bf16", "x"], 1), "components.dx.per_dtype.bf16.x: unknown key "
                                                               "(expected ['output_ulps'])"),
    (_set(["components", "dx", "per_dtype", "bf16", "output_ulps"], "1.5"),
     "components.dx.per_dtype.bf16.output_ulps: must be a number, got '1.5'"),
])
def test_each_problem_is_one_exact_message(tmp_path, mutate, message):
    doc = yaml.safe_load(GOOD)
    mutate(doc)
    path = tmp_path / "tol.yaml"
    path.write_text(_dump(doc))
    with pytest.raises(tolerances.ToleranceFileError) as err:
        tolerances.load(path)
    assert str(err.value) == f"{path}: {message}"


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "tol.yaml"
    path.write_text("- 1\n")
    with pytest.raises(tolerances.ToleranceFileError) as err:
        tolerances.load(path)
    assert str(err.value) == f"{path}: (top level): must be a mapping with keys version, lambda, components"


def test_rules_hold_the_file_values(tmp_path):
    doc = yaml.safe_load(GOOD)
    doc["components"]["dgamma"]["stored_in"] = "fp64"
    path = tmp_path / "tol.yaml"
    path.write_text(_dump(doc))
    t = tolerances.load(str(path))
    assert t.path == str(path) and len(t.rules) == 3 * len(COMPONENTS)
    for name, e in doc["components"].items():
        for dt, d in e["per_dtype"].items():
            assert t.rule(name, dt) == tolerances.Rule(name, dt, e["stored_in"], tuple(e["sums"]), e["roundings"],
                                                       e["gemm_operands"], d["output_ulps"], doc["lambda"],
                                                       doc["underflow"])
    assert tolerances.load().path == str(tolerances.DEFAULT_PATH)


RULE = tolerances.Rule("dx", "bf16", "x", ("D", "T*F"), roundings=3.0, gemm_operands=2.0, output_ulps=1.5, lam=2.0,
                       underflow=1e-30)


def test_rule_output_format():
    assert RULE.out_format() == "bf16"
    assert tolerances.Rule("dx", "fp16", "fp32", ("D",), 1, 1, 1, 1).out_format() == "fp32"


def test_accumulation_factor_known_answers():
    # lengths D=4, T*F=6: lambda*(sqrt(4) + sqrt(6)) + 3 = 11.90 < worst case 3 + 4 + 6 = 13
    assert RULE.accumulation_factor(dict(T=2, n=1, D=4, F=3)) == 3.0 + 2.0 * (2.0 + math.sqrt(6))
    # lengths 1, 1: the worst case 3 + 2 = 5 is below 3 + 2*(1 + 1) = 7
    assert RULE.accumulation_factor(dict(T=1, n=1, D=1, F=1)) == 5.0
    # a length of 0 counts as 1
    assert RULE.accumulation_factor(dict(T=0, n=1, D=1, F=1)) == 5.0


def test_bound_is_the_documented_formula():
    """tolerances.yaml's header:
    tol = M*(u_acc*k_acc + gemm_operands*u_gemm) + 2*output_ulps*u_out*max(|t|, tiny) + underflow."""
    truth = torch.tensor([-2.0, 0.0, 1e-300], dtype=torch.float64)
    mag = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    dims = dict(T=2, n=1, D=4, F=3)
    u_acc, u_gemm, u_bf16 = 2.0 ** -24, 2.0 ** -11, 2.0 ** -8
    k = 3.0 + 2.0 * (2.0 + math.sqrt(6))
    tiny = torch.finfo(torch.bfloat16).tiny
    expected = [m * (u_acc * k + 2.0 * u_gemm) + 2 * 1.5 * u_bf16 * max(abs(t), tiny) + 1e-30
                for m, t in zip(mag.tolist(), truth.tolist())]
    got = RULE.bound(truth, mag, dims, u_acc, u_gemm)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("expr, value", [("D", 4), ("T*F", 6), ("2*n*D", 8), ("3", 3)])
def test_length_expressions(expr, value):
    assert tolerances.eval_length(expr, dict(T=2, n=1, D=4, F=3)) == value


@pytest.mark.parametrize("expr", ["T+F", "1.5*T", "Q", "T/F", "-T"])
def test_length_expressions_that_are_not_products(expr):
    with pytest.raises(ValueError) as err:
        tolerances.eval_length(expr, dict(T=2, n=1, D=4, F=3))
    assert str(err.value) == expr
