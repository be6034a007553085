"""The rules every file the package reads or writes follows: atomic writes, the one YAML reader, run names, storage.

* Writers go through :func:`atomic_write` (a temp file beside the target, then ``os.replace``), so a kill leaves the
  old file or the new one, never half of one.
* Job, winner and search-space files are read by :func:`read_yaml`: UTF-8, a size cap, safe YAML with each key once
  and no aliases (an alias bomb is refused before it expands).
* A run name (job ``name:``, ``--name``, ``train --name``) is checked by :func:`check_run_name`.
* A storage folder is checked writable, by trying, before any Ray work (:func:`check_writable_folder`).
* What an error line echoes from user input is cut by :func:`clip`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from .errors import DaqSearchError

RUN_NAME_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,100}$"
"""A run name: 1 to 100 ASCII letters, digits, ``.``, ``_`` or ``-``; not ``.`` or ``..``."""
RUN_NAME_ALLOWED = "1 to 100 ASCII letters, digits, '.', '_' and '-', not '.' or '..'"
MAX_YAML_BYTES = 1 << 20
"""Job, winner and search-space files are small; a larger file is refused unread."""
ECHO_CHARS = 80
"""At most this many characters of user input appear in an error line."""
TMP_SUFFIX = ".tmp"


def clip(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with ``...``), for echoing user input in one error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_run_name(name: Any, field: str = "name") -> str:
    """``name`` when it is a valid run name (see :data:`RUN_NAME_PATTERN`); else a DaqSearchError naming ``field``."""
    if not isinstance(name, str) or re.fullmatch(RUN_NAME_PATTERN, name) is None:
        raise DaqSearchError(f"{field}: {clip(name)} is not allowed; allowed: {RUN_NAME_ALLOWED}")
    return name


def temp_path(path: Path) -> Path:
    """A fresh hidden temp file name beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file beside it, which then replaces ``path``.

    On any error the temp file is removed and ``path`` is left as it was. Returns ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(path: str | Path) -> None:
    """Remove temp files :func:`atomic_write` left beside ``path`` when a writer was killed mid-write."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        with suppress(OSError):
            stale.unlink()


def check_writable_folder(folder: str | Path, field: str) -> Path:
    """``folder`` as an absolute path, after proving that it (or, when it does not exist yet, its nearest existing
    parent) is a folder one can write to, by creating and deleting a probe file there (permission bits say nothing
    for root); else a DaqSearchError naming ``field``. Nothing is left behind."""
    folder = Path(folder).expanduser().resolve()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise DaqSearchError(f"{field}: {folder}: {existing} is a file, not a folder; allowed: a writable folder")
    probe = existing / f".write-probe.{uuid.uuid4().hex[:12]}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise DaqSearchError(
            f"{field}: {folder}: cannot write in {existing} ({err.strerror}); allowed: a writable folder"
        ) from None
    return folder


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key given twice and any alias (PyYAML keeps the last key silently, and
    aliases let a few hundred bytes expand into megabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {clip(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML document at ``path`` (``what`` names the kind of file in errors, e.g. "a job YAML file").

    One-line DaqSearchError when it is missing, not a regular file, over :data:`MAX_YAML_BYTES`, not UTF-8, or
    not YAML with each key once and no aliases.
    """
    path = Path(path)
    if not path.exists():
        raise DaqSearchError(f"{path}: no such file; allowed: {what}")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise DaqSearchError(f"{path}: larger than {MAX_YAML_BYTES} bytes; allowed: {what}")
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DaqSearchError(f"{path}: not UTF-8 text (byte {err.start}); allowed: {what}") from None
    except OSError as err:
        raise DaqSearchError(f"{path}: cannot read ({err.strerror}); allowed: {what}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        problem = " ".join(str(err.problem or err.context or "malformed").split())[:ECHO_CHARS]
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"
        raise DaqSearchError(
            f"{path}: {where}: malformed YAML: {problem}; allowed: valid YAML, each key once, no aliases"
        ) from None
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())[:ECHO_CHARS]
        raise DaqSearchError(f"{path}: malformed YAML: {problem}; allowed: {what}") from None
