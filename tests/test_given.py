"""Given tensors: judged with the same checks and verdicts as a generated case, against the
truth of the saved activations as given; saved activations that are not the forward of the
inputs are reported as that, not as a failure of the backward."""
import json

import pytest
import torch

import tests.mutants as M
from fuzz import tolerances as tolmod
from fuzz.cases import CaseParams, make_inputs
from fuzz.check import run_case
from fuzz.cli import main
from fuzz.given import GivenTensorsError, describe, judge
from fuzz.precision import UNIT_ROUNDOFF
from fuzz.truth import magnitudes, truth, truth_from_saved
from impls.golden_backend import backend as golden
from impls.schema import BACKWARD_ARGS, BACKWARD_OUTPUTS


def tensors_of(params: CaseParams) -> dict:
    inp = make_inputs(params)
    return {k: getattr(inp, k).contiguous() for k in BACKWARD_ARGS if getattr(inp, k) is not None}


@pytest.mark.parametrize("params", [
    CaseParams(2, 3, 4, 33, "bf16", seed=1),
    CaseParams(1, 5, 2, 17, "fp16", seed=2, use_gamma=False, x_scale=2.0, grad_scale=-2.0),
    CaseParams(1, 4, 3, 8, "fp32", seed=3, bias_shift=12.0, alpha=(2.0, -1.0, 0.5)),      # saturated sigmoids
    CaseParams(2, 2, 4, 64, "bf16", seed=4, bias_shift=-30.0, x_scale=-3.0, zero_tokens=1, outliers=3),
])
def test_truth_from_saved_activations_agrees_with_autograd_on_generated_cases(params):
    """The generated-case truth (autograd through the float64 forward) and the given-tensor
    truth (the SPEC steps on the saved fp32 activations) differ by a small part of every bound."""
    inp = make_inputs(params)
    a, b, m = truth(inp), truth_from_saved(inp), magnitudes(inp)
    tols = tolmod.load()
    for k in BACKWARD_OUTPUTS:
        bound = tols.rule(k, params.x_dtype).bound(a[k], m[k], params.dims(), UNIT_ROUNDOFF["fp32"],
                                                   UNIT_ROUNDOFF["fp32"])
        assert float(((a[k] - b[k]).abs() / bound).max()) < 0.05, k


def test_given_tensors_get_the_verdicts_of_the_generated_case():
    params = CaseParams(1, 3, 2, 5, seed=7)
    j = judge(tensors_of(params), backends=[M.stream0_only, golden], device="cpu")
    ref = run_case(M.stream0_only, params, "cpu")
    got = j.results["stream0_only"]
    assert (got.kind, got.failing_components()) == (ref.kind, ref.failing_components()) == ("tolerance", ["dx"])
    assert got.verdicts[0].worst_index == ref.verdicts[0].worst_index
    assert j.results["golden"].status == "pass" and j.consistent and j.failed


def _saved_without_gamma(params):
    """Activations from a forward without gamma, handed to a backward that is given gamma."""
    t = tensors_of(params)
    other = tensors_of(CaseParams(**{**params.to_dict(), "alpha": params.alpha, "use_gamma": False}))
    t.update({k: other[k] for k in ("inv_rms", "h_mix", "h_pre", "h_post")})
    return t


def test_activations_from_another_forward_are_an_upstream_problem_not_a_kernel_failure():
    j = judge(_saved_without_gamma(CaseParams(1, 3, 4, 16, seed=1, gamma_scale=1.0)), backends=["golden", "triton"],
              device="cpu")
    assert all(r.status == "pass" for r in j.results.values()), {k: r.message for k, r in j.results.items()}
    assert not j.consistent and j.failed
    bad = {a.name: a for a in j.activations if not a.consistent}
    assert "h_mix" in bad and bad["h_mix"].max_rel > 0.5 and bad["h_mix"].worst_ratio > 10
    assert "were the activations saved from a forward without gamma?" in bad["h_mix"].line()


def test_check_command_on_saved_tensors(tmp_path, capsys):
    from safetensors.torch import save_file
    good = tmp_path / "step.pt"
    torch.save(tensors_of(CaseParams(1, 3, 2, 5, seed=7)), good)
    assert main(["check", str(good), "--backend", "golden,stream0_only", "--plugin", "tests.mutants:stream0_only",
                 "--in-process", "--device", "cpu", "--json", str(tmp_path / "v.json")]) == 1
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL (tolerance)" in out and "DIFFERS" not in out
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["consistent"] and doc["results"]["stream0_only"]["kind"] == "tolerance"
    upstream = tmp_path / "upstream.safetensors"
    save_file(_saved_without_gamma(CaseParams(1, 4, 2, 16, seed=3, gamma_scale=1.0)), str(upstream))
    assert main(["check", str(upstream), "--backend", "golden", "--in-process", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "forward without gamma" in out and "PASS" in out


def test_check_runs_backends_in_a_worker_by_default(tmp_path, capsys):
    f = tmp_path / "t.pt"
    torch.save(tensors_of(CaseParams(1, 2, 1, 3)), f)
    assert main(["check", str(f), "--backend", "segfaults", "--plugin", "tests.mutants:segfaults",
                 "--device", "cpu"]) == 1
    assert "FAIL (crash) worker killed by signal SIGSEGV" in capsys.readouterr().out


class _Evil:
    def __reduce__(self):
        import os
        return os.system, ("touch EVIL_MARKER",)


@pytest.mark.parametrize("content, message", [
    (lambda t: {k: v for k, v in t.items() if k != "dh_res"}, "missing dh_res"),
    (lambda t: dict(t, phi=t["phi"][:, :-1]), "phi has shape"),
    (lambda t: dict(t, h_mix=t["h_mix"].double()), "h_mix has dtype torch.float64"),
    (lambda t: dict(t, x=t["x"][0]), "x must be a non-empty [B,S,n,D] tensor"),
    (lambda t: [t["x"]], "expected a dict"),
    (lambda t: {"x": _Evil()}, "cannot load tensors"),
])
def test_bad_tensor_files_are_one_line_exit_2(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "bad.pt"
    torch.save(content(tensors_of(CaseParams(1, 2, 2, 3))), f)
    assert main(["check", str(f), "--backend", "golden", "--in-process", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "EVIL_MARKER").exists()       # weights_only: the pickle's code never runs


def test_describe_names_the_case_and_checks_its_size_before_loading():
    from fuzz.given import _Shape
    from impls.schema import X_DTYPE_ARGS, input_shapes
    p = describe(tensors_of(CaseParams(2, 3, 4, 8, "fp16", use_gamma=False)))
    assert (p.B, p.S, p.n, p.D, p.x_dtype, p.use_gamma) == (2, 3, 4, 8, "fp16", False)
    # a safetensors header's shapes, nothing loaded: 4096x4096 tokens, n=4, D=8192 cannot fit
    header = {k: _Shape(list(s), "BF16" if k in X_DTYPE_ARGS else "F32")
              for k, s in input_shapes(4096, 4096, 4, 8192).items()}
    assert describe(header).T == 4096 * 4096
    with pytest.raises(GivenTensorsError, match="needs about .* to check on cpu"):
        describe(header, device="cpu")
