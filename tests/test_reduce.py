"""Reduction: a real failing case shrinks to a small failing subset, written as a report whose
tensors are stored beside it, which replays like any other report."""
import json

import torch

import tests.mutants as M
from fuzz.cases import CaseParams, make_inputs
from fuzz.check import run_case
from fuzz.cli import main
from fuzz.reduce import ddmin
from fuzz.reports import build_report, iter_reports, load_report, tensors_path, write_report
from impls.schema import BACKWARD_ARGS


def test_ddmin_finds_a_one_minimal_subset():
    tested = []

    def fails(items):
        tested.append(items)
        return {3, 7} <= set(items)
    assert ddmin(list(range(16)), fails, lambda: True) == [3, 7]
    assert len(tested) < 40
    assert ddmin(list(range(16)), fails, lambda: len(tested) < 45) == [3, 7]


def _report(tmp_path, mutant, params):
    res = run_case(mutant, params, "cpu")
    assert res.failed
    path, _ = write_report(build_report(res, plugins=[f"tests.mutants:{mutant.name}"], env={}), tmp_path / "found")
    return path


def test_a_generated_report_reduces_to_the_smallest_case_that_still_fails(tmp_path, capsys):
    # rare_bug: dx is wrong only when T >= 5 and D >= 9: the reduction must stop at exactly that
    found = _report(tmp_path, M.rare_bug, CaseParams(2, 4, 2, 12, seed=3, layout="strided"))
    rc = main(["reduce", str(found), "--plugin", "tests.mutants:rare_bug", "--in-process", "--device", "cpu",
               "--reports", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    assert rc == 1, out
    (path,) = iter_reports(tmp_path / "reports")
    rep = load_report(path)
    p = rep["params"]
    assert (p["B"] * p["S"], p["n"], p["D"], p["layout"]) == (5, 2, 9, "strided"), p
    assert rep["kind"] == "tolerance" and rep["failing_components"] == ["dx"]
    assert rep["reduced_from"]["elements"] == 2 * 4 * 2 * 12 and "reduced 8 tokens, D=12" in out
    stored = tensors_path(path, rep)
    assert stored.suffix == ".safetensors" and stored.parent == path.parent
    from safetensors.torch import load_file
    t = load_file(str(stored))
    assert t["x"].shape == (1, 5, 2, 9) and not t["dh_post"].any()     # gradients it does not need: zero
    # it replays like any other report: in this process and in a worker, with the same verdict
    for how in (["--in-process"], []):
        assert main(["replay", str(path), "--plugin", "tests.mutants:rare_bug", *how]) == 1
        assert "FAIL (tolerance)" in capsys.readouterr().out
    assert main(["replay", str(path), "--backend", "golden", "--in-process"]) == 0


def test_given_tensors_with_foreign_activations_reduce_over_tokens_only(tmp_path, capsys):
    """Activations that are not the forward of the inputs cannot be recomputed for fewer
    columns: the reduction keeps D and gamma, and drops tokens (each token's own)."""
    params = CaseParams(2, 4, 2, 6, seed=1)
    inp = make_inputs(params)
    t = {k: getattr(inp, k).contiguous() for k in BACKWARD_ARGS}
    t["h_mix"] = t["h_mix"] * 1.5                 # an upstream bug in the forward
    f = tmp_path / "step.pt"
    torch.save(t, f)
    assert main(["reduce", str(f), "--backend", "stream0_only", "--plugin", "tests.mutants:stream0_only",
                 "--in-process", "--device", "cpu", "--reports", str(tmp_path / "reports")]) == 1
    out = capsys.readouterr().out
    assert "tokens only" in out
    (path,) = iter_reports(tmp_path / "reports")
    p = load_report(path)["params"]
    assert (p["B"], p["S"], p["n"], p["D"], p["use_gamma"]) == (1, 1, 2, 6, True), p


def test_a_case_that_passes_has_nothing_to_reduce(tmp_path, capsys):
    found = _report(tmp_path, M.stream0_only, CaseParams(1, 2, 2, 3))
    assert main(["reduce", str(found), "--backend", "golden", "--in-process", "--device", "cpu",
                 "--reports", str(tmp_path / "reports")]) == 0
    assert "nothing to reduce" in capsys.readouterr().out and not iter_reports(tmp_path / "reports")


def test_a_tensor_backed_report_replaced_by_a_smaller_case_leaves_no_orphan_tensors(tmp_path):
    big = run_case(M.stream0_only, CaseParams(1, 3, 2, 5), "cpu")
    inp = make_inputs(big.params)
    path, written = write_report(build_report(big, env={}), tmp_path,
                                 tensors={k: getattr(inp, k) for k in BACKWARD_ARGS})
    first = tensors_path(path, load_report(path))
    assert written and first.exists()
    small = run_case(M.stream0_only, CaseParams(1, 1, 2, 1), "cpu")
    assert small.signature() == big.signature()
    path2, written = write_report(build_report(small, env={}), tmp_path)
    assert path2 == path and written and not first.exists() and "tensors" not in json.loads(path.read_text())
