"""The circuit breaker and guard every Redis user goes through (pure logic, a fake clock)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from oms.redis import (
    Admission,
    CircuitBreaker,
    RedisGuard,
    RedisUnavailableError,
    create_redis_client,
)
from tests.conftest import make_settings
from tests.support.redis_servers import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_failure_and_probes_once_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", cooldown_seconds=2, clock=clock)
    assert breaker.admit() is Admission.NORMAL

    breaker.record_failure(Admission.NORMAL, RedisConnectionError("refused"))
    assert breaker.admit() is None
    clock.now += 1.9
    assert breaker.admit() is None

    clock.now += 0.2
    assert breaker.admit() is Admission.PROBE
    assert breaker.admit() is None  # one probe at a time
    breaker.record_success(Admission.PROBE)
    assert breaker.admit() is Admission.NORMAL


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", cooldown_seconds=2, clock=clock)
    breaker.record_failure(Admission.NORMAL, TimeoutError())
    clock.now += 2
    probe = breaker.admit()
    assert probe is Admission.PROBE

    breaker.record_failure(probe, TimeoutError())
    clock.now += 1
    assert breaker.admit() is None
    clock.now += 1
    assert breaker.admit() is Admission.PROBE


def test_a_slow_call_that_succeeds_after_the_outage_began_does_not_close_it() -> None:
    breaker = CircuitBreaker("redis", cooldown_seconds=2, clock=FakeClock())
    breaker.record_failure(Admission.NORMAL, TimeoutError())
    breaker.record_success(Admission.NORMAL)
    assert breaker.is_open


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", cooldown_seconds=2, clock=clock)
    breaker.record_failure(Admission.NORMAL, TimeoutError())
    clock.now += 2
    probe = breaker.admit()
    assert probe is Admission.PROBE
    breaker.record_abandoned(probe)
    assert breaker.admit() is Admission.PROBE


def test_an_outage_is_logged_once_with_its_cause_and_once_when_it_ends() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", cooldown_seconds=1, clock=clock)
    with capture_logs() as logs:
        for _ in range(3):  # three bursts of failures, the last two from failed probes
            for _ in range(50):
                admission = breaker.admit()
                if admission is not None:
                    breaker.record_failure(admission, RedisConnectionError("Connection refused"))
            clock.now += 1
        probe = breaker.admit()
        assert probe is Admission.PROBE
        breaker.record_success(probe)

    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("redis_unavailable", "warning"),
        ("redis_available_again", "info"),
    ]
    assert logs[0]["error"] == "ConnectionError: Connection refused"
    assert logs[1]["outage_seconds"] == 3
    assert logs[1]["calls_skipped"] == 3 * 49


async def test_guard_turns_redis_errors_into_unavailable_and_skips_while_open() -> None:
    settings = make_settings("sqlite:///unused.db", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    guard = RedisGuard(create_redis_client(settings), settings)
    calls = 0

    async def get() -> object:
        nonlocal calls
        calls += 1
        return await guard.client.get("anything")

    try:
        with pytest.raises(RedisUnavailableError) as refused:
            await guard.run(get)
        with pytest.raises(RedisUnavailableError) as skipped:
            await guard.run(get)
    finally:
        await guard.close()

    assert refused.value.reason == "error"
    assert skipped.value.reason == "breaker_open"
    assert calls == 1


async def test_guard_bounds_an_operation_that_hangs() -> None:
    settings = make_settings("sqlite:///unused.db", redis_url="redis://127.0.0.1:1/0")
    guard = RedisGuard(create_redis_client(settings), settings)

    with pytest.raises(RedisUnavailableError):
        await guard.run(lambda: asyncio.sleep(30))
    await guard.close()


async def test_the_pool_serves_more_callers_than_connections_within_its_cap(
    redis_url: str,
) -> None:
    """With every connection busy, callers wait their turn instead of failing, the pool opens
    no more than REDIS_MAX_CONNECTIONS, and once the crowd is served calls go on as before."""
    settings = make_settings(
        "sqlite:///unused.db", redis_url=redis_url, redis_max_connections=3, redis_timeout_seconds=2
    )
    client = create_redis_client(settings)
    name = f"oms-pool-test-{free_port()}"
    try:
        # BLPOP on an empty list holds its connection for 50 ms: 30 of them need 10 turns.
        results = await asyncio.gather(
            *(client.blpop([f"{name}:empty"], timeout=0.05) for _ in range(30))
        )
        opened = sum(count for count, _ in client.connection_pool.get_connection_count())
        assert await client.ping()
        assert await client.incr(f"{name}:n") == 1
    finally:
        await client.delete(f"{name}:n")
        await client.aclose()

    assert results == [None] * 30
    assert opened == 3
