"""The steps-lost bound the chaos suite holds each restart to (plain data, no cluster)."""

from __future__ import annotations

from kubetune_testbed.chaos.jobs import Restart

EVERY = 5


def restart(reached: int, resumed: int, newest_commit: int, uncommitted: tuple[int, ...] = (),
            newest_save: int | None = None, store_faulty: bool = False) -> Restart:
    newest = newest_save if newest_save is not None else max((*uncommitted, newest_commit))
    return Restart("job", reached, resumed, newest_commit, uncommitted, 100.0 if uncommitted else 0.0,
                   newest, at=200.0, since=150.0, store_faulty=store_faulty)


def test_a_restart_within_the_checkpoint_interval_is_in_bounds() -> None:
    assert restart(reached=14, resumed=10, newest_commit=10).within_bound(EVERY)
    assert restart(reached=15, resumed=10, newest_commit=10).within_bound(EVERY)


def test_losing_more_than_the_interval_with_every_checkpoint_committed_is_out_of_bounds() -> None:
    assert not restart(reached=16, resumed=10, newest_commit=10).within_bound(EVERY)


def test_a_resume_from_older_than_the_newest_commit_is_out_of_bounds() -> None:
    assert not restart(reached=12, resumed=5, newest_commit=10).within_bound(EVERY)


def test_one_checkpoint_still_uploading_allows_the_interval_past_it() -> None:
    # saved at 15, uploading when the fault hit at 19: resumed from 10, 9 steps lost
    assert restart(reached=19, resumed=10, newest_commit=10, uncommitted=(15,)).within_bound(EVERY)
    # but not more than the interval past the newest save (a save was skipped)
    assert not restart(reached=21, resumed=10, newest_commit=10, uncommitted=(15,),
                       newest_save=15).within_bound(EVERY)


def test_several_uncommitted_checkpoints_need_an_s3_fault_to_explain_them() -> None:
    stuck = dict(reached=29, resumed=10, newest_commit=10, uncommitted=(15, 20, 25))
    assert not restart(**stuck).within_bound(EVERY)
    assert restart(**stuck, store_faulty=True).within_bound(EVERY)
