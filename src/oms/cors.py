"""Cross-origin access (SPEC 2.4), configured from CORS_ORIGINS."""

from __future__ import annotations

from typing import Any

from oms.config import Settings

# With APP_ENV=local and no CORS_ORIGINS, a front end on any localhost port may call the API.
LOCAL_ORIGIN_REGEX = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$"
ALLOWED_METHODS = ["GET", "POST", "PATCH"]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"]
EXPOSED_HEADERS = [
    "Location",
    "Link",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Idempotent-Replayed",
    "X-Request-ID",
]
PREFLIGHT_MAX_AGE_SECONDS = 600


def cors_options(settings: Settings) -> dict[str, Any]:
    """Starlette's `CORSMiddleware` arguments: nothing cross-origin unless listed; localhost
    origins by default in `local`. (`*` with credentials is refused when the settings load.)"""
    origin_regex = None
    if not settings.cors_origins and settings.app_env == "local":
        origin_regex = LOCAL_ORIGIN_REGEX
    return {
        "allow_origins": settings.cors_origins,
        "allow_origin_regex": origin_regex,
        "allow_credentials": settings.cors_allow_credentials,
        "allow_methods": ALLOWED_METHODS,
        "allow_headers": ALLOWED_HEADERS,
        "expose_headers": EXPOSED_HEADERS,
        "max_age": PREFLIGHT_MAX_AGE_SECONDS,
    }
