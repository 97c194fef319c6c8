"""The one CSV reader of the package: encoding, dialect and row shape checked, rows located.

Every CSV the package reads, the dataset tables (``subjects.csv``, ``images.csv``) and its
own outputs alike, goes through :func:`read_table` (:func:`osteo_jax.data.folder.read_csv` is a
thin wrapper over it). The rules:

* **Encoding.** UTF-8. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted and dropped.
  A UTF-16 or UTF-32 byte-order mark, or bytes that are not valid UTF-8 (typically Latin-1 /
  Windows-1252 exports), are refused with the encoding or the line of the first bad byte
  named, and the advice to save the file as UTF-8.
* **Dialect.** Comma-separated with double-quote quoting (RFC 4180). A header that reads as
  one column holding ``;`` or tabs is refused as "semicolon/tab-separated" rather than as a
  missing column.
* **Header.** Present; names are stripped of surrounding spaces; no duplicates; the
  ``required`` columns present.
* **Rows.** No row has more fields than the header (fewer: the missing cells are empty); cells
  are stripped of surrounding spaces; blank lines are skipped.

Rows are located as ``data row N`` (1-based, the header not counted) and ``line M`` (the
physical line, the header being line 1), so an editor's or a spreadsheet's row number finds it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

from osteo_jax.data.errors import DatasetError

__all__ = ["Row", "Table", "read_table"]

_UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
)


@dataclasses.dataclass(frozen=True)
class Row:
    """Location of one CSV data row, for messages.

    Attributes:
      file: the CSV file.
      index: data row number, 1-based, the header not counted.
      line: physical line of the row's end, the header being line 1.
    """

    file: Path
    index: int
    line: int

    def __str__(self) -> str:
        return f"{self.file}: data row {self.index} (line {self.line})"

    def fail(self, problem: str) -> DatasetError:
        """A :class:`DatasetError` naming this row and ``problem``."""
        return DatasetError(f"{self}: {problem}")


@dataclasses.dataclass(frozen=True)
class Table:
    """A checked CSV: its header and its rows (stripped strings, never None)."""

    path: Path
    header: tuple[str, ...]
    rows: tuple[tuple[Row, dict[str, str]], ...]

    @property
    def records(self) -> list[dict[str, str]]:
        """The rows as dicts, without their locations."""
        return [rec for _, rec in self.rows]


def _decode(path: Path, data: bytes) -> str:
    """The text of a CSV file: UTF-8, with an optional UTF-8 byte-order mark dropped."""
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            raise DatasetError(
                f"{path}: encoded as {name} (byte-order mark); save it as UTF-8 "
                "(e.g. 'CSV UTF-8' in a spreadsheet)"
            )
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}; "
            "a Latin-1 / Windows-1252 export?); save it as UTF-8"
        ) from None


def read_table(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Table:
    """Reads and checks a CSV file with a header (rules in the module docstring).

    Args:
      path: the CSV file.
      required: columns the header must have.

    Returns:
      A :class:`Table`.

    Raises:
      DatasetError: missing or unreadable file, another encoding than UTF-8, another
        delimiter, no header, duplicate or missing columns, a row with too many fields, or a
        malformed quote; the message names the file (and the row or line).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (required)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: unreadable CSV ({e})") from e
    text = _decode(path, data)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = reader.fieldnames
        if not header:
            raise DatasetError(f"{path}: empty file, no header line")
        header = [h.strip() for h in header]
        if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
            sep = "semicolon" if ";" in header[0] else "tab"
            raise DatasetError(
                f"{path}: line 1 (header): {sep}-separated; expected comma-separated values"
            )
        reader.fieldnames = header
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise DatasetError(f"{path}: line 1 (header): duplicate column(s) {dup}")
        for col in required:
            if col not in header:
                raise DatasetError(
                    f"{path}: line 1 (header): missing required column {col!r} (columns: {header})"
                )
        rows = []
        for i, rec in enumerate(reader, start=1):
            row = Row(path, i, reader.line_num)
            if None in rec:
                raise row.fail(
                    f"{len(header) + len(rec[None])} fields but the header has {len(header)}"
                )
            rows.append((row, {k: (v or "").strip() for k, v in rec.items()}))
    except csv.Error as e:
        raise DatasetError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e
    return Table(path, tuple(header), tuple(rows))
