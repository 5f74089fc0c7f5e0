"""Domain errors. They know nothing of HTTP; `oms.errors` maps them to responses."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client can cause; `str(error)` is safe to show them."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(DomainError):
    pass


class PermissionDeniedError(DomainError):
    pass


class ConflictError(DomainError):
    pass


class UnprocessableError(DomainError):
    pass


class AuthenticationError(DomainError):
    pass
