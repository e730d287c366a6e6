"""tolerances.yaml loads, and a broken one fails with a message naming file, key and problem."""
import pytest

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
    with pytest.raises(tolerances.ToleranceFileError, match="cannot read"):
        tolerances.load(tmp_path / "nope.yaml")


def test_accumulation_factor_is_capped_by_the_worst_case():
    r = tolerances.load().rule("dbias", "bf16")
    small = r.accumulation_factor(dict(T=1, n=1, D=1, F=3))
    assert small == r.roundings + 2          # two sums of one term: worst case L
    big = r.accumulation_factor(dict(T=65536, n=4, D=7168, F=24))
    assert big == pytest.approx(r.roundings + r.lam * (65536 ** 0.5 + 7168 ** 0.5))
