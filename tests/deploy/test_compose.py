"""docker/compose.yaml and the Dockerfiles: what `docker compose up` would run, checked without Docker."""

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import get_commands

from tests.conftest import REPO_ROOT
from tests.deploy.stack import (
    DOCKER_DIR,
    MissingVariable,
    command_of,
    copy_sources,
    dockerfile_instructions,
    dockerignore_allows,
    interpolate,
    load_compose,
    option,
    service_environment,
    site_env,
)

COMPOSE = load_compose()
SERVICES = COMPOSE["services"]
# Services of the application images (built from the repository root), not postgres/redis/nginx.
APP_SERVICES = [
    name for name, service in SERVICES.items() if (service.get("build") or {}).get("context") == ".."
]
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|_AUTH$")
REQUIRED_REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}$")


def _healthcheck(name: str) -> dict:
    return SERVICES[name].get("healthcheck") or {}


def _is_one_shot(name: str) -> bool:
    return str(SERVICES[name].get("restart", "")) == "no"


def _dockerfiles() -> list[tuple[str, Path, Path]]:
    """(service, Dockerfile, build context) for every service that is built here."""
    built = []
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            context = (DOCKER_DIR / build["context"]).resolve()
            built.append((name, context / build.get("dockerfile", "Dockerfile"), context))
    return built


def test_the_stack_has_every_production_service():
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "nginx"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_long_running_service_has_a_health_check(name):
    check = _healthcheck(name)
    if _is_one_shot(name):
        # A one-shot job exits; it must not inherit the web image's HTTP probe.
        assert check.get("disable") is True
        return
    assert not check.get("disable")
    assert check.get("test"), f"{name} has no health check"
    assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_health_checks_probe_what_each_service_does():
    probes = {name: " ".join(_healthcheck(name).get("test", [])) for name in SERVICES}
    assert "pg_isready" in probes["postgres"]
    assert "redis-cli ping" in probes["redis"]
    assert "curl" in probes["web"] and "/healthz" in probes["web"]
    assert "/nginx-health" in probes["nginx"]
    assert "dicom_receiver --healthcheck --port 11112" in probes["dicom-receiver"]
    for name in SERVICES:
        argv = command_of(SERVICES[name])
        if "worker" in argv:
            # The ping must address this worker's own node name, or it checks some other worker.
            node = option(argv, "-n", "--hostname").replace("%h", "$${HOSTNAME}")
            assert "inspect ping" in probes[name] and node in probes[name], name
        if "beat" in argv:
            assert option(argv, "--schedule", "-s") in probes[name]


def test_web_probe_sends_an_allowed_host():
    # Django answers 400 to a Host outside ALLOWED_HOSTS, which would mark web unhealthy forever.
    probe = interpolate(SERVICES["web"]["healthcheck"]["test"][1], environ={})
    host_expression = re.search(r"Host: (\$\{[^}]+\})", probe).group(1)
    allowed = service_environment(SERVICES["web"], environ=site_env(MSKDETECT_HOSTNAME="a.example"))
    shell = subprocess.run(
        ["sh", "-c", f'echo "{host_expression}"'],
        env={"DJANGO_ALLOWED_HOSTS": allowed["DJANGO_ALLOWED_HOSTS"] + ",b.example"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.strip() == "a.example"


def test_the_gpu_worker_reserves_one_nvidia_gpu_and_takes_one_job_at_a_time():
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    argv = command_of(worker)
    assert argv[:5] == ["celery", "-A", "mskdetect", "worker", "-Q"]
    assert option(argv, "-Q") == "inference"
    assert option(argv, "--concurrency", "-c") == "1"
    assert option(argv, "--prefetch-multiplier") == "1"
    assert worker["build"]["dockerfile"] == "docker/worker-gpu.Dockerfile"


def test_every_task_queue_has_a_worker_and_there_is_exactly_one_beat():
    default_services = [name for name, service in SERVICES.items() if not service.get("profiles")]
    consumed = set()
    beats = 0
    for name in default_services:
        argv = command_of(SERVICES[name])
        if argv[:3] == ["celery", "-A", "mskdetect"] and argv[3] == "worker":
            consumed.update(option(argv, "-Q", "--queues").split(","))
        if argv[:4] == ["celery", "-A", "mskdetect", "beat"]:
            beats += 1
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed, "no task routes configured"
    assert routed <= consumed, f"queues with no worker: {routed - consumed}"
    assert beats == 1


def test_postgres_and_redis_are_not_published_and_only_nginx_and_the_dicom_receiver_have_ports():
    for name, service in SERVICES.items():
        ports = service.get("ports") or []
        published = {interpolate(str(port), environ={}).split(":")[-1] for port in ports}
        if name == "nginx":
            assert published == {"80", "443"}
        elif name == "dicom-receiver":
            # The container port the receiver listens on (its command's --port).
            assert published == {option(command_of(service), "--port")} == {"11112"}
        else:
            assert not ports, f"{name} publishes {ports}"
    assert "expose" not in SERVICES["postgres"] and "expose" not in SERVICES["redis"]


def _environments() -> list[tuple[str, str, object]]:
    return [
        (service_name, key, value)
        for service_name, service in SERVICES.items()
        for key, value in (service.get("environment") or {}).items()
    ]


def test_secrets_are_never_literal_values():
    for service_name, key, value in _environments():
        if SECRET_NAME.search(key):
            # Either required from .env (compose stops if it is missing) or passed through when set.
            assert value is None or REQUIRED_REFERENCE.match(str(value)), f"{service_name}.{key} = {value!r}"
        if isinstance(value, str) and "://" in value:
            # Interpolated with marker passwords: any password in the URL must be one of them.
            markers = {"POSTGRES_PASSWORD": "marker-pg", "REDIS_PASSWORD": "marker-redis"}
            url = urlsplit(interpolate(value, environ=site_env(**markers)))
            assert url.password in (None, *markers.values()), f"{service_name}.{key} embeds a password"


@pytest.mark.parametrize(
    "missing", ["DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "MSKDETECT_HOSTNAME"]
)
def test_compose_refuses_to_start_without_each_secret(missing):
    environ = site_env()
    del environ[missing]
    with pytest.raises(MissingVariable, match=missing):
        for name in SERVICES:
            service_environment(SERVICES[name], environ=environ)


def test_the_env_template_holds_no_secret_values():
    for line in (DOCKER_DIR / "env.example").read_text(encoding="utf-8").splitlines():
        name, _, value = line.lstrip("# ").partition("=")
        if SECRET_NAME.search(name) and "=" in line:
            assert value.split("#")[0].strip() == "", f"env.example gives {name} a value"


def test_the_database_is_not_named_like_a_test_database():
    # The audit trigger lets TRUNCATE through on databases named test_*: production must not be one.
    database = urlsplit(service_environment(SERVICES["web"], environ=site_env())["DATABASE_URL"]).path
    assert not database.lstrip("/").startswith("test_")


def test_only_the_one_shot_migrate_service_migrates_and_the_app_waits_for_it():
    for name in SERVICES:
        argv = command_of(SERVICES[name])
        if "migrate" in argv:
            assert name == "migrate" and _is_one_shot(name)
    for name in APP_SERVICES:
        if name != "migrate":
            depends = SERVICES[name]["depends_on"]
            assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
            assert depends["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_command_exists_in_the_project(name):
    argv = command_of(SERVICES[name])
    program = argv[0]
    if program == "python":
        assert argv[1] == "manage.py" and (REPO_ROOT / "manage.py").is_file()
        assert argv[2] in get_commands(), f"manage.py has no {argv[2]!r} command"
    elif program == "gunicorn":
        module, _, attribute = argv[1].partition(":")
        spec = importlib.util.find_spec(module)
        assert spec and spec.origin
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        assigned = {
            target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
        }
        assert attribute in assigned
    elif program == "celery":
        from celery.app.utils import find_app

        app = find_app(option(argv, "-A", "--app"))
        assert app.main == "mskdetect"
    else:
        pytest.fail(f"{name} runs {program!r}, which this test does not know")


def test_models_are_mounted_read_only_where_inference_and_health_read_them():
    for name in ("web", "worker", "worker-cpu"):
        service = SERVICES[name]
        environment = service_environment(service, environ=site_env())
        assert environment["MSKDETECT_MODEL_DIR"] == "/models"
        mounts = [str(volume) for volume in service["volumes"]]
        assert any(mount.endswith(":/models:ro") for mount in mounts), name
        host = interpolate(next(m for m in mounts if m.endswith(":/models:ro")).rsplit(":", 2)[0], environ={})
        assert (DOCKER_DIR / host).resolve() == REPO_ROOT / "models"


def test_app_services_share_the_media_volume_that_nginx_reads():
    media_root = service_environment(SERVICES["web"], environ=site_env())["MEDIA_ROOT"]
    for name in APP_SERVICES:
        assert f"media:{media_root}" in SERVICES[name]["volumes"], name
    assert f"media:{media_root}:ro" in SERVICES["nginx"]["volumes"]
    assert "media" in COMPOSE["volumes"]


@pytest.mark.parametrize(("service", "dockerfile", "context"), _dockerfiles(), ids=lambda v: str(v))
def test_dockerfile_copy_sources_exist_in_the_build_context(service, dockerfile, context):
    assert dockerfile.is_file()
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for instruction in dockerfile_instructions(dockerfile):
        if instruction.keyword != "COPY":
            continue
        for source in copy_sources(instruction):
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            if ignore_file.exists():
                assert dockerignore_allows(ignore_file=ignore_file, path=source), f"{source} is dockerignored"


@pytest.mark.parametrize("dockerfile", ["web.Dockerfile", "worker-gpu.Dockerfile"])
def test_app_images_run_as_a_non_root_user_through_the_entrypoint(dockerfile):
    instructions = dockerfile_instructions(DOCKER_DIR / dockerfile)
    keywords = [instruction.keyword for instruction in instructions]
    users = [instruction.arguments for instruction in instructions if instruction.keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert instructions[0].arguments.startswith("python:3.11-slim")
    entrypoint = json.loads(next(i.arguments for i in instructions if i.keyword == "ENTRYPOINT"))
    script = DOCKER_DIR / Path(entrypoint[0]).name
    assert entrypoint == ["/app/docker/entrypoint.sh"] and os.access(script, os.X_OK)
    healthcheck = next(i.arguments for i in instructions if i.keyword == "HEALTHCHECK")
    assert ("/healthz" in healthcheck) if dockerfile == "web.Dockerfile" else ("inspect ping" in healthcheck)


def test_scripts_that_services_run_exist_and_are_executable():
    for name in SERVICES:
        for part in SERVICES[name].get("healthcheck", {}).get("test", []):
            for word in shlex.split(str(part)):
                if word.startswith("/app/docker/"):
                    script = DOCKER_DIR / Path(word).name
                    assert os.access(script, os.X_OK), word
                    assert any(
                        word.removeprefix("/app/") in copy_sources(instruction)
                        for instruction in dockerfile_instructions(DOCKER_DIR / "web.Dockerfile")
                        if instruction.keyword == "COPY"
                    ), f"{word} is not copied into the image"


def test_the_gpu_image_installs_the_tensorflow_version_pinned_in_requirements():
    pinned = re.search(r"^tensorflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    instructions = dockerfile_instructions(DOCKER_DIR / "worker-gpu.Dockerfile")
    assert f"TENSORFLOW_VERSION={pinned}" in [i.arguments for i in instructions if i.keyword == "ARG"]
    assert any('"tensorflow[and-cuda]==${TENSORFLOW_VERSION}"' in i.arguments for i in instructions)


def _subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    # Only what the container would have, plus what a Python process needs to start here.
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }


def test_static_files_collect_with_the_build_time_environment(tmp_path):
    run = next(
        i.arguments
        for i in dockerfile_instructions(DOCKER_DIR / "web.Dockerfile")
        if i.keyword == "RUN" and "collectstatic" in i.arguments
    )
    words = shlex.split(run)
    build_env = dict(word.split("=", 1) for word in words[: words.index("python")])
    image_env = next(
        i.arguments for i in dockerfile_instructions(DOCKER_DIR / "web.Dockerfile") if i.keyword == "ENV"
    )
    settings_module = dict(word.split("=", 1) for word in image_env.split())["DJANGO_SETTINGS_MODULE"]
    result = subprocess.run(
        [sys.executable, "manage.py", *words[words.index("manage.py") + 1 :]],
        cwd=REPO_ROOT,
        env=_subprocess_env(
            {**build_env, "DJANGO_SETTINGS_MODULE": settings_module, "STATIC_ROOT": str(tmp_path / "static")}
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    assert "admin/css/base.css" in manifest["paths"]


@pytest.mark.parametrize(
    "storage_env",
    [{}, {"MSKDETECT_STORAGE": "s3", "AWS_STORAGE_BUCKET_NAME": "mskdetect-media"}],
    ids=["media-volume", "s3"],
)
def test_production_settings_with_the_compose_environment_pass_check_deploy(storage_env):
    environment = service_environment(SERVICES["web"], environ=site_env(**storage_env))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=_subprocess_env(environment),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "System check identified no issues" in output
    assert "WARNING" not in output and "?: (security." not in output
