"""Idle sessions end even on a page that polls: a background poll is not the user being active.

Sessions end after MSKDETECT_SESSION_IDLE_SECONDS without a request (SESSION_SAVE_EVERY_REQUEST
pushes the expiry on every one). The worklist polls every few seconds for as long as it is open, so
an unattended screen would otherwise stay logged in, showing patient data, for ever. Requests that
carry `X-Live-Poll: 1` (set by the live worklist) read the session but never push its expiry; once
it has expired, the poll is redirected to the login page and the page's script follows there.
"""

from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

POLL_HEADER = "X-Live-Poll"


def is_background_poll(request: HttpRequest) -> bool:
    """Whether the page asked by itself (a poll), rather than the user."""
    return request.headers.get(POLL_HEADER) == "1"


class PollAwareSessionMiddleware(SessionMiddleware):
    """Django's SessionMiddleware, except that a background poll leaves the session's expiry alone."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        session = getattr(request, "session", None)
        if session is not None and is_background_poll(request) and not session.modified:
            if session.accessed:
                patch_vary_headers(response, ("Cookie",))
            return response
        return super().process_response(request, response)
