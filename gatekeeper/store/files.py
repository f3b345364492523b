"""Writing files safely: check a destination before long work, and replace a file whole or not at all."""

from __future__ import annotations

import os
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_writable(path: Path, folder: bool = False) -> None:
    """Raise :class:`OSError` if ``path`` could not be written; creates nothing.

    ``path`` is a file to create or replace, or with ``folder`` a folder to
    write files into; folders that do not exist yet count as writable when
    their nearest existing parent is.
    """
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    start = path if folder else path.parent
    existing = next(parent for parent in (start, *start.parents) if parent.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file")
    with tempfile.TemporaryFile(dir=existing):
        pass


@contextmanager
def atomic_replace(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` to write; on a normal exit it replaces ``path``, on an error it is removed.

    Missing folders are created. Readers see the old file or the new one, never a part.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
