"""The radiologist's reading flow by keyboard alone, measured: 20 flagged studies reviewed from the
worklist with "n", "c", "o" + a typed reason + Ctrl+Enter, each landing on the next study in worklist
order; every study reviewed exactly once, with its audit event. Then the shortcut list ("?", Escape),
the image keys (j / k → viewer:step), an indeterminate study (no "c"), and staff, who get no review
keys, at a tablet's 768x1024. Any console error, CSP violation or failed request fails the test
(tests/browser/conftest.py).
"""

import re
import time
from collections import Counter

import pytest

from studies.models import AuditEvent, ImageStatus, Review, Study
from tests.browser.conftest import ARTIFACTS, DESKTOP, TABLET
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
STUDIES = 20
OVERRIDDEN = {4, 11, 17}  # positions in the worklist order (0-based) the radiologist overrides
REASON = "Growth plate, not a fracture"
ALL_REVIEWED = "All studies with a model result are reviewed"


def _flagged(accession: str, probability: float, image: int = 0, **result) -> Study:
    study = StudyFactory(accession_number=accession, status=Study.Status.PREDICTED)
    RadiographFactory(
        study=study, content=WRIST_JPEG[image % len(WRIST_JPEG)].read_bytes(), status=ImageStatus.DONE
    )
    StudyResultFactory(study=study, abnormal_probability=probability, demo=True, **result)
    return study


class Keyboard:
    """Presses keys on the page and counts them: shortcuts (a chord is one press) and characters typed."""

    def __init__(self, page) -> None:
        self.page = page
        self.presses = 0
        self.characters = 0

    def press(self, key: str) -> None:
        self.presses += 1
        self.page.keyboard.press(key)

    def type(self, text: str) -> None:
        self.characters += len(text)
        self.page.keyboard.type(text)


def _exactly(key: str) -> re.Pattern:
    return re.compile(f"^{re.escape(key)}$")


def _study_ready(browser, study: Study) -> None:
    """The study's page is shown and has loaded what it asked for (as a radiologist would look first)."""
    browser.page.wait_for_url(f"**/studies/{study.pk}/")
    browser.page.locator("#review-form").wait_for()
    browser.settle()


def test_twenty_flagged_studies_reviewed_by_keyboard(open_page, capsys):
    # Distinct probabilities: the worklist order (and so the reading order) is the creation order.
    studies = [_flagged(f"READ-{n:02d}", 0.99 - n / 100, image=n) for n in range(STUDIES)]
    UserFactory(username="rita", role="radiologist")
    browser = open_page(DESKTOP)
    page = browser.page
    browser.login("rita", PASSWORD)
    browser.wait_until("[...document.images].every(i => i.complete)")
    browser.settle()
    keys = Keyboard(page)

    started = time.monotonic()
    keys.press("n")  # Start reading
    for position, study in enumerate(studies):
        _study_ready(browser, study)
        if position in OVERRIDDEN:
            keys.press("o")
            assert page.evaluate("document.activeElement.name") == "comment"
            assert page.locator("#override-fields").is_visible()
            assert page.locator("#final-label-normal").is_checked()
            keys.type(REASON)
            if position == 11:
                browser.shot("reading-flow-midway-override", full_page=False)
            keys.press("Control+Enter")
        else:
            keys.press("c")
    page.wait_for_url(lambda url: "/studies/" not in url)
    elapsed = time.monotonic() - started

    assert page.get_by_text(ALL_REVIEWED).is_visible()
    browser.wait_until("[...document.images].every(i => i.complete)")
    browser.settle()
    browser.shot("reading-flow-done-worklist", full_page=False)
    reviews = Counter(Review.objects.values_list("study_id", flat=True))
    assert reviews == Counter({study.pk: 1 for study in studies}), "every study reviewed exactly once"
    for position, study in enumerate(studies):
        review = Review.objects.get(study=study)
        if position in OVERRIDDEN:
            assert (review.decision, review.final_label, review.comment) == ("override", "normal", REASON)
        else:
            assert (review.decision, review.final_label) == ("confirm", "abnormal")
    audited = Counter(AuditEvent.objects.filter(action="study.reviewed").values_list("study_id", flat=True))
    assert audited == Counter({study.pk: 1 for study in studies}), "one audit event per review"
    assert page.locator('#worklist-table [data-flag="flagged"]').count() == 0

    line = (
        f"READING FLOW: {STUDIES} studies, {elapsed:.1f} s, {elapsed / STUDIES:.2f} s/study, "
        f"{keys.presses} shortcut presses, {keys.presses / STUDIES:.2f} presses/study, "
        f"{keys.characters} characters typed ({len(OVERRIDDEN)} overrides with a reason)"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "reading-flow.txt").write_text(line + "\n")
    with capsys.disabled():
        print(f"\n{line}")
    # One key per confirmation, two per override (o, Ctrl+Enter) and one to start.
    assert keys.presses == 1 + (STUDIES - len(OVERRIDDEN)) + 2 * len(OVERRIDDEN)


def test_shortcut_help_image_keys_and_an_indeterminate_study_on_a_tablet(open_page):
    unsure = _flagged("READ-UNSURE", 0.5, image=1, indeterminate=(0.35, 0.65))
    flagged = _flagged("READ-FLAG", 0.9, image=2)
    UserFactory(username="rita", role="radiologist")
    UserFactory(username="stella", role="staff")
    browser = open_page(TABLET)
    page = browser.page
    browser.login("rita", PASSWORD)
    browser.settle()

    page.keyboard.press("?")
    assert page.get_by_test_id("shortcuts-table").is_visible()
    browser.shot("reading-shortcuts-worklist-tablet", full_page=False)
    page.keyboard.press("Escape")
    assert page.get_by_test_id("shortcuts-table").is_hidden()

    page.keyboard.press("n")  # flagged first
    _study_ready(browser, flagged)
    page.keyboard.press("?")
    table = page.get_by_test_id("shortcuts-table")
    assert table.is_visible()
    for key in ("j", "k", "c", "o", "n", "?", "Esc"):
        assert table.locator("kbd", has_text=_exactly(key)).count() >= 1, key
    browser.shot("reading-shortcuts-study-tablet", full_page=False)
    page.keyboard.press("Escape")
    assert table.is_hidden()

    # j / k ask the image viewer for the next / previous image.
    page.evaluate(
        "window.steps = []; document.addEventListener('viewer:step', e => window.steps.push(e.detail.delta))"
    )
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert page.evaluate("window.steps") == [1, -1]
    # A key typed into a field is text, not a command.
    page.keyboard.press("o")
    page.keyboard.type("j")
    assert page.evaluate("window.steps") == [1, -1]
    assert page.locator("#id_comment").input_value() == "j"
    page.keyboard.press("Escape")  # cancels the override, leaves the field
    assert page.locator("#override-fields").is_hidden()
    assert page.evaluate("document.activeElement === document.body")

    page.keyboard.press("n")  # skip without reviewing: the indeterminate study is next
    _study_ready(browser, unsure)
    assert not Review.objects.filter(study=flagged).exists()
    page.keyboard.press("c")
    status = page.locator("[data-reading-status]")
    assert status.is_visible() and "Nothing to confirm" in status.inner_text()
    # Below the images on a tablet: the answer scrolls into view.
    browser.wait_until(
        "(r => r.top >= 0 && r.bottom <= innerHeight)"
        "(document.querySelector('[data-reading-status]').getBoundingClientRect())"
    )
    browser.shot("reading-indeterminate-no-confirm-tablet", full_page=False)
    page.keyboard.press("o")
    assert page.evaluate("document.activeElement.id") == "final-label-abnormal"
    page.keyboard.press("ArrowRight")  # Normal
    page.keyboard.press("Enter")
    _study_ready(browser, flagged)  # the skipped study comes back
    review = Review.objects.get(study=unsure)
    assert (review.decision, review.final_label) == ("rule", "normal")

    staff = open_page(TABLET)
    staff.login("stella", PASSWORD)
    assert staff.page.get_by_test_id("start-reading").count() == 0
    staff.goto(f"/studies/{flagged.pk}/")
    staff.settle()
    staff.page.keyboard.press("c")
    staff.page.keyboard.press("n")
    staff.page.wait_for_timeout(300)
    assert staff.page.url.endswith(f"/studies/{flagged.pk}/")
    assert not Review.objects.filter(study=flagged).exists()
    staff.page.keyboard.press("?")
    keys = staff.page.get_by_test_id("shortcuts-table")
    assert keys.locator("kbd", has_text=_exactly("j")).count() == 1
    assert keys.locator("kbd", has_text=_exactly("c")).count() == 0
    assert keys.locator("kbd", has_text=_exactly("n")).count() == 0
