"""Logging out while other requests of the same session are still running (thumbnails loading, a poll):
each of them ends as a logged-out request would, never with Django's 400 debug page."""

import json
from unittest import mock

import pytest
from django.test import Client
from django.urls import reverse

from studies import apis, views
from tests.factories import RadiographFactory, StudyFactory, UserFactory, small_png

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, settings):
    # The debug page is what users saw (make run has DEBUG on): it must not be what they get now.
    settings.DEBUG = True
    client.force_login(UserFactory(username="stella", role="staff"))
    return client


def _logout_meanwhile(client: Client, target):
    """Wrap `target` so that, while it runs, the same browser logs out in another request."""

    def wrapper(*args, **kwargs):
        other_tab = Client()
        other_tab.cookies = client.cookies
        assert other_tab.post(reverse("logout")).status_code == 302
        return target(*args, **kwargs)

    return wrapper


def test_a_thumbnail_loading_while_the_user_logs_out_gets_401_not_the_debug_page(logged_in):
    image = RadiographFactory(study=StudyFactory(), content=small_png(seed=3))
    url = reverse("api:image-preview", args=[image.pk])
    assert logged_in.get(url).status_code == 200  # before the logout, the image comes
    with mock.patch.object(apis, "ensure_preview", _logout_meanwhile(logged_in, apis.ensure_preview)):
        response = logged_in.get(url)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["detail"] == "Your session has ended (you logged out). Log in again."
    assert response["Cache-Control"] == "private, no-store"
    # Afterwards the session is simply gone: the next request is refused the ordinary way.
    assert logged_in.get(url).status_code == 401


def test_a_page_loading_while_the_user_logs_out_redirects_to_the_login_page(logged_in):
    study = StudyFactory()
    path = reverse("study_detail", args=[study.pk])
    with mock.patch.object(views, "_study_context", _logout_meanwhile(logged_in, views._study_context)):
        response = logged_in.get(path)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={path}"
    assert b"Traceback" not in response.content


def test_a_poll_running_while_the_user_logs_out_sends_the_whole_page_to_login(logged_in):
    study = StudyFactory()
    with mock.patch.object(views, "_study_context", _logout_meanwhile(logged_in, views._study_context)):
        response = logged_in.get(reverse("study_live", args=[study.pk]), HTTP_HX_REQUEST="true")
    # htmx follows HX-Redirect with a full navigation instead of swapping a login form into the page.
    assert response.status_code == 204
    assert response["HX-Redirect"] == reverse("login")


def test_a_request_that_ends_before_the_logout_is_answered_normally(logged_in):
    image = RadiographFactory(study=StudyFactory(), content=small_png(seed=4))
    response = logged_in.get(reverse("api:image-preview", args=[image.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert logged_in.post(reverse("logout")).status_code == 302
    assert logged_in.get(reverse("api:image-preview", args=[image.pk])).status_code == 401
