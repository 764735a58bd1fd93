"""The admin's exceptions; mapped to the error envelope in exactly one place (framework)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: ``{"error": {"code", "message", "details"?}}`` with ``status``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}  # extra response headers (Retry-After, Allow)
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable whatever a subclass's __init__ takes: an error raised in a body-parsing
        # worker process (admin.limits) reaches the request as it was raised.
        return (_rebuild, (type(self), self.__dict__))

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}


def _rebuild(cls: type[ApiError], state: dict[str, Any]) -> ApiError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class InvalidToken(ApiError):
    status = 401
    code = "invalid_token"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PreconditionFailed(ApiError):
    status = 412
    code = "precondition_failed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class Unprocessable(ApiError):
    """422 with ``details.fields``: a list of ``{"path", "message"}``."""

    status = 422
    code = "validation_failed"

    def __init__(
        self, message: str, fields: list[dict[str, str]] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message, details={"fields": fields or []}, code=code)


class TooManyRequests(ApiError):
    """429 with ``Retry-After`` (seconds)."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.headers["retry-after"] = str(retry_after)


class PaymentRequired(ApiError):
    status = 402
    code = "payment_required"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


def field_error(path: str, message: str, *, code: str | None = None) -> Unprocessable:
    return Unprocessable(f"{path}: {message}", [{"path": path, "message": message}], code=code)
