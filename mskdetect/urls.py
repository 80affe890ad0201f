from django.contrib import admin
from django.urls import include, path

from studies import dicomweb, health


def favicon(request):
    """Browsers ask for /favicon.ico where a page names no icon (the admin, JSON answers); the
    file is static/img/favicon.svg drawn at 16, 32 and 48 px."""
    from django.shortcuts import redirect
    from django.templatetags.static import static

    return redirect(static("img/favicon.ico"), permanent=True)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    # DICOMweb STOW-RS (PS3.18 paths: no trailing slash).
    path("dicomweb/studies", dicomweb.StowRsApi.as_view(), name="stow-rs"),
    path(
        "dicomweb/studies/<str:study_instance_uid>", dicomweb.StowRsStudyApi.as_view(), name="stow-rs-study"
    ),
    path("favicon.ico", favicon, name="favicon"),
    path("api/v1/", include("studies.api_urls")),
    path("", include("studies.urls")),
]


def not_found(request, exception=None):
    """404 as JSON under /api/ (what the API schema documents), the HTML page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


handler404 = not_found
