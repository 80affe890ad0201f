"""Reading docker/compose.yaml, its Dockerfiles and nginx.conf the way Docker and nginx would.

There is no Docker engine where the tests run, so this module implements the parts of compose's
variable interpolation, Dockerfile syntax and nginx's block syntax that the tests need.
"""

import re
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
NGINX_CONF = DOCKER_DIR / "nginx.conf"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(KeyError):
    """A `${NAME:?message}` variable is unset: compose refuses to start."""


def interpolate(value: str, *, environ: dict[str, str]) -> str:
    """Substitute variables as `docker compose` does."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = environ.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and unset_or_empty:
            return interpolate(arg, environ=environ)
        return current or ""

    return _VARIABLE.sub(substitute, value)


def load_compose() -> dict[str, Any]:
    """The compose file as YAML (merge keys resolved), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def site_env(**overrides: str) -> dict[str, str]:
    """What an operator puts in docker/.env, with freshly generated secrets."""
    values = {
        "MSKDETECT_HOSTNAME": "mskdetect.hospital.example",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "POSTGRES_PASSWORD": secrets.token_hex(32),
        "REDIS_PASSWORD": secrets.token_hex(32),
    }
    values.update(overrides)
    return values


def service_environment(service: dict[str, Any], *, environ: dict[str, str]) -> dict[str, str]:
    """The environment a container gets: interpolated values; bare names pass through when set."""
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) if "=" in item else (item, None) for item in declared)
    resolved: dict[str, str] = {}
    for name, value in declared.items():
        if value is None:
            if name in environ:
                resolved[name] = environ[name]
        else:
            resolved[name] = interpolate(str(value), environ=environ)
    return resolved


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(argv: list[str], *names: str) -> str | None:
    """The value of `--name value` / `-n value` in an argument list."""
    for index, part in enumerate(argv[:-1]):
        if part in names:
            return argv[index + 1]
    return None


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def copy_sources(instruction: Instruction) -> list[str]:
    """Source paths of a COPY from the build context (empty for COPY --from=stage)."""
    parts = shlex.split(instruction.arguments)
    if any(part.startswith("--from") for part in parts):
        return []
    paths = [part for part in parts if not part.startswith("--")]
    return paths[:-1]


def dockerignore_allows(*, ignore_file: Path, path: str) -> bool:
    """Whether an allow-list .dockerignore (`**` then `!path` lines) lets `path` into the context."""
    allowed = False
    for raw in ignore_file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "**":
            allowed = False
        elif line.startswith("!"):
            pattern = line[1:].rstrip("/")
            if path.rstrip("/") == pattern or path.startswith(pattern + "/"):
                allowed = True
    return allowed


@dataclass
class Block:
    """One nginx block: its directives as (name, args) and its child blocks."""

    name: str
    args: list[str]
    directives: list[tuple[str, list[str]]]
    children: list["Block"]

    def directive(self, name: str) -> list[list[str]]:
        return [args for key, args in self.directives if key == name]

    def find(self, name: str, *args: str) -> list["Block"]:
        """Every block below this one named `name` (and with these arguments, if given)."""
        found = []
        for child in self.children:
            if child.name == name and (not args or child.args == list(args)):
                found.append(child)
            found.extend(child.find(name, *args))
        return found


_NGINX_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|#[^\n]*|[{};]|[^\s{};\"'#]+")


def parse_nginx(text: str) -> Block:
    """nginx configuration syntax: directives end in `;`, blocks are `name args { ... }`."""
    root = Block("main", [], [], [])
    stack = [root]
    words: list[str] = []
    for token in _NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == "{":
            block = Block(words[0], words[1:], [], [])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            stack.pop()
        elif token == ";":
            stack[-1].directives.append((words[0], words[1:]))
            words = []
        else:
            words.append(token.strip("\"'") if token[0] in "\"'" else token)
    if len(stack) != 1 or words:
        raise ValueError("unbalanced braces or a directive without `;`")
    return root
