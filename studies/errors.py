"""The one application error family raised by services and selectors.

APIs and HTML views translate them: `status_code` is the HTTP status they map to, `extra`
holds field → messages for the client (the same shape a DRF serializer error has).
"""

from django.http import Http404


class ApplicationError(Exception):
    """A domain rule said no; `message` is safe to show to the user."""

    status_code = 400

    def __init__(self, message: str, extra: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}

    def as_dict(self) -> dict[str, list[str] | str]:
        """The response body: the field errors when there are some, else `{"detail": message}`."""
        return dict(self.extra) if self.extra else {"detail": self.message}


class ConflictError(ApplicationError):
    """The request is valid but the object is not in a state that allows it (HTTP 409)."""

    status_code = 409


class NotAllowedError(ApplicationError):
    """The actor's role does not allow this action (HTTP 403)."""

    status_code = 403


class NotFoundError(ApplicationError, Http404):
    """The object does not exist or the user may not see it (HTTP 404 in views and APIs)."""

    status_code = 404


class UploadRejected(ApplicationError):
    """One or more uploaded files are unusable; nothing of the request was stored.

    `mismatches` names the files refused only for header mismatches (file name → the mismatches
    as dicts): the uploader may send them again with the mismatch confirmed and a reason.
    """

    def __init__(self, reasons: dict[str, str], mismatches: dict[str, list[dict]] | None = None) -> None:
        self.reasons = reasons
        self.mismatches = mismatches or {}
        messages = [f"{name}: {reason}" for name, reason in reasons.items()]
        extra: dict = {"file": messages}
        if self.mismatches:
            extra["mismatches"] = self.mismatches
        super().__init__("; ".join(messages), extra=extra)
