"""The runtime's sweeper waits, after a database outage, until every replica could refresh its runs again."""

from services.runtime.service.core import DatabaseStreak

LEASE = 30.0


def test_not_settled_before_a_whole_lease_of_success() -> None:
    health = DatabaseStreak()
    assert not health.settled(0.0, LEASE)
    health.succeeded(100.0)
    health.succeeded(110.0)  # later successes do not move the start of the streak
    assert not health.settled(129.9, LEASE)
    assert health.settled(130.0, LEASE)


def test_a_failure_restarts_the_wait() -> None:
    health = DatabaseStreak()
    health.succeeded(0.0)
    assert health.settled(LEASE, LEASE)
    health.failed()  # the database went away: no replica's heartbeat got through meanwhile
    assert not health.settled(1000.0, LEASE)
    health.succeeded(1000.0)
    assert not health.settled(1000.0 + LEASE / 2, LEASE)
    assert health.settled(1000.0 + LEASE, LEASE)
