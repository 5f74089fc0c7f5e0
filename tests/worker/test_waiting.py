"""The task marks the sweeper relies on: a live task is pending, a lost one is not (SPEC 5)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import kombu
import pytest
import redis

from oms.config import Settings
from oms.worker.dispatch import CeleryDispatcher, DispatchError
from oms.worker.waiting import MARK_HEADER, WaitingTasks
from tests.conftest import make_settings
from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def queue() -> str:
    return f"oms.test.{uuid.uuid4().hex[:8]}"


def _settings(server: RedisServer, tmp_path: Path, queue: str) -> Settings:
    return make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}", celery_broker_url=server.url(1), celery_queue=queue
    )


def _marks(server: RedisServer, tmp_path: Path, queue: str) -> WaitingTasks:
    return WaitingTasks(_settings(server, tmp_path, queue))


def _publish(server: RedisServer, queue: str, marks: WaitingTasks, ago: float) -> uuid.UUID:
    """Mark and publish a task as the dispatcher does (Celery's body, the mark's time in a
    header), `ago` seconds in the past."""
    order_id, marked_at = uuid.uuid4(), time.time() - ago
    marks.add([order_id], marked_at)
    with kombu.Connection(server.url(1), transport_options={"socket_timeout": 5}) as connection:
        connection.Producer().publish(
            [[str(order_id)], {"request_id": None}, {}],
            routing_key=queue,
            serializer="json",
            headers={MARK_HEADER: repr(marked_at)},
            declare=[kombu.Queue(queue)],
        )
    return order_id


def test_a_task_taken_off_the_queue_is_lost_unless_a_worker_holds_it(
    redis_server: RedisServer, tmp_path: Path, queue: str
) -> None:
    marks = _marks(redis_server, tmp_path, queue)
    lost = _publish(redis_server, queue, marks, ago=60)
    held = _publish(redis_server, queue, marks, ago=60)
    behind = [_publish(redis_server, queue, marks, ago) for ago in (20, 0)]
    orders = [lost, held, *behind]
    broker = redis.Redis.from_url(redis_server.url(1), socket_timeout=5)
    # A worker took `lost` off the queue and died before recording it; another holds `held`.
    assert broker.rpop(queue) is not None
    with kombu.Connection(redis_server.url(1), transport_options={"socket_timeout": 5}) as worker:
        assert worker.default_channel.basic_get(queue, no_ack=False) is not None

        first = marks.pending(orders)
        assert first.live == set(behind)  # still queued, behind a message marked 20 s ago
        assert first.unsure == {lost, held}  # gone from the queue: looked at again later
        time.sleep(1.1)
        again = marks.pending(orders)
        assert again.live == {held, *behind}
        assert again.unsure == set()  # and `lost` is in neither: the sweeper re-dispatches it
    broker.close()


def test_a_task_waiting_longer_than_the_maximum_wait_is_pending_while_queued(
    redis_server: RedisServer, tmp_path: Path, queue: str
) -> None:
    # No worker for two hours: the queue still holds the task, so it is not re-dispatched.
    marks = _marks(redis_server, tmp_path, queue)
    order_id = _publish(redis_server, queue, marks, ago=7200)
    for _ in range(2):
        assert marks.pending([order_id]).live == {order_id}
        time.sleep(1.1)


def test_a_task_is_pending_while_it_waits_or_runs_and_not_after(
    redis_server: RedisServer, tmp_path: Path, queue: str
) -> None:
    marks = _marks(redis_server, tmp_path, queue)
    waiting, running, done = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    marks.add([waiting, running, done], time.time())
    marks.taken(running)
    marks.taken(done)
    marks.done(done)

    assert marks.pending([waiting, running, done]).live == {waiting, running}
    assert marks.stats().running == 1


def test_a_redis_restart_forgets_every_mark_like_the_tasks(
    redis_server: RedisServer, tmp_path: Path, queue: str
) -> None:
    marks = _marks(redis_server, tmp_path, queue)
    order_id = uuid.uuid4()
    marks.add([order_id], time.time())
    redis_server.restart()
    assert marks.pending([order_id]).live == set()


async def test_a_failed_publish_leaves_no_waiting_mark(
    redis_server: RedisServer, tmp_path: Path, queue: str
) -> None:
    dispatcher = CeleryDispatcher(_settings(redis_server, tmp_path, queue))
    order_id = uuid.uuid4()
    with (
        mock.patch("oms.worker.tasks.process_order.apply_async", side_effect=OSError("down")),
        pytest.raises(DispatchError),
    ):
        await dispatcher.dispatch(order_id, None)
    assert (await dispatcher.pending([order_id])).live == set()
    await dispatcher.close()
