from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Header, Query, Request, Response, status

from oms.auth.dependencies import AuthenticatedUser, BearerAuthentication, CurrentUser
from oms.cache import OrderCache
from oms.db import database_connection
from oms.exceptions import PermissionDeniedError
from oms.openapi import error_responses
from oms.orders import service
from oms.orders.models import OrderStatus
from oms.orders.schemas import OrderCreate, OrderOut, OrderStatusUpdate, orders_json
from oms.routing import SlashOptionalRouter

router = SlashOptionalRouter(prefix="/orders", tags=["orders"])

JSON = "application/json"
MAX_OFFSET = 1_000_000

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Makes a retried creation safe: the same key and body return the same order.",
    ),
]


# OpenAPI links: where a new order's id and owner lead (clients and stateful fuzzers follow them).
_ORDER_LINKS = {
    "GetOrder": {
        "operationId": "get_order",
        "parameters": {"order_id": "$response.body#/id"},
        "description": "Read the order",
    },
    "UpdateOrderStatus": {
        "operationId": "update_order_status",
        "parameters": {"order_id": "$response.body#/id"},
        "description": "Change its status",
    },
    "ListUserOrders": {
        "operationId": "list_user_orders",
        "parameters": {"user_id": "$response.body#/user_id"},
        "description": "List its owner's orders",
    },
}


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses={
        201: {"description": "The order", "links": _ORDER_LINKS},
        **error_responses(400, 401, 409, 413, 422, 429, 503),
    },
    summary="Create an order",
    operation_id="create_order",
)
async def create_order(
    body: OrderCreate,
    user: CurrentUser,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    async with database_connection(request) as connection:
        created = await service.create_order(connection, user.id, body, idempotency_key)
    headers = {"Location": f"/orders/{created.id}/"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(created.body, status.HTTP_201_CREATED, headers, JSON)


def _cached_order_key(request: Request) -> str | None:
    """The order's cache key, read with the rate limit (before the path is validated, like every
    route's authentication; a malformed id reads nothing)."""
    cache: OrderCache = request.app.state.order_cache
    try:
        return cache.shared_key(uuid.UUID(request.path_params["order_id"]))
    except ValueError:
        return None


# Authentication and rate limit as on every route, plus the cached order: one Redis round trip.
ReadingUser = Annotated[AuthenticatedUser, Depends(BearerAuthentication(_cached_order_key))]


@router.get(
    "/{order_id}/",
    response_model=OrderOut,
    responses={
        200: {"description": "The order", "links": _ORDER_LINKS},
        **error_responses(401, 403, 404, 422, 429, 503),
    },
    summary="Read an order",
    operation_id="get_order",
)
async def get_order(order_id: uuid.UUID, request: Request, user: ReadingUser) -> Response:
    state = request.app.state
    body = await service.get_order_json(
        partial(database_connection, request),
        state.order_cache,
        state.recently_seen_users,
        user.id,
        order_id,
        user.shared_read,
    )
    return Response(body, media_type=JSON)


@router.patch(
    "/{order_id}/",
    response_model=OrderOut,
    responses={
        200: {"description": "The order", "links": _ORDER_LINKS},
        **error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    },
    summary="Change an order's status",
    operation_id="update_order_status",
)
async def update_order_status(
    order_id: uuid.UUID,
    body: OrderStatusUpdate,
    user: CurrentUser,
    request: Request,
) -> Response:
    cache: OrderCache = request.app.state.order_cache
    async with database_connection(request) as connection:
        order = await service.change_status(connection, cache, user.id, order_id, body.status)
    return Response(order, media_type=JSON)


@router.get(
    "/user/{user_id}/",
    response_model=list[OrderOut],
    responses=error_responses(401, 403, 422, 429, 503),
    summary="List a user's orders, newest first",
    operation_id="list_user_orders",
)
async def list_user_orders(
    user_id: int,
    user: CurrentUser,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    order_status: Annotated[OrderStatus | None, Query(alias="status")] = None,
) -> Response:
    if user_id != user.id:
        raise PermissionDeniedError("You can only list your own orders")
    async with database_connection(request) as connection:
        orders, has_more = await service.list_orders(
            connection, user.id, limit, offset, order_status
        )
    headers = {}
    if has_more:
        query: dict[str, str | int] = {"limit": limit, "offset": offset + limit}
        if order_status is not None:
            query["status"] = order_status.value
        headers["Link"] = f'</orders/user/{user_id}/?{urlencode(query)}>; rel="next"'
    return Response(orders_json(orders), headers=headers, media_type=JSON)
