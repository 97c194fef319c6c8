"""Confinement of a dataset's paths to its root folder.

A path written in a dataset's CSVs must stay inside the dataset folder: an absolute path, a
``..`` that leaves the root, or a symbolic link (of the file or of a folder on its way) that
resolves outside the root is refused, unless the user opts in (``allow_outside_paths=True``,
CLI ``--allow-outside-paths``). Without the rule a dataset folder could make a command read,
and copy into a run or a TFDS build, any file the user can read. Paths are judged lexically
first (so the message quotes what the CSV says), then resolved.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.table import Row

__all__ = ["OPT_IN", "check_inside", "confined", "is_file"]

OPT_IN = "pass --allow-outside-paths (allow_outside_paths=True) to read it anyway"
"""The advice every refusal ends with."""


def is_file(path: Path, row: Row, column: str) -> bool:
    """Whether ``path`` is a file; an unusable name (too long, NUL) fails naming ``row``."""
    try:
        return path.is_file()
    except (OSError, ValueError) as e:
        raise row.fail(f"{column} {str(path)!r} is not a usable path ({e})") from None


def confined(root: Path, rel: str, row: Row, column: str, allow: bool) -> Path:
    """``root / rel`` after checking that it stays inside ``root`` (module docstring)."""
    if not rel:
        raise row.fail(f"empty {column!r}")
    if any(ord(c) < 32 for c in rel):
        raise row.fail(f"{column} {rel!r} contains a control character")
    absolute = rel.startswith(("/", "\\")) or os.path.isabs(rel) or rel[1:2] == ":"
    if absolute and not allow:
        raise row.fail(
            f"{column} {rel!r} is an absolute path; paths must be relative to {root} ({OPT_IN})"
        )
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if not absolute and (norm == ".." or norm.startswith("../")) and not allow:
        raise row.fail(f"{column} {rel!r} escapes the dataset root {root} ({OPT_IN})")
    path = root / rel
    if not allow:
        check_inside(root, path, f"{row}: {column} {rel!r}")
    return path


def check_inside(root: Path, path: Path, what: str) -> None:
    """Raises unless ``path``, links resolved, lies inside ``root``; ``what`` starts the message."""
    try:
        real = path.resolve()
        inside = real.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError) as e:  # link loops, odd names
        raise DatasetError(f"{what}: cannot be resolved ({e})") from None
    if not inside:
        raise DatasetError(
            f"{what}: a symbolic link resolves to {real}, outside the dataset root {root} "
            f"({OPT_IN})"
        )
