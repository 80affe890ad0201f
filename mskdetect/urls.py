from django.contrib import admin
from django.urls import include, path

from studies import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("api/v1/", include("studies.api_urls")),
    path("", include("studies.urls")),
]
