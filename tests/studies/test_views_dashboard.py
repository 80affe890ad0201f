"""The dashboard page: figures per body part and model version, charts' data, drift warning."""

import datetime
import json
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from studies.models import Study
from tests.factories import ReviewFactory, StudyResultFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(role="staff"))
    return client


def _results(n: int, *, probability: float, days_ago: int, version: str = "v" * 64) -> list:
    results = [StudyResultFactory(abnormal_probability=probability, model_version=version) for _ in range(n)]
    Study.objects.filter(pk__in=[r.study_id for r in results]).update(
        created_at=timezone.now() - datetime.timedelta(days=days_ago)
    )
    return results


def test_empty_dashboard(staff_client):
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert "No study has a model result yet." in html and "chart.umd.min.js" not in html


def test_agreement_figures_and_confusion_matrix(staff_client):
    results = _results(4, probability=0.9, days_ago=1)
    ReviewFactory(
        study=results[0].study, model_version="v" * 64, model_label="abnormal", final_label="abnormal"
    )
    ReviewFactory(
        study=results[1].study,
        model_version="v" * 64,
        decision="override",
        model_label="abnormal",
        final_label="normal",
        comment="x",
    )
    html = staff_client.get(reverse("dashboard")).content.decode()
    row = html.split('data-body-part="XR_WRIST"')[1]
    assert re.search(r'data-metric="sensitivity">100.0 %', row)
    assert re.search(r'data-metric="specificity">0.0 %', row)
    # Observed agreement 1/2 equals chance agreement (the model always says abnormal): kappa 0.
    assert re.search(r'data-metric="kappa">0.00', row)
    data = json.loads(
        re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', html).group(1)
    )
    assert data["flagged_rate"] == [1.0] and data["sensitivity"] == [1.0]


def test_kappa_is_a_dash_when_undefined(staff_client):
    results = _results(2, probability=0.9, days_ago=1)
    ReviewFactory(
        study=results[0].study, model_version="v" * 64, model_label="abnormal", final_label="abnormal"
    )
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert re.search(r'data-metric="kappa">—', html)


def test_drift_warning_when_the_last_week_differs(staff_client):
    _results(18, probability=0.1, days_ago=30)
    _results(2, probability=0.9, days_ago=30)
    _results(10, probability=0.9, days_ago=2)
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert 'data-testid="drift-warning"' in html
    assert "100.0 %" in html and "10.0 %" in html


def test_no_drift_warning_for_a_steady_rate(staff_client):
    _results(30, probability=0.1, days_ago=30)
    _results(10, probability=0.1, days_ago=2)
    assert 'data-testid="drift-warning"' not in staff_client.get(reverse("dashboard")).content.decode()


def test_dashboard_needs_a_clinical_role(client):
    client.force_login(UserFactory(role=None))
    assert client.get(reverse("dashboard")).status_code == 403
