"""The harness's power: every planted bug is killed, each misbehaviour gets its own kind."""
import json
import os
import subprocess
import sys

from conftest import ROOT
import tests.mutants as M


def test_every_mutant_is_killed_with_its_expected_kind(tmp_path):
    out = tmp_path / "kill.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "mutants", "--device", "cpu", "--budget", "20s",
                        "--reports", tmp_path / "reports", "--json", out],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    print(r.stdout[-6000:])
    rows = json.loads(out.read_text())["mutants"]
    assert {row["mutant"] for row in rows} == {cls.name for cls in M.ALL}
    survived = [row["mutant"] for row in rows if not row["killed"] and not row["skipped"]]
    assert not survived and r.returncode == 0, survived
    # only what cannot show on the CPU is skipped here, and the table says why
    skipped = {row["mutant"]: row["skipped"] for row in rows if row["skipped"]}
    assert set(skipped) == {"int32_offset_wrap"} and "large tier" in skipped["int32_offset_wrap"], skipped
    killed = [row for row in rows if row["killed"]]
    wrong_kind = [(row["mutant"], row["kinds"], row["expected_kind"]) for row in killed
                  if not row["expected_kind_found"]]
    assert not wrong_kind
    # nothing is lost: every kill left a complete report that names its kind
    from fuzz.reports import load_report
    for row in killed:
        rep = load_report(row["report"])
        assert rep["backend"] == row["mutant"] and rep["kind"] in row["kinds"]
    slow = [(row["mutant"], row["seconds_to_first_failure"]) for row in killed if row["seconds_to_first_failure"] > 15]
    assert not slow, slow
