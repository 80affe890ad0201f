"""The live worklist in a real browser: a study created and finished elsewhere appears within seconds, in
worklist order, without a reload; polls answer 204 while nothing changes and stop in a hidden tab;
the row under the pointer does not jump (the change waits until the pointer leaves). Any console
error, CSP violation or failed request fails the test (tests/browser/conftest.py)."""

import time

import pytest

from studies import views
from studies.models import ImageStatus, Study
from tests.browser.conftest import DESKTOP, TABLET
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.usefixtures("transactional_db")

WRIST_JPEG = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))
# Polls every 3 s: a change shows on the next poll, so within about one interval plus the swap.
APPEARS_WITHIN = 8.0


@pytest.fixture(autouse=True)
def _still_minute(monkeypatch):
    # The fingerprint holds the minute (the "Received … ago" column): a minute turning during a test
    # would be a change of its own, and a poll that should find nothing new would find one.
    monkeypatch.setattr(views, "_current_minute", lambda: 29_000_000)


def _flagged(accession: str, probability: float, image: int = 0) -> Study:
    study = StudyFactory(accession_number=accession, status=Study.Status.PREDICTED)
    RadiographFactory(study=study, content=WRIST_JPEG[image].read_bytes(), status=ImageStatus.DONE)
    StudyResultFactory(study=study, abnormal_probability=probability, demo=True)
    return study


def _row_ids(page) -> list[str]:
    return page.locator("#worklist-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.studyId)")


def _count_polls(browser) -> dict[int, int]:
    """Answers to the table's polls, by status (filled as they arrive)."""
    answers: dict[int, int] = {}

    def on_response(response) -> None:
        if response.request.headers.get("x-live-poll") == "1":
            answers[response.status] = answers.get(response.status, 0) + 1

    browser.page.on("response", on_response)
    return answers


def _thumbnails_loaded(browser) -> None:
    # Below 992 px the thumbnails are hidden (and, being lazy, never load): only the shown ones count.
    browser.wait_until("[...document.images].filter(i => i.offsetParent).every(i => i.complete)")
    browser.settle()


def test_a_study_created_elsewhere_appears_in_order_without_reload(open_page):
    _flagged("LIVE-FLAG", 0.8, image=0)
    StudyFactory(accession_number="LIVE-NEW")
    UserFactory(username="stella", role="staff")
    browser = open_page(TABLET)
    page = browser.page
    answers = _count_polls(browser)
    browser.login("stella", PASSWORD)
    _thumbnails_loaded(browser)
    page.mouse.move(5, 5)  # the pointer on the navigation bar, not over the table
    page.evaluate("document.body.dataset.loadedOnce = 'yes'")
    page.wait_for_timeout(3500)  # at least one poll with nothing new
    assert answers.get(204, 0) >= 1 and answers.get(200, 0) == 0, answers

    # Created and finished by someone else (another session, the worker): only the database knows.
    urgent = _flagged("LIVE-URGENT", 0.97, image=1)
    created = time.monotonic()
    browser.wait_until(
        f"document.querySelector('#worklist-table tbody tr')?.dataset.studyId === '{urgent.pk}'",
        timeout=APPEARS_WITHIN,
    )
    appeared_after = time.monotonic() - created
    assert page.evaluate("document.body.dataset.loadedOnce") == "yes", "the page reloaded"
    first = page.locator("#worklist-table tbody tr").first
    assert "LIVE-URGENT" in first.inner_text() and "Flagged" in first.inner_text()
    accessions = page.locator("#worklist-table tbody tr td:nth-child(3)").all_inner_texts()
    assert accessions == ["LIVE-URGENT", "LIVE-FLAG", "LIVE-NEW"]
    assert "just now" in first.inner_text()
    browser.shot("live-worklist-new-study-tablet", full_page=False)

    # A hidden tab stops polling, and catches up at once when it shows again.
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    before = sum(answers.values())
    page.wait_for_timeout(6500)
    assert sum(answers.values()) == before, "a hidden tab kept polling"
    StudyFactory(accession_number="LIVE-LATE")
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    browser.wait_until("document.body.innerText.includes('LIVE-LATE')", timeout=2.5)
    _thumbnails_loaded(browser)
    print(f"LIVE WORKLIST: a new study appeared after {appeared_after:.1f} s; polls answered {answers}")


def test_the_row_under_the_pointer_does_not_jump(open_page):
    studies = [_flagged(f"HOLD-{n}", 0.9 - n / 10, image=n % len(WRIST_JPEG)) for n in range(3)]
    UserFactory(username="rita", role="radiologist")
    browser = open_page(DESKTOP)
    page = browser.page
    browser.login("rita", PASSWORD)
    _thumbnails_loaded(browser)
    held = page.locator(f'#worklist-table tr[data-study-id="{studies[1].pk}"]')
    held.hover()
    box = held.bounding_box()

    urgent = _flagged("HOLD-URGENT", 0.99)
    browser.wait_until("document.getElementById('worklist-table').dataset.pending === 'true'", timeout=8)
    # The change is waiting, announced, and nothing under the pointer moved.
    assert page.get_by_role("button", name="Changes waiting: show them").is_visible()
    assert held.bounding_box() == box
    assert _row_ids(page) == [str(study.pk) for study in studies]
    browser.shot("live-worklist-change-held-under-pointer", full_page=False)
    page.wait_for_timeout(3500)  # later polls while it waits: still nothing moves
    assert held.bounding_box() == box

    page.get_by_role("heading", name="Worklist").hover()
    browser.wait_until(
        f"document.querySelector('#worklist-table tbody tr')?.dataset.studyId === '{urgent.pk}'", timeout=3
    )
    assert _row_ids(page) == [str(urgent.pk), *(str(study.pk) for study in studies)]
    assert page.locator("[data-worklist-apply]").is_hidden()
    _thumbnails_loaded(browser)
    browser.shot("live-worklist-after-pointer-left", full_page=False)

    # The same for the keyboard: a change waits while a row's link has the focus, which stays put.
    link = page.get_by_role("link", name="HOLD-1")
    link.focus()
    late = _flagged("HOLD-LATE", 0.995)
    browser.wait_until("document.getElementById('worklist-table').dataset.pending === 'true'", timeout=8)
    assert page.evaluate("document.activeElement.textContent") == "HOLD-1"
    page.get_by_label("Search").focus()
    browser.wait_until(
        f"document.querySelector('#worklist-table tbody tr')?.dataset.studyId === '{late.pk}'", timeout=3
    )
    assert page.evaluate("document.activeElement.id") == "id_q"
    _thumbnails_loaded(browser)
