"""Declared error responses, so the schema lists every status a route can answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorOut(BaseModel):
    detail: str


_DESCRIPTIONS = {
    400: "The body could not be parsed",
    401: "Missing, invalid or expired credentials",
    403: "The resource belongs to another user",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Invalid request",
    429: "Rate limit exceeded",
    503: "A required dependency (the database) is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": _DESCRIPTIONS[code]}
        if code != 422:  # FastAPI documents its own validation shape
            entry["model"] = ErrorOut
        responses[code] = entry
    return responses
