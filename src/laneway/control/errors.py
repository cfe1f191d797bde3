"""The control plane's exception tree; the API maps each to one status code and JSON shape."""

from __future__ import annotations

__all__ = ["ControlError", "Invalid", "NotFound", "StoreUnavailable"]


class ControlError(Exception):
    status = 400
    code = "error"

    def __init__(self, message: str, *, field: str = "",
                 errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors or []


class Invalid(ControlError):
    """A spec or parameter is wrong; `errors` holds (field path, message) pairs."""

    status = 422
    code = "invalid"


class NotFound(ControlError):
    status = 404
    code = "not_found"


class Conflict(ControlError):
    """The change was made against another state than there is (`createOnly` on a name that
    exists, `ifGeneration` that is not the current one): nothing was changed."""

    status = 409
    code = "conflict"


class StoreUnavailable(ControlError):
    """The store refused a read or write (disk full, read-only, I/O error); the message names
    the file, the reason and what to do. Temporary: the same call succeeds once the cause is
    fixed, and a refused write changed nothing."""

    status = 503
    code = "store_unavailable"
