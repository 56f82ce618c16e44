"""Leader election's decision, as plain data: who may write itself into the Lease, and when.

The protocol is client-go's (operator/kubetune_operator/leadership.py): a holder's term is
judged by how long this process has seen the record unchanged, never by the timestamps in it.
"""

from __future__ import annotations

import re

import pytest

from kubetune_operator.leadership import LeaseRecord, record_to_write, released
from kubetune_operator.settings import Settings

NOW = "2026-01-01T00:00:10.000000Z"
THEIRS = LeaseRecord(holder="b_2", duration_seconds=15, acquire_time="2026-01-01T00:00:00.000000Z",
                     renew_time="2026-01-01T00:00:08.000000Z", transitions=3)


def test_no_lease_yet_is_created_with_this_replica_as_holder() -> None:
    assert record_to_write(None, "a_1", 0, 15, NOW) == LeaseRecord("a_1", 15, NOW, NOW, 0)


@pytest.mark.parametrize("unchanged_for", [0.0, 14.9])
def test_another_holders_term_runs_for_its_lease_duration_as_observed_here(unchanged_for: float) -> None:
    assert record_to_write(THEIRS, "a_1", unchanged_for, 15, NOW) is None


def test_an_expired_term_is_taken_over_and_counted_as_a_transition() -> None:
    taken = record_to_write(THEIRS, "a_1", 15.0, 10, NOW)
    assert taken == LeaseRecord("a_1", 10, NOW, NOW, 4)


def test_the_holder_renews_keeping_its_acquire_time_and_transitions() -> None:
    mine = LeaseRecord("a_1", 15, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:08.000000Z", 3)
    assert record_to_write(mine, "a_1", 100.0, 15, NOW) == LeaseRecord(
        "a_1", 15, "2026-01-01T00:00:00.000000Z", NOW, 3)


def test_a_released_lease_is_taken_at_once() -> None:
    free = released(THEIRS, NOW)
    assert free.holder == "" and free.duration_seconds == 1 and free.transitions == 3
    assert record_to_write(free, "a_1", 0.0, 15, NOW) == LeaseRecord("a_1", 15, NOW, NOW, 4)


def test_a_lease_record_round_trips_through_the_lease_spec() -> None:
    lease = {"spec": THEIRS.spec()}
    assert LeaseRecord.of(lease) == THEIRS
    assert THEIRS.spec() == {"holderIdentity": "b_2", "leaseDurationSeconds": 15,
                             "acquireTime": "2026-01-01T00:00:00.000000Z",
                             "renewTime": "2026-01-01T00:00:08.000000Z", "leaseTransitions": 3}
    assert LeaseRecord.of({}) == LeaseRecord()


@pytest.mark.parametrize(("env", "message"), [
    ({"KUBETUNE_RENEW_DEADLINE_SECONDS": "15"}, "RETRY_PERIOD_SECONDS < KUBETUNE_RENEW_DEADLINE_SECONDS < "
                                               "KUBETUNE_LEASE_DURATION_SECONDS must hold, all > 0 (got 2 < 15 < 15)"),
    ({"KUBETUNE_RETRY_PERIOD_SECONDS": "0"}, "(got 0 < 10 < 15)"),
    ({"KUBETUNE_LEASE_NAME": ""}, "KUBETUNE_LEASE_NAME must not be empty"),
    ({"KUBETUNE_LEASE_DURATION_SECONDS": "1.5"}, "invalid KUBETUNE_* setting"),
])
def test_leader_election_settings_that_cannot_work_are_refused_with_the_variable(
        env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=re.escape(message)):
        Settings.from_env()
