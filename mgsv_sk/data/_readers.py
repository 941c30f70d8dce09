"""The readers of outside tables and id lists: one for CSV files, one for id lists, one
for id sequences given in Python. The command line and the API call these same functions,
so an input reads the same way whichever door it came through.

- :func:`read_table`: a CSV (UTF-8, or UTF-16 with its BOM; a BOM stripped), id columns
  read as the strings that are written (``NA``, ``null``, ``None`` and ``007`` are ids,
  never missing values or numbers), the other columns parsed as pandas does; a column
  named twice in the header is an error naming it (pandas would rename the second ``x.1``
  and use the first).
- :func:`read_id_list`: one id per line (UTF-8 or UTF-16, a BOM stripped, CRLF or LF);
  blank lines are skipped, surrounding whitespace is trimmed, and a repeated id is kept
  once, at its first line.
- :func:`id_list`: ids given as a sequence (or a path of an id list or CSV): normalised by
  the frame validator's rule (:func:`mgsv_sk.data._schema.id_text`), repeats kept once.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from mgsv_sk.data._schema import (
    FIT_COLUMNS,
    ID_COLUMNS,
    AnnotationError,
    check_unique_columns,
    id_text,
    validate_annotations,
)
from mgsv_sk.errors import InvalidInputError, InvalidTypeError
from mgsv_sk.files._paths import open_regular

__all__ = ["MAX_TABLE_BYTES", "id_list", "read_annotations", "read_id_list", "read_table"]

#: A CSV or id list larger than this is refused before it is read (MGSV-EC's are a few MB).
MAX_TABLE_BYTES = 1 << 30
#: What pandas reads as a missing value by default: kept for every column but the ids.
_NA_STRINGS = sorted(pd._libs.parsers.STR_NA_VALUES)


def _text(source: Any, what: str) -> tuple[str, str]:
    """(decoded text, name) of a path or a file-like object; a BOM is stripped."""
    if isinstance(source, (str, os.PathLike)):
        with open_regular(source, what) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_TABLE_BYTES:
                raise AnnotationError([f"the file is {size} bytes, more than the "
                                       f"{MAX_TABLE_BYTES} a {what} may hold"], str(source))
            data: bytes | str = fh.read()
        name = os.fspath(source)
    else:
        data, name = source.read(), what
    if isinstance(data, bytes):
        try:  # a Windows editor's "Unicode" is UTF-16 with its byte-order mark
            data = data.decode("utf-16" if data[:2] in (codecs.BOM_UTF16_LE,
                                                         codecs.BOM_UTF16_BE) else "utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AnnotationError([f"cannot parse as CSV: it is not UTF-8 text (byte "
                                   f"{exc.start}: {exc.reason}); save it as UTF-8"],
                                  str(name)) from exc
    return data.removeprefix("\ufeff"), str(name)


def _header(text: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        return []


def read_table(source: Any, id_columns: Sequence[str] = ("video_id", "music_id"), *,
               what: str = "CSV") -> pd.DataFrame:
    """A CSV as a frame, ids exactly as written (see the module docstring).

    Raises
    ------
    FileNotFoundError
        ``source`` names nothing.
    ValueError
        It is not a regular file (a FIFO, a folder, a broken link).
    AnnotationError
        It is not UTF-8 CSV, or a column is named twice.
    """
    text, name = _text(source, what)
    header = _header(text)
    check_unique_columns(header, name)
    ids = [c for c in header if c in id_columns]
    try:
        return pd.read_csv(
            io.StringIO(text), dtype={c: str for c in ids}, keep_default_na=False,
            na_values={**{c: _NA_STRINGS for c in header if c not in ids},
                       **{c: [""] for c in ids}})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise AnnotationError([f"cannot parse as CSV: {exc}"], name) from exc


def read_id_list(source: Any, what: str = "id list") -> list[str]:
    """Ids of a text file, one per line: blank lines skipped, whitespace trimmed, a
    repeated id kept once (at its first line). A ``.csv`` file is read as a table and its
    ``music_id`` column used (else its only column): cells exactly as written, empty cells
    skipped."""
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".csv"):
        table = read_table(source, ("music_id", "video_id"), what=what)
        column = "music_id" if "music_id" in table.columns else (
            table.columns[0] if len(table.columns) == 1 else None)
        if column is None:
            raise InvalidInputError(f"{what} {os.fspath(source)} has no music_id column (it has "
                             f"{[str(c) for c in table.columns][:10]})")
        cells = table[column].dropna().tolist()  # an empty cell is a blank line
        return id_list(cells, f"{what} {os.fspath(source)}")
    text, name = _text(source, what)
    lines = [line.strip() for line in text.splitlines()]
    return id_list([line for line in lines if line], f"{what} {name}")


def id_list(values: Any, what: str = "ids") -> list[str]:
    """Ids as strings, repeats kept once at their first position. ``values`` is an
    iterable of ids, or a path (``str`` / ``os.PathLike``) of an id list or CSV
    (:func:`read_id_list`): a single string is a file, never a sequence of characters.

    Raises ``ValueError`` naming every value that cannot be an id (empty, NaN, inf, a
    fraction, a non-string object).
    """
    if isinstance(values, (str, os.PathLike)):
        return read_id_list(values)
    if not isinstance(values, Iterable):
        raise InvalidTypeError(f"{what} must be a list of ids or the path of an id list, got "
                        f"{type(values).__name__}")
    out: dict[str, None] = {}
    bad = []
    for i, value in enumerate(values):
        text, why = id_text(value)
        if text is None:
            bad.append(f"item {i} ({value!r}) {why}")
        else:
            out.setdefault(text, None)
    if bad:
        raise InvalidInputError(f"{what}: {len(bad)} value(s) cannot be ids: " + "; ".join(bad[:5])
                         + "; ids are strings or whole numbers")
    return list(out)


def read_annotations(
    source: str | os.PathLike[str] | pd.DataFrame,
    required: Sequence[str] = FIT_COLUMNS,
) -> pd.DataFrame:
    """Read an MGSV-EC CSV (or take a frame) and validate it.

    Ids are read as strings straight from the text, so an integer ``video_id`` such as
    ``112712471153`` never passes through a float.

    Examples
    --------
    >>> import io
    >>> csv = io.StringIO("video_id,music_id,music_start,music_end,music_total_duration\\n"
    ...                   "7,9,0,12.5,60\\n")
    >>> read_annotations(csv).loc[0, "music_id"]
    '9'
    """
    if isinstance(source, pd.DataFrame):
        return validate_annotations(source, required)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "annotations"
    return validate_annotations(read_table(source, ID_COLUMNS, what="annotation CSV"),
                                required, source=name)
