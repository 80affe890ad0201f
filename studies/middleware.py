"""Security headers for the HTML pages: a Content-Security-Policy that allows only this origin."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

# Everything (scripts, styles, images, fetches) comes from the app's own origin. No inline
# scripts, no inline style attributes, no data: URIs, no eval: the templates keep JS in static
# files and the vendored Bootstrap's data: icons are replaced by files in static/img.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """Adds the Content-Security-Policy header to every response that lacks one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
