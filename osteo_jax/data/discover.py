"""Finding the radiographs of a screening run: folders walked recursively, formats by content.

:func:`find_images` turns the command line's inputs (folders, image files, and text files
listing paths one per line) into one sorted list of image paths. A file inside a folder is
taken when its first bytes say DICOM, PNG or TIFF (the checks of
:func:`osteo_jax.data.imageio.read_image`), whatever its name: hospital exports often have no
extension. A file named directly on the command line is always taken, so that a file that is
not an image gets an error row in the results instead of silently disappearing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from osteo_jax.data.errors import DatasetError

__all__ = ["LIST_SUFFIXES", "find_images", "looks_like_image"]

#: Suffixes of text files read as lists of paths (one per line, ``#`` starts a comment).
LIST_SUFFIXES = (".txt", ".lst", ".list")

_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*")


def looks_like_image(path: str | os.PathLike) -> bool:
    """True when the file's first bytes are those of a DICOM, PNG or TIFF file.

    DICOM is recognised by its ``DICM`` marker at byte 128 or a ``.dcm`` / ``.dicom`` name
    (files written without the preamble); an unreadable file is not an image.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return (
        head[128:132] == b"DICM"
        or p.suffix.lower() in (".dcm", ".dicom")
        or head.startswith(_PNG)
        or head[:4] in _TIFF
    )


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the list of images ({e})") from e
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The image paths named by ``inputs``, each once, in sorted order.

    Args:
      inputs: folders (walked recursively, hidden entries skipped, files kept by content),
        image files (kept as given), and ``.txt`` / ``.lst`` / ``.list`` files whose lines
        are paths (relative ones to the list's folder).

    Returns:
      Sorted, de-duplicated paths.

    Raises:
      DatasetError: an input does not exist, or a list cannot be read; the message names it.
    """
    found: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    f = Path(root) / name
                    if not name.startswith(".") and looks_like_image(f):
                        found.add(f)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not looks_like_image(p):
            found.update(_read_list(p))
        elif p.exists():
            found.add(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    return sorted(found)
