from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, status

from oms.auth import service
from oms.auth.dependencies import Hasher
from oms.auth.schemas import LoginForm, RegisterIn, TokenOut, UserOut
from oms.auth.tokens import create_access_token
from oms.db import DbSession
from oms.dependencies import AppSettings
from oms.openapi import error_responses
from oms.routing import SlashOptionalRouter

router = SlashOptionalRouter(tags=["auth"])


@router.post(
    "/register/",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=error_responses(400, 409, 413, 422, 429, 503),
    summary="Create a user",
)
async def register(body: RegisterIn, session: DbSession, hasher: Hasher) -> Any:
    return await service.register_user(session, hasher, body.email, body.password)


@router.post(
    "/token/",
    response_model=TokenOut,
    responses=error_responses(400, 401, 413, 422, 429, 503),
    summary="Log in (OAuth2 password flow); `username` is the email",
)
async def login(
    form: Annotated[LoginForm, Form()],
    session: DbSession,
    hasher: Hasher,
    settings: AppSettings,
) -> TokenOut:
    user = await service.authenticate(session, hasher, form.username, form.password)
    token, expires_in = create_access_token(user.id, settings)
    return TokenOut(access_token=token, expires_in=expires_in)
