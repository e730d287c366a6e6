"""Could a case tell? Per component, how many of a run's cases would have failed an all-zero
output and the sign-flipped truth (fuzz/compare.py: Verdict.discriminates).

A case whose truth is zero, or tiny next to its bound, passes any output that was never
computed; a run in which a component never discriminated has not tested that component at
all. The tally lives on the backend's run statistics; `score` is what the search climbs on
(fuzz/engine.py: target label "discrimination"), so that it steers toward cases that can tell."""
from __future__ import annotations

SCORE_CAP = 4.0      # an all-zero output 4 bounds away is discrimination enough: stop climbing there


def observe(stats, res) -> float:
    """Add one case's verdicts to stats.discrimination ({component: [cases, discriminating]})
    and return its score: the smallest over components of how far an all-zero output would
    land outside its bound (capped), 0 when the case has no verdicts."""
    tally = stats.discrimination
    judged = [v for v in res.verdicts if not v.problem]
    for v in judged:
        counts = tally.setdefault(v.component, [0, 0])
        counts[0] += 1
        counts[1] += bool(v.discriminates)
    return min((min(v.zero_ratio, SCORE_CAP) if v.discriminates else 0.0 for v in judged), default=0.0)


def shares(stats) -> dict:
    """{component: {"cases", "discriminating", "share"}} of one backend's run."""
    out = {}
    for comp, (cases, good) in stats.discrimination.items():
        out[comp] = {"cases": cases, "discriminating": good, "share": good / cases if cases else 0.0}
    return out


def never(stats) -> list:
    """Components judged in at least one case of the run that no case could tell apart from zero."""
    return sorted(c for c, d in shares(stats).items() if d["cases"] and not d["discriminating"])
