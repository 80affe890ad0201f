"""Every page, as every role, at 1366x768 and on a tablet (768x1024): not one console error, CSP
violation, script error or failed request (the open_page fixture fails the test on any), and a
screenshot of each under tests/artifacts/every-<role>-<viewport>-<page>.png. Also: a live update
logs no CSP violation (htmx's indicator <style> is off), and logging out while thumbnails are still
loading ends on the login page, never on Django's debug page."""

import logging
import time
from unittest import mock

import numpy as np
import pytest
from django.contrib.sessions.models import Session
from django.core.files.base import ContentFile

from inference.decoding import decode_image
from inference.gradcam import heatmap_overlay_png
from studies import apis, session_end
from studies.audit import audit_record
from studies.models import ImageStatus, Study
from studies.services import review_create, study_view_record
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    PredictionFactory,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.usefixtures("transactional_db")

WRIST_PNG = sorted((SHARED_DATA / "png16").glob("*.png"))
WRIST_JPEG = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))
VIEWPORTS = {"desktop": DESKTOP, "tablet": TABLET}
MISSING_STUDY = 999_999
# The pages a test visits on purpose that answer with an error status.
FORBIDDEN = r"^HTTP 403 GET \S+/models/ "
NOT_FOUND = rf"^HTTP 404 GET \S+/studies/{MISSING_STUDY}/ "


def _predicted_study(*, accession: str, probability: float, image: bytes) -> Study:
    """A study whose one real radiograph has a (demo) prediction and a Grad-CAM heat map."""
    study = StudyFactory(accession_number=accession, status=Study.Status.PREDICTED)
    radiograph = RadiographFactory(
        study=study, content=image, status=ImageStatus.DONE, original_name="wrist.png"
    )
    prediction = PredictionFactory(radiograph=radiograph, abnormal_probability=probability, demo=True)
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[2:5, 3:6] = 1.0
    prediction.heatmap.save("gradcam.png", ContentFile(heatmap_overlay_png(decode_image(image), heat)))
    StudyResultFactory(study=study, abnormal_probability=probability, demo=True)
    return study


@pytest.fixture
def hospital():
    """Users in each role, a flagged study with a heat map, a reviewed one, one being analysed."""
    users = {
        "staff": UserFactory(username="sam", first_name="Sam", last_name="Staff", role="staff"),
        "radiologist": UserFactory(
            username="ada", first_name="Ada", last_name="Lovelace", role="radiologist"
        ),
        "admin": UserFactory(username="root", first_name="Ria", last_name="Admin", role="admin"),
    }
    flagged = _predicted_study(accession="ACC-FLAG", probability=0.91, image=WRIST_PNG[0].read_bytes())
    reviewed = _predicted_study(accession="ACC-REV", probability=0.2, image=WRIST_JPEG[0].read_bytes())
    review_create(
        study=reviewed,
        radiologist=users["radiologist"],
        decision="override",
        final_label="abnormal",
        comment="Subtle buckle fracture",
    )
    busy = StudyFactory(accession_number="ACC-BUSY", status=Study.Status.PROCESSING)
    RadiographFactory(study=busy, content=WRIST_JPEG[1].read_bytes(), status=ImageStatus.PROCESSING)
    _history(flagged, uploader=users["staff"])
    study_view_record(study=flagged, actor=users["staff"], ip="10.0.0.7")
    return {"users": users, "flagged": flagged, "busy": busy}


def _history(study: Study, *, uploader) -> None:
    """The events the services record when a file is uploaded and the worker predicts it."""
    image = study.images.get()
    prediction = image.predictions.get()
    audit_record(
        actor=uploader,
        action="image.uploaded",
        obj=image,
        study=study,
        details={"format": "png", "width": image.width, "height": image.height, "bytes": 1_250_000},
    )
    audit_record(actor=None, action="inference.started", obj=study, details={"images": [image.pk]})
    audit_record(
        actor=None,
        action="inference.completed",
        obj=study,
        details={
            "model_name": prediction.model_name,
            "model_version": prediction.model_version,
            "demo": True,
            "predictions": [{"image": image.pk, "abnormal_probability": 0.91, "label": "abnormal"}],
            "study_abnormal_probability": 0.91,
            "study_label": "abnormal",
        },
    )


def _pages(role: str, hospital) -> list[tuple[str, str]]:
    """(name, path) of every page the role can reach, and the 403 and 404 pages."""
    pages = [
        ("worklist", "/"),
        ("new-study", "/studies/new/"),
        ("study", f"/studies/{hospital['flagged'].pk}/"),
        ("dashboard", "/dashboard/"),
        ("password", "/password/"),
        ("404", f"/studies/{MISSING_STUDY}/"),
    ]
    if role == "admin":
        pages += [
            ("models", "/models/"),
            ("admin", "/admin/"),
            ("admin-audit-log", "/admin/studies/auditevent/"),
        ]
    else:
        pages.append(("403", "/models/"))
    return pages


@pytest.mark.parametrize("role", ["staff", "radiologist", "admin"])
@pytest.mark.parametrize("label", list(VIEWPORTS))
def test_every_page_as_every_role_without_a_problem(open_page, hospital, role, label):
    browser = open_page(VIEWPORTS[label], allow=[FORBIDDEN, NOT_FOUND])
    page = browser.page
    browser.goto("/login/")
    browser.shot(f"every-{role}-{label}-login")
    browser.login(hospital["users"][role].username, PASSWORD)
    for name, path in _pages(role, hospital):
        browser.goto(path)
        browser.settle()
        if name == "dashboard":
            browser.wait_until(
                "window.Chart && Chart.getChart('chart-flagged') && Chart.getChart('chart-agreement')"
            )
            # Demo results behind the charts: each chart says so.
            assert page.get_by_test_id("chart-demo-badge").count() == 2
        if name == "study":
            trail = page.get_by_test_id("audit-trail").inner_text()
            assert "Sam Staff uploaded image 1 (wrist.png): PNG" in trail
            assert (
                "The worker predicted image 1 (wrist.png): Abnormal, P 0.91; study result Abnormal" in trail
            )
            assert "opened the study page" not in trail  # views are listed on request only
        if name == "admin-audit-log":
            log = page.locator("#result_list").inner_text()
            assert (
                "Ada Lovelace overrode the model's result Normal: final label Abnormal on study ACC-REV"
                in log
            )
            assert "Sam Staff opened the study page of study ACC-FLAG" in log
        if name == "admin":
            # The admin's pages name no icon, so browsers ask for /favicon.ico: a real icon comes.
            icon = page.request.get(browser.base_url + "/favicon.ico")
            assert icon.ok and icon.url.endswith("/static/img/favicon.ico") and icon.body()[:4] == b"\0\0\1\0"
        if not name.startswith("admin"):  # the Django admin scrolls its own wide tables
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
        browser.shot(f"every-{role}-{label}-{name}")
    # The error pages visited on purpose answered with their status, and nothing else did.
    statuses = sorted(problem.split()[1] for problem in browser.allowed)
    assert statuses == (["404"] if role == "admin" else ["403", "404"]), browser.allowed
    browser.goto("/")  # log out from the app's own navbar (the admin pages have the admin's)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login/")
    assert page.get_by_text("You have been logged out.").is_visible()
    browser.shot(f"every-{role}-{label}-logged-out")


def test_a_live_update_logs_no_csp_violation(open_page, hospital):
    """The study page of a study being analysed updates itself (htmx); no update may break the CSP."""
    browser = open_page(DESKTOP)
    browser.login("sam", PASSWORD)
    browser.goto(f"/studies/{hospital['busy'].pk}/")
    page = browser.page
    page.evaluate(
        "window.liveSwaps = 0;"
        "document.body.addEventListener('htmx:afterSettle', () => { window.liveSwaps += 1; });"
    )
    browser.wait_until("window.liveSwaps >= 1", timeout=15)
    # htmx's indicator rules come from app.css: htmx injected no <style> of its own.
    assert page.evaluate("document.querySelectorAll('style').length") == 0
    assert browser.problems == []


def test_logging_out_while_thumbnails_load_ends_on_the_login_page(open_page, caplog):
    """Each thumbnail is held back a second on the server, so the logout lands while they load."""
    for n in range(3):
        study = StudyFactory(accession_number=f"ACC-SLOW-{n}", status=Study.Status.QUEUED)
        RadiographFactory(study=study, content=WRIST_JPEG[n].read_bytes(), status=ImageStatus.QUEUED)
    UserFactory(username="sam", role="staff")
    ended = []

    def slow_preview(**kwargs):
        time.sleep(1.0)
        return real_preview(**kwargs)

    def record_ended(request):
        ended.append(request.path)
        return real_ended(request)

    real_preview, real_ended = apis.ensure_preview, session_end.session_ended_response
    # Logging out cancels the thumbnails still loading (static/js/app.js): left behind, not failed.
    browser = open_page(DESKTOP)
    with (
        mock.patch.object(apis, "ensure_preview", slow_preview),
        mock.patch.object(session_end, "session_ended_response", record_ended),
        caplog.at_level(logging.WARNING, logger="django.request"),
    ):
        browser.login("sam", PASSWORD)
        page = browser.page
        browser.wait_until("document.querySelectorAll('img.worklist-thumb').length === 3")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login/")
        assert page.get_by_text("You have been logged out.").is_visible()
        deadline = time.monotonic() + 5
        while len(ended) < 3 and time.monotonic() < deadline:  # the held-back thumbnails finish
            page.wait_for_timeout(50)
    browser.shot("logout-while-thumbnails-load")
    # The race happened, and each request caught in it ended as a logged-out request would.
    assert len(ended) == 3 and all(path.endswith("/preview.png") for path in ended), ended
    assert not [r for r in caplog.records if "session was deleted" in r.getMessage()]
    assert "Traceback" not in page.content()
    assert any("/preview.png" in request for request in browser.left_behind), browser.left_behind


def test_the_page_fixture_catches_what_it_promises(open_page):
    """The guard itself: a CSP violation, a script error and an error answer each become a problem."""
    UserFactory(username="sam", role="staff")
    browser = open_page(DESKTOP)
    browser.goto("/login/")
    browser.page.evaluate("document.body.setAttribute('style', 'color: red')")  # inline style: refused
    browser.page.evaluate("setTimeout(() => { throw new Error('boom') }, 0)")
    browser.goto("/static/no-such-file.js")
    browser.settle()
    problems = "\n".join(browser.problems)
    assert "CSP: CSP violation event: style-src-attr blocked inline" in problems, problems
    assert "page error: boom" in problems, problems
    assert "HTTP 404 GET " in problems and "/static/no-such-file.js" in problems, problems
    browser.problems.clear()  # seen: the test passes


def test_a_live_update_after_the_session_ended_goes_to_the_login_page(open_page, hospital):
    """The idle logout ends the session while the study page updates itself: the next update takes
    the whole page to the login form (never the form inside the result card), and logging in again
    comes back to the study page, not to the fragment the update asked for."""
    study_url = f"/studies/{hospital['busy'].pk}/"
    browser = open_page(DESKTOP)
    browser.login("sam", PASSWORD)
    browser.goto(study_url)
    page = browser.page
    # The page has loaded what it shows (the viewer's pixels too): only the live update is left.
    browser.wait_until("document.querySelector('[data-viewer-active]')?.dataset.viewerState === 'ready'")
    browser.settle()
    Session.objects.all().delete()
    page.wait_for_url("**/login/?next=*", timeout=15_000)
    assert page.locator("#study-live").count() == 0
    browser.shot("live-update-after-session-ended")
    page.get_by_label("Username").fill("sam")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**{study_url}")
    assert browser.problems == []
