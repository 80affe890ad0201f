"""Login, logout, password change, roles in the navbar, and the security headers of every page."""

import re
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from tests.factories import PASSWORD, StudyFactory, UserFactory

pytestmark = pytest.mark.django_db

PROTECTED_GET = ["worklist", "study_new", "dashboard", "password_change"]


@pytest.mark.parametrize("name", PROTECTED_GET)
def test_pages_send_anonymous_users_to_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login") + "?next=")


def test_study_page_sends_anonymous_users_to_login(client):
    study = StudyFactory()
    response = client.get(reverse("study_detail", args=[study.pk]))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", ["worklist", "study_new", "dashboard"])
def test_user_without_clinical_role_is_refused(client, name):
    client.force_login(UserFactory(role=None))
    response = client.get(reverse(name))
    assert response.status_code == 403
    assert b"no clinical role" in response.content


def test_login_shows_name_and_role_in_navbar(client):
    UserFactory(username="rita", first_name="Rita", last_name="Levi", role="radiologist")
    response = client.post(reverse("login"), {"username": "rita", "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("worklist")
    html = response.content.decode()
    assert "Rita Levi" in html
    assert re.search(r'data-testid="current-role">\s*Radiologist', html)


def test_wrong_password_shows_an_error_and_stays_logged_out(client):
    UserFactory(username="sam")
    response = client.post(reverse("login"), {"username": "sam", "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()
    assert client.get(reverse("worklist")).status_code == 302


def test_logout_needs_post(client):
    client.force_login(UserFactory())
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"), follow=True)
    assert "You have been logged out." in response.content.decode()
    assert client.get(reverse("worklist")).status_code == 302


def test_password_change(client):
    user = UserFactory()
    client.force_login(user)
    bad = client.post(
        reverse("password_change"),
        {"old_password": "wrong", "new_password1": "x", "new_password2": "y"},
    )
    assert bad.status_code == 200 and 'aria-invalid="true"' in bad.content.decode()
    good = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "Tibia-Fibula-2025",
            "new_password2": "Tibia-Fibula-2025",
        },
    )
    assert good.status_code == 302 and good.url == reverse("password_change_done")
    user.refresh_from_db()
    assert user.check_password("Tibia-Fibula-2025")


def test_session_expires_after_inactivity(client, settings):
    client.force_login(UserFactory())
    client.get(reverse("worklist"))
    session = Session.objects.get(session_key=client.session.session_key)
    # Each request pushes the expiry SESSION_COOKIE_AGE seconds ahead: an idle timeout.
    expected = timezone.now() + timedelta(seconds=settings.SESSION_COOKIE_AGE)
    assert abs((session.expire_date - expected).total_seconds()) < 60
    # Idle past the expiry: the next request is sent to the login page.
    Session.objects.filter(pk=session.pk).update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get(reverse("worklist"))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", ["login", "worklist", "study_new", "dashboard"])
def test_pages_allow_only_own_origin_and_have_no_inline_script(client, name):
    client.force_login(UserFactory())
    response = client.get(reverse(name))
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = response.content.decode()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    for attributes, body in scripts:
        # Only external files, or JSON data blocks (which the browser never runs).
        assert "src=" in attributes or 'type="application/json"' in attributes, attributes
        assert "src=" not in attributes or not body.strip()
    assert " style=" not in html
    assert "//cdn" not in html and "https://" not in html
