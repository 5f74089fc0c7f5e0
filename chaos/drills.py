"""Fault drills under load, one fault at a time, and the books checked after each.

For each fault: steady load, the fault, an outage, the restore, then load until the pipeline has
caught up; then the load stops, the backlog drains and the books are checked for every order
answered 201 during the drill: it exists, has exactly one outbox event and it is published, it
is processed (processed_at set) and the worker logged `Order <id> processed` exactly once.
A last phase runs two APIs, two relays and two consumers at once (shared rate limits, coherent
caches, nothing twice).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench.wrk import run_wrk
from tests.conftest import ITEM, register_and_login

from chaos.load import EXPECTED, TRANSPORT_ERROR, Load, Sample
from chaos.topology import ROOT, Topology, running_topology

RESULTS = ROOT / "chaos" / "results"
HANDED_OFF = "Event handed off to process_order"


@dataclass(frozen=True)
class Timing:
    """How long each part of a drill lasts; `make chaos` and the CI test differ only here."""

    before: float
    outage: float
    after: float
    rate: float
    users: int
    recover_within: float
    # Longer than CELERY_VISIBILITY_TIMEOUT_SECONDS (120): a task a killed worker had reserved
    # but not started is redelivered only then (its `waiting` mark keeps the sweeper off it).
    drain_within: float
    max_requests: int
    # PROCESSING_TIMEOUT_SECONDS: how soon the sweeper re-dispatches tasks a fault lost.
    processing_timeout: int
    # The POST burst: wrk at full speed for this long, one fresh user, no rate limit.
    burst: int


FULL = Timing(before=5, outage=10, after=5, rate=30, users=20, recover_within=120,
              drain_within=150, max_requests=5000, processing_timeout=10, burst=60)  # fmt: skip
SHORT = Timing(before=1, outage=2.5, after=0.5, rate=12, users=6, recover_within=60,
               drain_within=150, max_requests=600, processing_timeout=6, burst=5)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    name: str
    how: str
    inject: Callable[[Topology], None]
    restore: Callable[[Topology], None]
    # Only a PostgreSQL outage may answer 503 (SPEC: the database is the one critical store).
    allows_503: bool = False
    # How long the fault lasts, when not the timing's `outage`.
    outage: float | None = None


def _kill_role(role: str) -> Callable[[Topology], None]:
    def kill(topology: Topology) -> None:
        topology.roles[role].pop(0).kill()

    return kill


def _start_role(role: str) -> Callable[[Topology], None]:
    def start(topology: Topology) -> None:
        topology.start_role(role)

    return start


def _restart_redis(topology: Topology) -> None:
    topology.redis.start()


def _shutdown_redis_while_tasks_run(topology: Topology) -> None:
    """Shut Redis down right after a task started its 2 s sleep, so its ack is bound to fail."""
    started = len(topology.events("worker", "Processing order"))
    deadline = time.monotonic() + 30
    while len(topology.events("worker", "Processing order")) == started:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    topology.redis.shutdown()


FAULTS = {
    fault.name: fault
    for fault in (
        Fault("postgresql", "crash (pg_ctl -m immediate), start",
              lambda t: t.postgres.stop("immediate"), lambda t: t.postgres.start(),
              allows_503=True),
        Fault("redis", "SIGKILL (no persistence), start", lambda t: t.redis.kill(),
              _restart_redis),
        # Issue 11, scenario 2: the worker holds tasks in their sleep, their acks then fail.
        Fault("redis-held-tasks", "SHUTDOWN NOSAVE while tasks sleep, start 2 s later",
              _shutdown_redis_while_tasks_run, _restart_redis, outage=2),
        Fault("rabbitmq", "rabbitmqctl stop, rabbitmq-server", lambda t: t.rabbitmq.stop(),
              lambda t: t.rabbitmq.start() and None),
        Fault("relay", "SIGKILL, new process", _kill_role("relay"), _start_role("relay")),
        Fault("consumer", "SIGKILL, new process", _kill_role("consumer"), _start_role("consumer")),
        Fault("worker", "SIGKILL mid-task, new process", _kill_role("worker"),
              _start_role("worker")),
    )
}  # fmt: skip


@dataclass
class Books:
    orders: int = 0
    missing: list[str] = field(default_factory=list)
    event_not_published_once: list[str] = field(default_factory=list)
    unprocessed: list[str] = field(default_factory=list)
    never_logged: list[str] = field(default_factory=list)
    processed_twice: list[str] = field(default_factory=list)

    @property
    def lost(self) -> list[str]:
        broken = {*self.missing, *self.event_not_published_once, *self.unprocessed}
        return sorted(broken | set(self.never_logged))


@dataclass
class DrillResult:
    fault: str
    how: str
    requests: int
    status_counts: dict[str, int]
    server_errors: int
    service_unavailable: int
    unexpected: dict[str, int]
    restore_seconds: float
    api_ok_after_seconds: float
    recovered_seconds: float | None
    books: Books
    replay_mismatches: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.books.lost)

    @property
    def processed_twice(self) -> int:
        return len(self.books.processed_twice)

    def problems(self, allows_503: bool) -> list[str]:
        """What breaks OMS's promise in this drill (empty when it held)."""
        problems = []
        if self.server_errors - (self.service_unavailable if allows_503 else 0):
            problems.append(f"{self.fault}: 5xx other than an allowed 503: {self.status_counts}")
        if self.unexpected:
            problems.append(f"{self.fault}: unexpected answers {self.unexpected}")
        if self.lost:
            problems.append(f"{self.fault}: {self.lost} orders lost: {asdict(self.books)}")
        if self.processed_twice:
            problems.append(f"{self.fault}: processed twice: {self.books.processed_twice}")
        if self.recovered_seconds is None:
            problems.append(f"{self.fault}: the pipeline did not recover")
        if self.replay_mismatches:
            problems.append(f"{self.fault}: {self.replay_mismatches} idempotent replays differed")
        return problems


def check_books(topology: Topology, order_ids: list[str]) -> Books:
    books = Books(orders=len(order_ids))
    if not order_ids:
        return books
    rows = topology.query(
        "SELECT id::text, processed_at IS NOT NULL FROM orders WHERE id::text = ANY(%s)",
        order_ids,
    )
    processed = dict(rows)
    events = {
        row[0]: (row[1], row[2])
        for row in topology.query(
            "SELECT payload->>'order_id', count(*), count(published_at) FROM outbox"
            " WHERE payload->>'order_id' = ANY(%s) GROUP BY 1",
            order_ids,
        )
    }
    lines = topology.processed_lines()
    for order_id in order_ids:
        if order_id not in processed:
            books.missing.append(order_id)
        elif not processed[order_id]:
            books.unprocessed.append(order_id)
        if events.get(order_id) != (1, 1):
            books.event_not_published_once.append(order_id)
        if lines[order_id] == 0:
            books.never_logged.append(order_id)
        elif lines[order_id] > 1:
            books.processed_twice.append(order_id)
    return books


def _unprocessed(topology: Topology, order_ids: list[str]) -> int:
    if not order_ids:
        return 0
    try:
        rows = topology.query(
            "SELECT count(*) FROM orders WHERE processed_at IS NULL AND id::text = ANY(%s)",
            order_ids,
        )
    except Exception:  # the database may still be down: not caught up
        return len(order_ids)
    return int(rows[0][0])


def _caught_up(topology: Topology, load: Load, since: float, created_before: set[str]) -> bool:
    """The backlog is gone and new orders flow: every order of the drill answered before
    `since` is processed, and so is at least one answered after it."""
    created = list(load.created.items())
    backlog = [o for o, at in created if at <= since and o not in created_before]
    fresh = [o for o, at in created if at > since]
    if not fresh or _unprocessed(topology, backlog):
        return False
    return _unprocessed(topology, fresh) < len(fresh)


async def _wait(condition: Callable[[], bool], within: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await asyncio.to_thread(condition):
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    return None


async def _drain(
    topology: Topology, load: Load, timing: Timing, created_before: set[str], first_sample: int
) -> tuple[list[str], list[Sample]]:
    """After the load stopped: the orders this drill created, once they are processed (or the
    drain time ran out; the books then show what is missing), and the drill's samples."""
    drill_orders = [o for o in load.created if o not in created_before]
    await _wait(lambda: _unprocessed(topology, drill_orders) == 0, timing.drain_within)
    return drill_orders, load.samples[first_sample:]


def _summarise(
    samples: list[Sample], allows_503: bool, restore_at: float
) -> tuple[dict[str, int], int, int, dict[str, int], float]:
    counts: dict[str, int] = {}
    unexpected: dict[str, int] = {}
    last_error_at = restore_at
    for sample in samples:
        counts[str(sample.status)] = counts.get(str(sample.status), 0) + 1
        bad = sample.status >= 500 or sample.status == TRANSPORT_ERROR
        if bad:
            last_error_at = max(last_error_at, sample.sent_at)
        elif sample.status not in EXPECTED[sample.kind]:
            key = f"{sample.kind} {sample.status}"
            unexpected[key] = unexpected.get(key, 0) + 1
    server_errors = sum(n for s, n in counts.items() if int(s) >= 500 or int(s) == 0)
    unavailable = counts.get("503", 0)
    return counts, server_errors, unavailable, unexpected, last_error_at - restore_at


async def run_drill(topology: Topology, load: Load, fault: Fault, timing: Timing) -> DrillResult:
    first_sample = len(load.samples)
    created_before = set(load.created)
    load.phase = f"{fault.name}:before"
    load_task = asyncio.create_task(load.run(timing.recover_within * 10, timing.max_requests))
    try:
        await asyncio.sleep(timing.before)
        load.phase = f"{fault.name}:outage"
        await asyncio.to_thread(fault.inject, topology)
        await asyncio.sleep(timing.outage if fault.outage is None else fault.outage)
        load.phase = f"{fault.name}:recovery"
        restore_at = time.monotonic()
        await asyncio.to_thread(fault.restore, topology)
        restore_seconds = time.monotonic() - restore_at
        waited = await _wait(
            lambda: _caught_up(topology, load, restore_at, created_before),
            timing.recover_within - restore_seconds,
        )
        recovered = None if waited is None else restore_seconds + waited
        load.phase = f"{fault.name}:after"
        await asyncio.sleep(timing.after)
    finally:
        load.stop()
        await load_task
    drill_orders, samples = await _drain(topology, load, timing, created_before, first_sample)
    counts, errors, unavailable, unexpected, api_ok_after = _summarise(
        samples, fault.allows_503, restore_at
    )
    return DrillResult(
        fault=fault.name,
        how=fault.how,
        requests=len(samples),
        status_counts=counts,
        server_errors=errors,
        service_unavailable=unavailable,
        unexpected=unexpected,
        restore_seconds=round(restore_seconds, 2),
        api_ok_after_seconds=round(max(api_ok_after, 0), 2),
        recovered_seconds=None if recovered is None else round(recovered, 2),
        books=check_books(topology, drill_orders),
        replay_mismatches=len(load.replay_mismatches),
    )


async def run_replicas(topology: Topology, load: Load, timing: Timing) -> DrillResult:
    """Two APIs, two relays, two consumers under load: shared limits, coherent caches, once."""
    for role in ("api", "relay", "consumer"):
        topology.start_role(role)
    await asyncio.to_thread(topology.wait_ready)
    load.api_urls = topology.api_urls
    first_sample = len(load.samples)
    created_before = set(load.created)
    load.phase = "replicas"
    started = time.monotonic()
    load_task = asyncio.create_task(load.run(timing.recover_within * 10, timing.max_requests))
    try:
        api1, api2 = (httpx.AsyncClient(base_url=url, timeout=10) for url in topology.api_urls)
        async with api1, api2:
            rate_limit = await _shared_rate_limit(api1, api2, topology)
            stale_reads = await _cache_coherence(api1, api2)
        await asyncio.sleep(max(0.0, timing.before + timing.outage - (time.monotonic() - started)))
    finally:
        load.stop()
        await load_task
    drill_orders, samples = await _drain(topology, load, timing, created_before, first_sample)
    counts, errors, unavailable, unexpected, _ = _summarise(samples, False, started)
    handed_off = [r.get("event_id") for r in topology.events("consumer", HANDED_OFF)]
    return DrillResult(
        fault="replicas",
        how="2 api + 2 relay + 2 consumer",
        requests=len(samples),
        status_counts=counts,
        server_errors=errors,
        service_unavailable=unavailable,
        unexpected=unexpected,
        restore_seconds=0.0,
        api_ok_after_seconds=0.0,
        recovered_seconds=0.0,
        books=check_books(topology, drill_orders),
        replay_mismatches=len(load.replay_mismatches),
        notes={
            **rate_limit,
            "stale_reads_across_apis": stale_reads,
            "events_handed_off_twice": len(handed_off) - len(set(handed_off)),
            "hand_offs_per_consumer": [
                len(p.events(HANDED_OFF)) for p in topology.roles["consumer"]
            ],
        },
    )


async def run_burst(topology: Topology, timing: Timing) -> DrillResult:
    """`POST /orders/` as fast as the API takes it (wrk) for `timing.burst` seconds, from an API
    process without a rate limit: every order created is processed exactly once."""
    api = topology.start_role("api", rate_limit_times="1000000000")
    await asyncio.to_thread(topology.wait_ready)
    url = topology.api_url_of[api]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register_and_login(client)
    tokens = topology.workdir / "burst-tokens.txt"
    tokens.write_text(user.headers["Authorization"].removeprefix("Bearer ") + "\n")
    started = time.monotonic()
    result = await asyncio.to_thread(
        run_wrk, f"{url}/orders/", seconds=timing.burst, threads=1, connections=32,
        script="post_order.lua", script_args=(str(tokens),),
    )  # fmt: skip
    api.stop()
    topology.roles["api"].remove(api)
    order_ids = [row[0] for row in topology.query(
        "SELECT id::text FROM orders WHERE user_id = %s", user.id
    )]  # fmt: skip
    # The backlog drains at the workers' rate (SPEC 5: at least 250 orders/s per worker).
    within = max(timing.drain_within, len(order_ids) / 100)
    waited = await _wait(lambda: _unprocessed(topology, order_ids) == 0, within)
    counts = {"201": result.requests - result.non_2xx, "other": result.non_2xx}
    return DrillResult(
        fault="burst",
        how=f"wrk POST at full rate for {timing.burst} s",
        requests=result.requests,
        status_counts=counts,
        server_errors=result.non_2xx + result.socket_errors,
        service_unavailable=0,
        unexpected={},
        restore_seconds=0.0,
        api_ok_after_seconds=0.0,
        recovered_seconds=None if waited is None else round(waited, 2),
        books=check_books(topology, order_ids),
        replay_mismatches=0,
        notes={
            "posts_per_second": result.requests_per_second,
            "orders": len(order_ids),
            "processed_within_seconds_after_burst": None if waited is None else round(waited, 1),
            "burst_seconds": round(time.monotonic() - started - (waited or 0), 1),
        },
    )


async def _shared_rate_limit(
    api1: httpx.AsyncClient, api2: httpx.AsyncClient, topology: Topology
) -> dict[str, Any]:
    """A fresh user alternating between the two APIs is limited after ONE shared budget."""
    budget = int(topology.env["RATE_LIMIT_TIMES"])
    fallbacks_before = len(topology.events("api", "redis_unavailable"))
    user = await register_and_login(api1)
    path = f"/orders/user/{user.id}/"
    statuses = []
    for index in range(budget + 1):
        client = api1 if index % 2 == 0 else api2
        statuses.append((await client.get(path, headers=user.headers)).status_code)
    return {
        "rate_limit_budget": budget,
        "rate_limit_allowed": statuses.count(200),
        "rate_limit_last_status": statuses[-1],
        # A Redis call past its 100 ms deadline is answered by the per-process fallback window
        # (SPEC 2.4); only then may a request or a few slip past the shared budget.
        "redis_fallbacks_during_check": len(topology.events("api", "redis_unavailable"))
        - fallbacks_before,
    }


async def _cache_coherence(api1: httpx.AsyncClient, api2: httpx.AsyncClient) -> int:
    """A PATCH through one API is what the other API's next GET returns (cache included)."""
    user = await register_and_login(api1)
    stale = 0
    for round_ in range(5):
        writer, reader = (api1, api2) if round_ % 2 == 0 else (api2, api1)
        created = await writer.post("/orders/", json={"items": [ITEM]}, headers=user.headers)
        order_id = created.json()["id"]
        path = f"/orders/{order_id}/"
        for status in ("PAID", "SHIPPED"):
            await reader.get(path, headers=user.headers)  # fills the cache with the old state
            patched = await writer.patch(path, json={"status": status}, headers=user.headers)
            seen = (await reader.get(path, headers=user.headers)).json()
            if patched.status_code != 200 or seen["status"] != status:
                stale += 1
    return stale


async def run_all(
    timing: Timing, faults: list[str] | None = None, replicas: bool = True, burst: bool = True
) -> tuple[list[DrillResult], dict[str, Any]]:
    selected = [FAULTS[name] for name in (faults or list(FAULTS))]
    with running_topology(processing_timeout_seconds=str(timing.processing_timeout)) as topology:
        load = Load(topology.api_urls, rate=timing.rate)
        try:
            await load.setup(timing.users)
            results = [await run_drill(topology, load, fault, timing) for fault in selected]
            if replicas:
                results.append(await run_replicas(topology, load, timing))
            if burst:
                results.append(await run_burst(topology, timing))
            context = {
                "rabbitmq_node_start_seconds": round(topology.rabbitmq_start_seconds, 2),
                "orders_created": len(load.created),
                "transport_errors": dict(load.transport_errors),
                "timing": asdict(timing),
            }
            lines = topology.processed_lines()
            context["processed_twice_overall"] = sorted(o for o, n in lines.items() if n > 1)
            context["logs"] = str(_dump_logs(topology))
        finally:
            await load.close()
    return results, context


def problems(results: list[DrillResult]) -> list[str]:
    found = []
    for result in results:
        fault = FAULTS.get(result.fault)
        found += result.problems(allows_503=fault.allows_503 if fault else False)
        if result.fault == "replicas":
            notes = result.notes
            allowed, budget = notes["rate_limit_allowed"], notes["rate_limit_budget"]
            if allowed != budget and not (
                notes["redis_fallbacks_during_check"] and allowed < 2 * budget
            ):
                found.append(f"replicas: rate limit not shared: {notes}")
            if notes["rate_limit_last_status"] != 429:
                found.append(f"replicas: no 429 after the shared budget: {notes}")
            if notes["stale_reads_across_apis"]:
                found.append(f"replicas: stale reads across APIs: {notes}")
            if notes["events_handed_off_twice"]:
                found.append(f"replicas: events handed off twice: {notes}")
    return found


HEADER = ("fault", "how", "requests", "5xx", "503", "lost", "twice", "restore s", "API ok s",
          "recovered s")  # fmt: skip


def table(results: list[DrillResult]) -> str:
    rows = [HEADER]
    for r in results:
        rows.append((
            r.fault, r.how, str(r.requests), str(r.server_errors), str(r.service_unavailable),
            str(r.lost), str(r.processed_twice), f"{r.restore_seconds:.1f}",
            f"{r.api_ok_after_seconds:.1f}",
            "never" if r.recovered_seconds is None else f"{r.recovered_seconds:.1f}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _dump_logs(topology: Topology) -> Path:
    """Every process's full output, for the post-mortem of a failed drill."""
    directory = RESULTS / f"logs-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    directory.mkdir(parents=True, exist_ok=True)
    for index, process in enumerate(topology.history):
        (directory / f"{index:02d}-{process.role}.log").write_text("\n".join(process.lines))
    return directory


def write_results(kind: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def result_dicts(results: list[DrillResult]) -> list[dict[str, Any]]:
    out = []
    for result in results:
        data = asdict(result)
        data["lost"] = result.lost
        data["processed_twice"] = result.processed_twice
        out.append(data)
    return out
