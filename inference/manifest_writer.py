"""Editing ``models.toml`` without losing what people wrote in it.

The manifest is hand-edited (comments explain where the files come from), so one body part's entry
is changed through tomlkit, which round-trips comments, order and formatting of everything else.
Files are replaced atomically (temp file in the same folder, then ``os.replace``): a reader sees
the old manifest or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Item, Table

from inference.registry import MANIFEST_NAME, ManifestError

# Key order of a newly written entry: as in the design's example and the shipped models.toml.
ENTRY_KEYS = (
    "file",
    "name",
    "preprocessing",
    "labels",
    "output",
    "threshold",
    "indeterminate",
    "sha256",
    "demo",
)
NEW_MANIFEST_HEADER = (
    "Body part -> model file (relative to this folder), written by `manage.py install_model`.",
    "Edit freely: the command keeps other entries and comments.",
)


def read_manifest_text(*, model_dir: Path) -> str | None:
    """The manifest's text as it is on disk, or None when the model dir has none."""
    try:
        return (model_dir / MANIFEST_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def with_entry(*, text: str | None, body_part: str, entry: Mapping[str, object]) -> str:
    """``text`` with ``[body_part]`` set to ``entry``; other tables and all comments are kept.

    Keys of an existing entry are updated in place (so comments beside them stay), keys the new
    entry does not have are removed, and ``None`` values mean "leave the key out".
    """
    try:
        document = tomlkit.parse(text) if text is not None else _new_document()
    except TOMLKitError as exc:
        raise ManifestError(f"{MANIFEST_NAME} is not valid TOML, so it was left as it is: {exc}") from exc
    values = {key: value for key, value in _ordered(entry) if value is not None}
    table = document.get(body_part)
    if isinstance(table, Table):
        document[body_part] = _rewritten(table, values)
    else:
        fresh = tomlkit.table()
        for key, value in values.items():
            fresh.add(key, _item(value))
        if body_part in document:
            document[body_part] = fresh
        else:
            document.add(body_part, fresh)
    return tomlkit.dumps(document)


def _rewritten(table: Table, values: dict[str, object]) -> Table:
    """A copy of ``table`` holding ``values``: its comments, blank lines and header comment kept.

    A key that stays keeps its line (and the comment beside it); a new key goes where the canonical
    order puts it among the kept ones; comments after the last key (often about the next table)
    stay after it. Appending to the tomlkit table directly would put new keys after those comments.
    """
    body = table.value.body
    key_positions = [index for index, (key, _) in enumerate(body) if key is not None]
    split = key_positions[-1] + 1 if key_positions else 0
    head: list[tuple[str | None, object]] = []
    for key, item in body[:split]:
        if key is None:
            head.append((None, item))
        elif key.key in values:
            head.append((key.key, _item(values[key.key], like=item)))
    for key in [key for key in values if key not in {name for name, _ in head}]:
        head.insert(_position(head, key), (key, _item(values[key])))
    rewritten = Table(Container(), table.trivia, table.is_aot_element())
    for key, item in [*head, *((None, item) for _, item in body[split:])]:
        if key is None:
            rewritten.add(item)
        else:
            rewritten.add(key, item)
    return rewritten


def _position(head: list[tuple[str | None, object]], key: str) -> int:
    """Index before the first kept key that comes after ``key`` in ENTRY_KEYS; else after the last key."""
    rank = ENTRY_KEYS.index(key) if key in ENTRY_KEYS else len(ENTRY_KEYS)
    for index, (other, _) in enumerate(head):
        if other is not None and (ENTRY_KEYS.index(other) if other in ENTRY_KEYS else len(ENTRY_KEYS)) > rank:
            return index
    last_key = max((index for index, (other, _) in enumerate(head) if other is not None), default=-1)
    return last_key + 1


def _new_document() -> tomlkit.TOMLDocument:
    document = tomlkit.document()
    for line in NEW_MANIFEST_HEADER:
        document.add(tomlkit.comment(line))
    document.add(tomlkit.nl())
    return document


def _ordered(entry: Mapping[str, object]) -> list[tuple[str, object]]:
    known = [(key, entry[key]) for key in ENTRY_KEYS if key in entry]
    return known + [(key, value) for key, value in entry.items() if key not in ENTRY_KEYS]


def _item(value: object, *, like: Item | None = None) -> Item:
    if isinstance(value, list | tuple):
        item: Item = tomlkit.array()
        item.extend(value)
    else:
        item = tomlkit.item(value)
    if like is not None:  # keep the old line's indent and the comment beside it
        item.trivia.indent = like.trivia.indent
        item.trivia.comment_ws = like.trivia.comment_ws
        item.trivia.comment = like.trivia.comment
        item.trivia.trail = like.trivia.trail
    return item


def write_text_atomically(*, path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` in one step; the file keeps its permissions (new: 0644)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # readable by the web and worker processes, which may run as other users
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_manifest_text(*, model_dir: Path, text: str) -> Path:
    """Atomically replace ``models.toml`` in ``model_dir`` with ``text``."""
    return write_text_atomically(path=model_dir / MANIFEST_NAME, text=text)
