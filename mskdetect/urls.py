from django.contrib import admin
from django.urls import include, path

from studies import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("api/v1/", include("studies.api_urls")),
    path("", include("studies.urls")),
]


def not_found(request, exception=None):
    """404 as JSON under /api/ (what the API schema documents), the HTML page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


handler404 = not_found
