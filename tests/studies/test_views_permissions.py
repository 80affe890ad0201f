"""Every HTML page x anonymous / no role / staff / radiologist / admin → the expected status.

302 for anonymous means "sent to the login page" (checked); 403: logged in, role not allowed.
"""

import pytest
from django.test import Client

from tests.factories import PredictionFactory, StudyResultFactory

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "norole", "staff", "radiologist", "admin"]
STAFF_PAGE = (302, 403, 200, 200, 200)
MATRIX = [
    ("get", "/", STAFF_PAGE),
    ("get", "/studies/new/", STAFF_PAGE),
    ("get", "/studies/{study}/", STAFF_PAGE),
    ("get", "/studies/{study}/live/", STAFF_PAGE),
    ("get", "/patients/search/?q=Pat", STAFF_PAGE),
    ("get", "/dashboard/", STAFF_PAGE),
    ("get", "/password/", (302, 200, 200, 200, 200)),  # any account may change its own password
    ("post", "/studies/new/inspect/", (302, 403, 400, 400, 400)),  # allowed: then "no file"
    # A plain form post goes back to the study page, with the error as a message.
    ("post", "/studies/{study}/images/", (302, 403, 302, 302, 302)),
    ("post", "/studies/{study}/requeue/", (302, 403, 302, 302, 302)),  # allowed: back to the study
    # Reviews: only radiologists; an empty form is re-shown with its errors (400).
    ("post", "/studies/{study}/review/", (302, 403, 403, 400, 403)),
    ("get", "/admin/", (302, 302, 302, 302, 200)),  # Django admin: superusers only
    ("get", "/admin/studies/auditevent/", (302, 302, 302, 302, 200)),
    ("get", "/login/", (200, 302, 302, 302, 302)),  # a logged-in user is sent on
]


@pytest.fixture
def clients(staff_user, radiologist_user, admin_user, norole_user):
    users = {
        "anonymous": None,
        "norole": norole_user,
        "staff": staff_user,
        "radiologist": radiologist_user,
        "admin": admin_user,
    }
    made = {}
    for role, user in users.items():
        made[role] = Client()
        if user is not None:
            made[role].force_login(user)
    return made


@pytest.mark.parametrize(("method", "path", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX])
def test_html_permission_matrix(clients, method, path, expected):
    result = StudyResultFactory()
    PredictionFactory(radiograph__study=result.study)
    url = path.format(study=result.study.pk)
    got = {}
    for role in ROLES:
        response = getattr(clients[role], method)(url)
        got[role] = response.status_code
        if role == "anonymous" and response.status_code == 302:
            assert "/login/" in response.url
    assert got == dict(zip(ROLES, expected, strict=True))
