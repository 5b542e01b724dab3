"""The reliability campaign (`vlmrl doctor`) as a suite: every case must end REJECTED (a
clear reason) or HANDLED (done right); a crash or a silent loss fails its own test.

The full campaign (3 kills of each kind, every slow case) is `vlmrl doctor`; here the fast
cases run one test each and the kills run once each (`--quick`).
"""

import json

import pytest

from vlmrl.doctor.campaign import Outcome, Result, Tally, expect_rejection, run_campaign, run_case
from vlmrl.doctor.run import all_cases

FAST = [c for c in all_cases(quick=True) if c.area != "kills"]


def test_every_area_has_cases():
    areas = {c.area for c in all_cases(quick=True)}
    assert len(FAST) >= 100, len(FAST)
    assert {"kills", "rewards"} <= areas and len(areas) >= 6, areas


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_case(case, tmp_path):
    report = run_case(case, tmp_path)
    assert report.result.outcome.good, f"{report.result.outcome.value}: {report.result.detail}"


def test_kills_leave_nothing_corrupt_and_lose_at_most_one_save_interval(tmp_path):
    tally = run_campaign(all_cases(quick=True, areas=("kills",)), tmp_path)
    print(tally.table())
    assert tally.ok, [(r.case.name, r.result.outcome.value, r.result.detail) for r in tally.reports]
    assert tally.kills >= 1 and tally.corrupt == 0
    assert all(r.result.kills == 0 or r.result.outcome.good for r in tally.reports)


def test_the_tally_counts_what_could_go_wrong(tmp_path):
    """The classification itself: an escaped exception is a crash, a clean error that names
    nothing is a crash, an accepted bad input is silent, a kill that lost two intervals fails."""
    def boom(_):
        raise KeyError("x")

    def nameless(_):
        return expect_rejection(lambda: int("x"), "row 3")

    def accepted(_):
        return expect_rejection(lambda: 1, "row 3")

    def named(_):
        def bad():
            raise ValueError("file.json: row 3: bad field")
        return expect_rejection(bad, "row 3")

    def lost(_):
        return Result.handled("resumed", kills=1, lost_steps=[5], save_interval=2)

    from vlmrl.doctor.campaign import Case

    tally = run_campaign([Case(n, "t", f) for n, f in
                          (("boom", boom), ("nameless", nameless), ("accepted", accepted),
                           ("named", named), ("lost", lost))], tmp_path)
    outcomes = [r.result.outcome for r in tally.reports]
    assert outcomes == [Outcome.CRASHED, Outcome.CRASHED, Outcome.SILENT, Outcome.REJECTED,
                        Outcome.HANDLED]
    assert tally.lost_beyond_interval == 1 and not tally.ok
    assert Tally(tally.reports[3:4]).ok  # one clean rejection alone is fine


def test_doctor_command_prints_and_writes_the_tally(tmp_path, capsys):
    from vlmrl.cli import main

    out = tmp_path / "tally.json"
    assert main(["doctor", "--area", "rewards", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| rewards |" in printed and "kills tried 0" in printed
    tally = json.loads(out.read_text())
    assert tally["ok"] and tally["crashed"] == 0 and tally["silent"] == 0
    assert tally["cases"] == len(tally["cases_detail"]) >= 10
