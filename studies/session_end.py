"""A request whose session ends while it runs (the user logged out in another request) ends cleanly.

Every request saves its session (SESSION_SAVE_EVERY_REQUEST: the idle timeout). When the user logs
out while thumbnails are still loading, each of those requests finds its session gone at that save,
and Django answers 400 with its debug page (SessionInterrupted). The user has logged out, so the
answer is the one a logged-out request gets: 401 for the API (the images, the pixel data), a
redirect to the login page for a page, an `HX-Redirect` there for an htmx request. The response
the view had built (a patient's image, say) is dropped with it.
"""

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.contrib.sessions.exceptions import SessionInterrupted
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import resolve_url

from studies.idle_sessions import PollAwareSessionMiddleware

SESSION_ENDED = "Your session has ended (you logged out). Log in again."


def session_ended_response(request: HttpRequest) -> HttpResponse:
    """What a request whose session was deleted while it ran gets instead of its answer."""
    if request.path.startswith("/api/"):
        # DRF's answer to an unauthenticated request, with the same challenge.
        response: HttpResponse = JsonResponse({"detail": SESSION_ENDED}, status=401)
        response["WWW-Authenticate"] = "Token"
    elif request.headers.get("HX-Request") == "true":
        # htmx would follow a redirect inside the page and swap the login form into it.
        response = HttpResponse(status=204)
        response["HX-Redirect"] = resolve_url(settings.LOGIN_URL)
    else:
        response = redirect_to_login(request.get_full_path())
    response["Cache-Control"] = "private, no-store"
    return response


class SessionMiddleware(PollAwareSessionMiddleware):
    """The project's session middleware: poll-aware (studies.idle_sessions), and a session deleted
    while the request ran gives `session_ended_response` instead of a 400 debug page."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        try:
            return super().process_response(request, response)
        except SessionInterrupted:
            if hasattr(response, "close"):
                response.close()  # a FileResponse holds the image file open
            return session_ended_response(request)
