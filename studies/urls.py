"""HTML pages (the REST API is in api_urls.py)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from studies import views, views_pacs, views_reading, views_received

urlpatterns = [
    path("", views.worklist, name="worklist"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("patients/search/", views.patient_search, name="patient_search"),
    path("studies/new/", views.study_new, name="study_new"),
    path("studies/new/inspect/", views.study_inspect, name="study_inspect"),
    path("studies/<int:pk>/", views.study_detail, name="study_detail"),
    path("studies/<int:pk>/live/", views.study_live, name="study_live"),
    path("studies/<int:pk>/images/", views.study_upload, name="study_upload"),
    path("studies/<int:pk>/review/", views.study_review, name="study_review"),
    path("studies/<int:pk>/requeue/", views.study_requeue, name="study_requeue"),
    path("studies/<int:pk>/complete/", views.study_mark_complete, name="study_mark_complete"),
    path("studies/<int:pk>/body-part/", views_received.study_set_body_part, name="study_set_body_part"),
    path("studies/<int:pk>/pacs-sends/", views_pacs.study_pacs_sends, name="study_pacs_sends"),
    path(
        "studies/<int:pk>/pacs-sends/<int:send_id>/send-again/",
        views_pacs.pacs_send_again,
        name="pacs_send_again",
    ),
    path("reading/next/", views_reading.reading_next, name="reading_next"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("models/", views.model_registry, name="model_registry"),
]
