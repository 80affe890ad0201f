"""Every API path x anonymous / no role / staff / radiologist / admin → the expected status."""

import pytest

from tests.factories import PredictionFactory, StudyResultFactory

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "norole", "staff", "radiologist", "admin"]
# Expected status per role, in ROLES order. 401: not logged in; 403: logged in, role not allowed.
STAFF_READ = (401, 403, 200, 200, 200)
MATRIX = [
    ("get", "/api/v1/patients/", STAFF_READ),
    ("post", "/api/v1/patients/", (401, 403, 201, 201, 201)),
    ("get", "/api/v1/patients/{patient}/", STAFF_READ),
    ("get", "/api/v1/studies/", STAFF_READ),
    ("post", "/api/v1/studies/", (401, 403, 201, 201, 201)),
    ("get", "/api/v1/studies/{study}/", STAFF_READ),
    ("post", "/api/v1/studies/{study}/images/", (401, 403, 400, 400, 400)),  # allowed: then "no file"
    ("post", "/api/v1/studies/{study}/reviews/", (401, 403, 403, 201, 403)),
    ("get", "/api/v1/images/{image}/", STAFF_READ),
    ("get", "/api/v1/images/{image}/file", STAFF_READ),
    ("get", "/api/v1/images/{image}/preview.png", STAFF_READ),
    ("get", "/api/v1/images/{image}/pixels", STAFF_READ),
    ("get", "/api/v1/images/{image}/pixels.u16", STAFF_READ),
    ("get", "/api/v1/images/{image}/heatmap", (401, 403, 404, 404, 404)),  # allowed: there is none
    ("get", "/api/v1/audit-events/", (401, 403, 403, 403, 200)),
    ("get", "/api/v1/schema/", STAFF_READ),
    ("post", "/api/v1/auth/token/", (400,) * 5),  # open to anyone; empty body
]


@pytest.fixture
def clients(api_client_for, staff_user, radiologist_user, admin_user, norole_user):
    users = {
        "anonymous": None,
        "norole": norole_user,
        "staff": staff_user,
        "radiologist": radiologist_user,
        "admin": admin_user,
    }
    return {role: api_client_for(user) for role, user in users.items()}


def _body(path: str, objects: dict, role: str) -> dict:
    if path == "/api/v1/patients/":
        return {"mrn": f"MRN-{role}", "name": "Test Patient", "sex": "U"}
    if path == "/api/v1/studies/":
        return {"patient": objects["patient"], "accession_number": f"ACC-{role}", "body_part": "XR_ELBOW"}
    if path.endswith("/reviews/"):
        return {"decision": "confirm"}
    return {}


@pytest.mark.parametrize(("method", "path", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX])
def test_permission_matrix(clients, method, path, expected):
    result = StudyResultFactory()
    image = PredictionFactory(radiograph__study=result.study).radiograph
    objects = {"patient": result.study.patient_id, "study": result.study.pk, "image": image.pk}
    url = path.format(**objects)
    got = {}
    for role in ROLES:
        body_format = "multipart" if path.endswith("/images/") else "json"
        response = getattr(clients[role], method)(url, _body(path, objects, role), format=body_format)
        got[role] = response.status_code
    assert got == dict(zip(ROLES, expected, strict=True))


def test_anonymous_answers_name_the_token_scheme(clients):
    response = clients["anonymous"].get("/api/v1/studies/")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
