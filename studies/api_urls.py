from django.urls import path

from studies import apis, apis_received

app_name = "api"
urlpatterns = [
    path("auth/token/", apis.TokenApi.as_view(), name="token"),
    path("patients/", apis.PatientListCreateApi.as_view(), name="patient-list"),
    path("patients/<int:pk>/", apis.PatientDetailApi.as_view(), name="patient-detail"),
    path("studies/", apis.StudyListCreateApi.as_view(), name="study-list"),
    path("studies/<int:pk>/", apis.StudyDetailApi.as_view(), name="study-detail"),
    path("studies/<int:pk>/images/", apis.StudyImagesApi.as_view(), name="study-images"),
    path("studies/<int:pk>/reviews/", apis.StudyReviewsApi.as_view(), name="study-reviews"),
    path("studies/<int:pk>/complete/", apis.StudyCompleteApi.as_view(), name="study-complete"),
    path("studies/<int:pk>/body-part/", apis_received.StudyBodyPartApi.as_view(), name="study-body-part"),
    path("images/<int:pk>/", apis.ImageDetailApi.as_view(), name="image-detail"),
    path("images/<int:pk>/file", apis.ImageFileApi.as_view(), name="image-file"),
    path("images/<int:pk>/heatmap", apis.ImageHeatmapApi.as_view(), name="image-heatmap"),
    path("images/<int:pk>/preview.png", apis.ImagePreviewApi.as_view(), name="image-preview"),
    path("images/<int:pk>/pixels", apis.ImagePixelsApi.as_view(), name="image-pixels"),
    path("images/<int:pk>/pixels.u16", apis.ImagePixelDataApi.as_view(), name="image-pixel-data"),
    path("audit-events/", apis.AuditEventListApi.as_view(), name="audit-event-list"),
    path("schema/", apis.SchemaApi.as_view(), name="schema"),
]
