"""The fault schedule: drawn from the seed alone, every chosen kind early, and nothing else."""

from __future__ import annotations

from kubetune_testbed.chaos import DEFAULT_KINDS, KINDS
from kubetune_testbed.chaos.faults import schedule


def test_the_same_seed_draws_the_same_faults() -> None:
    assert schedule(7, 100, KINDS, 10.0) == schedule(7, 100, KINDS, 10.0)
    assert schedule(7, 100, KINDS, 10.0) != schedule(8, 100, KINDS, 10.0)


def test_every_kind_comes_once_before_any_repeats() -> None:
    plan = schedule(3, 30, DEFAULT_KINDS, 10.0)
    assert sorted(p.kind for p in plan[:len(DEFAULT_KINDS)]) == sorted(DEFAULT_KINDS)
    assert {p.kind for p in plan} <= set(DEFAULT_KINDS)
    assert DEFAULT_KINDS == KINDS  # stop-rank too, now that the operator detects hangs
    short = tuple(k for k in KINDS if k != "stop-rank")
    assert {p.kind for p in schedule(3, 30, short, 10.0)} == set(short)


def test_waits_and_durations_are_bounded() -> None:
    for p in schedule(1, 200, KINDS, 10.0):
        assert 5.0 <= p.wait <= 15.0
        assert 5.0 <= p.duration <= 25.0
        assert 0 <= p.pick < 1 and 0 <= p.rank_pick < 1
