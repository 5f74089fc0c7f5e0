"""The short version of `make chaos`: every fault drill under load, then the books.

One private PostgreSQL cluster, redis-server and RabbitMQ node (the shared servers are never
touched), the four roles as real `oms` processes, a steady mixed load; PostgreSQL crashed,
Redis killed, RabbitMQ stopped, relay, consumer and worker SIGKILLed, one at a time; then two
APIs, two relays and two consumers at once; then a burst of POSTs at the API's full rate (wrk).
Same code as `make chaos`, shorter phases.
"""

from __future__ import annotations

from chaos import drills


async def test_fault_drills_keep_the_books() -> None:
    results, context = await drills.run_all(drills.SHORT)
    by_fault = {result.fault: result for result in results}
    table = drills.table(results) + f"\nlogs: {context['logs']}"

    assert set(by_fault) == {*drills.FAULTS, "replicas", "burst"}
    for result in results:
        assert result.books.orders > 0, table
        assert result.lost == 0, (result.books, table)
        assert result.processed_twice == 0, (result.books, table)
        assert result.recovered_seconds is not None, table
        assert result.unexpected == {}, (result.unexpected, table)
        assert result.replay_mismatches == 0, table
    # The PostgreSQL outage was real, and it answered 503 (with its clear body), never 500.
    postgresql = by_fault.pop("postgresql")
    assert postgresql.service_unavailable > 0, table
    assert postgresql.server_errors == postgresql.service_unavailable, postgresql.status_counts
    # Redis, RabbitMQ and the background roles are not on the request path: no 5xx at all.
    assert {fault: r.server_errors for fault, r in by_fault.items()} == dict.fromkeys(by_fault, 0)

    notes = by_fault["replicas"].notes
    assert notes["rate_limit_last_status"] == 429, notes
    if not notes["redis_fallbacks_during_check"]:
        assert notes["rate_limit_allowed"] == notes["rate_limit_budget"], notes
    assert notes["stale_reads_across_apis"] == 0, notes
    assert notes["events_handed_off_twice"] == 0, notes
    assert drills.problems(results) == []
