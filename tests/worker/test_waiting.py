"""The task marks the sweeper relies on: a live task is pending, a lost one is not (SPEC 5)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from oms.worker.dispatch import CeleryDispatcher, DispatchError
from oms.worker.waiting import WaitingTasks
from tests.conftest import make_settings
from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def _marks(server: RedisServer, tmp_path: Path) -> WaitingTasks:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}",
        celery_broker_url=server.url(1),
        celery_queue=f"oms.test.{uuid.uuid4().hex[:8]}",
    )
    return WaitingTasks(settings)


def test_a_task_is_pending_while_it_waits_or_runs_and_not_after(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    marks = _marks(redis_server, tmp_path)
    waiting, running, done = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    marks.add([waiting, running, done], time.time())
    marks.taken(running)
    marks.taken(done)
    marks.done(done)

    assert marks.pending([waiting, running, done]).live == {waiting, running}
    assert marks.stats().running == 1


def test_a_redis_restart_forgets_every_mark_like_the_tasks(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    marks = _marks(redis_server, tmp_path)
    order_id = uuid.uuid4()
    marks.add([order_id], time.time())
    redis_server.restart()
    assert marks.pending([order_id]).live == set()


async def test_a_failed_publish_leaves_no_waiting_mark(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'unused.db'}",
        celery_broker_url=redis_server.url(1),
        celery_queue=f"oms.test.{uuid.uuid4().hex[:8]}",
    )
    dispatcher = CeleryDispatcher(settings)
    order_id = uuid.uuid4()
    with (
        mock.patch("oms.worker.tasks.process_order.apply_async", side_effect=OSError("down")),
        pytest.raises(DispatchError),
    ):
        await dispatcher.dispatch(order_id, None)
    assert (await dispatcher.pending([order_id])).live == set()
    await dispatcher.close()
