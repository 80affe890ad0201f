"""The API schema tells the truth: Schemathesis (a third-party OpenAPI fuzzer) runs against the
live server as staff, radiologist and admin, and every answer must be documented in
`/api/v1/schema/` (status, content type and body), with no server error.

Bounded: a few examples per operation and a deadline per role, well under a minute in all.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import WebServer
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.integration

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 5
ROLE_DEADLINE_SECONDS = 120


def schemathesis_cli() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("schemathesis is not installed (requirements-dev.txt)")
    return found


def token(server: WebServer, username: str) -> str:
    answer = requests.post(
        f"{server.url}/api/v1/auth/token/", json={"username": username, "password": PASSWORD}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


@pytest.mark.parametrize("role", ["staff", "radiologist", "admin"])
def test_every_answer_of_the_api_is_what_its_schema_documents(role, transactional_db, web_server, tmp_path):
    cli = schemathesis_cli()
    UserFactory(username=f"schema-{role}", role=role)
    header = f"Authorization: Token {token(web_server, f'schema-{role}')}"
    schema = requests.get(
        f"{web_server.url}/api/v1/schema/?format=json", headers=dict([header.split(": ", 1)]), timeout=30
    )
    assert schema.status_code == 200, schema.text
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema.json()))

    run = subprocess.run(
        [
            cli, "run", str(schema_file), "--url", web_server.url, "--checks", CHECKS, "--header", header,
            "--max-examples", str(MAX_EXAMPLES), "--seed", "11", "--request-timeout", "30",
            "--report", "junit", "--report-dir", str(tmp_path),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=ROLE_DEADLINE_SECONDS,
    )  # fmt: skip

    assert run.returncode == 0, f"Schemathesis as {role}:\n{run.stdout[-12000:]}\n{run.stderr[-2000:]}"
    assert "0 generated" not in run.stdout
