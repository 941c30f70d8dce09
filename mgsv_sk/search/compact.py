"""Compact per-snippet catalogue arrays: float16, or int8 with one scale per row.

A catalogue caches two [sum S, D] float32 arrays per track (the snippet tokens the moment
head reads and the X-Pool snippet states): about 58 KB each per track at D = 256 and 56
snippets, 116 GB for a million tracks. Stored compact:

- ``"float16"``: half the bytes; relative error <= 2**-11 per element;
- ``"int8"``: a quarter (plus 4 bytes per snippet for its scale): each row r is stored as
  round(x / s_r) with s_r = max |x_r| / 127, so every element is within s_r / 2 of float32.

Measured effect on scores (``tests/test_compact.py``): X-Pool scores from int8 states stay
within :data:`SCORE_TOLERANCE` ``["int8"]`` of float32 (float16: ``["float16"]``).

Rows are decoded to float32 only when read (``rows[a:b]``), so a search copies out just
the rows it scores. :class:`RowFile` reads row ranges of a ``.npy`` with ``os.pread``
(no memory map, whose touched pages would count in the process's resident memory).
Torch-free: numpy and the standard library.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError, InvalidTypeError

__all__ = ["SCORE_TOLERANCE", "STATE_DTYPES", "CompactRows", "CompactWriter", "RowFile",
           "bytes_per_row", "check_state_dtype", "encode_rows", "open_compact", "read_concat",
           "read_ranges", "take_rows"]

#: ``states`` values: how per-snippet arrays are stored.
STATE_DTYPES = ("float32", "float16", "int8")
#: Stated bound on |score(compact) - score(float32)| of X-Pool scores (cosines in [-1, 1]),
#: checked by the tests at D = 32 and 256 (measured: int8 at most 0.004, float16 2e-4).
SCORE_TOLERANCE = {"float32": 0.0, "float16": 1e-3, "int8": 1e-2}
_NUMPY: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                                    "int8": np.dtype("i1")}


def check_state_dtype(states: str) -> str:
    """``states`` itself after checking it is one of :data:`STATE_DTYPES`."""
    if states not in STATE_DTYPES:
        raise InvalidInputError(f"states must be one of {STATE_DTYPES}, got {states!r}")
    return states


def bytes_per_row(states: str, d: int) -> int:
    """Stored bytes of one snippet row of width ``d``.

    Examples
    --------
    >>> [bytes_per_row(s, 256) for s in STATE_DTYPES]
    [1024, 512, 260]
    """
    check_state_dtype(states)
    return d * _NUMPY[states].itemsize + (4 if states == "int8" else 0)


class RowFile:
    """Row ranges of a C-order 1-D or 2-D ``.npy`` file, read on demand with ``os.pread``.

    ``rows[a:b]`` returns an [b - a, ...] array of the file's dtype (no shared file
    position, so threads may read concurrently).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            self._offset = fh.tell()
        if len(shape) not in (1, 2) or fortran or dtype.hasobject:
            raise InvalidInputError(f"{path!s}: expected a C-order 1-D or 2-D numeric array, got "
                                    f"shape {shape}, dtype {dtype}, fortran_order {fortran}")
        self.path, self.dtype = path, np.dtype(dtype)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        size = path.stat().st_size
        if size != self._offset + self.shape[0] * self._row_bytes:
            raise InvalidInputError(f"{path!s}: its header declares shape {self.shape} "
                                    f"({self.shape[0] * self._row_bytes} bytes of data) but the "
                                    f"file holds {size - self._offset}; it is truncated or "
                                    "damaged: write the catalogue or export the bundle again")
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __getstate__(self) -> dict[str, Any]:
        # a file descriptor means nothing in another process: a copy opens the file again
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise InvalidInputError("RowFile reads contiguous row ranges only")
        n = max(stop - start, 0)
        want = n * self._row_bytes
        data = os.pread(self._fd, want, self._offset + start * self._row_bytes)
        if len(data) != want:
            raise OSError(f"{self.path!s} is shorter than its header says (truncated?)")
        return np.frombuffer(data, self.dtype).reshape((n, *self.shape[1:]))

    def ranges(self, bounds: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Several row ranges ``[a, b)`` at once, in order.

        The kernel is told about every range before the first read (``posix_fadvise``
        WILLNEED), so the reads of a cold file overlap on the disk instead of queueing one
        after another: 100 scattered 14.5 KB reads from a cold 6 GB file took 20 ms one by
        one and 4 ms announced first.
        """
        if len(bounds) > 1 and hasattr(os, "posix_fadvise"):
            for a, b in bounds:
                if b > a:
                    os.posix_fadvise(self._fd, self._offset + a * self._row_bytes,
                                     (b - a) * self._row_bytes, os.POSIX_FADV_WILLNEED)
        return [self[a:b] for a, b in bounds]


@dataclass(frozen=True)
class CompactRows:
    """Per-snippet rows stored as float32, float16 or int8 + per-row scales.

    ``rows[a:b]`` decodes rows ``a..b-1`` to an [b - a, D] float32 array.

    Attributes
    ----------
    data : array-like (R, D)
        Stored values (ndarray, memory map or :class:`RowFile`).
    scales : array-like (R,) float32 or None
        int8 only: the per-row scale s_r (x ~= data * s_r).
    states : str
        "float32", "float16" or "int8".
    """

    data: Any
    scales: Any
    states: str

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes stored (data + scales)."""
        r, d = self.shape
        return r * bytes_per_row(self.states, d)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise InvalidTypeError("CompactRows reads row ranges: rows[a:b]")
        x = np.asarray(self.data[key])
        if self.states == "int8":
            return x.astype(np.float32) * np.asarray(self.scales[key], np.float32)[:, None]
        return x.astype(np.float32, copy=self.states != "float32")

    def decode(self) -> np.ndarray:
        """Every row as float32, (R, D)."""
        return self[0: len(self)]

    def ranges(self, bounds: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Several row ranges ``[a, b)`` decoded to float32, read at once (:func:`read_concat`,
        split back into the ranges)."""
        cuts = np.cumsum([b - a for a, b in bounds])[:-1]
        return np.split(read_concat(self, bounds), cuts) if bounds else []


def read_concat(rows: Any, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Row ranges ``[a, b)`` of ``rows`` back to back, float32 [sum(b - a), ...]: the ranges
    read at once (:func:`read_ranges`), compact rows decoded in one pass over all of them
    rather than range by range (a two-stage search reads 100 tracks' rows per query)."""
    parts = read_ranges(rows.data if isinstance(rows, CompactRows) else rows, bounds)
    if not parts:
        return np.zeros((0, *rows.shape[1:]), np.float32)
    data = np.concatenate(parts)
    if not isinstance(rows, CompactRows) or rows.states != "int8":
        return data.astype(np.float32, copy=False)
    scales = np.concatenate(read_ranges(rows.scales, bounds)).astype(np.float32, copy=False)
    out = data.astype(np.float32)
    out *= scales[:, None]
    return out


def read_ranges(rows: Any, bounds: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Row ranges ``[a, b)`` of an array, memory map, :class:`RowFile` or
    :class:`CompactRows`; the file-backed ones announce all the ranges before reading."""
    if hasattr(rows, "ranges"):
        return list(rows.ranges(bounds))
    return [rows[a:b] for a, b in bounds]


def take_rows(rows: Any, index: Sequence[int] | np.ndarray) -> np.ndarray:
    """``rows[index]`` for scattered rows, [len(index), ...] float32: one announced read
    per row for a :class:`RowFile` (a gather from a memory map would count every page it
    faults in, with readahead, in the process's resident memory)."""
    index = np.asarray(index, np.int64).reshape(-1)
    if not hasattr(rows, "ranges"):
        return np.asarray(rows[index], np.float32)
    return read_concat(rows, [(r, r + 1) for r in index.tolist()])


def _encode_block(x: np.ndarray, states: str) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, np.float32)
    if states != "int8":
        with np.errstate(over="ignore"):  # overflow is checked just below
            data = x.astype(_NUMPY[states])
        if states == "float16" and not np.isfinite(data).all() and np.isfinite(x).all():
            raise InvalidInputError(
                f"values up to {float(np.abs(x).max()):.4g} exceed float16's range (65504) "
                "and would be stored as infinities; store these arrays as int8 (one scale "
                "per row) or float32")
        return data, None
    peak = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def encode_rows(x: np.ndarray, states: str) -> CompactRows:
    """Store [R, D] float32 rows compactly, in memory.

    Parameters
    ----------
    x : ndarray (R, D)
    states : {"float32", "float16", "int8"}

    Returns
    -------
    CompactRows
        Decoding gives ``x`` exactly (float32), within 2**-11 relative (float16), or
        within s_r / 2 = max |x_r| / 254 per element of row r (int8).

    Examples
    --------
    >>> x = np.array([[1.0, -0.5, 0.25]], np.float32)
    >>> rows = encode_rows(x, "int8")
    >>> bool(np.abs(rows[0:1] - x).max() <= 1.0 / 254)
    True
    """
    check_state_dtype(states)
    if x.ndim != 2:
        raise InvalidInputError(f"expected (R, D) rows, got shape {x.shape}")
    data, scales = _encode_block(x, states)
    return CompactRows(data, scales, states)


class CompactWriter:
    """Stream [R, D] float32 rows to ``stem.<states>.npy`` (+ ``stem.scales.npy`` for int8).

    ``rows`` is the total row count (the ``.npy`` header is written first); feed blocks
    with :meth:`write` and finish with :meth:`close`, which returns the written file names
    (relative to ``folder``) by role: ``{"data": ..., "scales": ...}``.
    """

    def __init__(self, folder: str | os.PathLike[str], stem: str, rows: int, d: int,
                 states: str) -> None:
        self.folder, self.states = Path(folder), check_state_dtype(states)
        self.rows, self.d, self._written = int(rows), int(d), 0
        self.files = {"data": f"{stem}.{states}.npy"}
        if states == "int8":
            self.files["scales"] = f"{stem}.scales.npy"
        self._fh = {role: open(self.folder / f, "wb") for role, f in self.files.items()}
        np.lib.format.write_array_header_1_0(self._fh["data"], {
            "descr": _NUMPY[states].str, "fortran_order": False, "shape": (self.rows, self.d)})
        if "scales" in self._fh:
            np.lib.format.write_array_header_1_0(self._fh["scales"], {
                "descr": "<f4", "fortran_order": False, "shape": (self.rows,)})

    def write(self, block: np.ndarray) -> None:
        """Append float32 rows (n, D)."""
        if block.ndim != 2 or block.shape[1] != self.d:
            raise InvalidInputError(f"expected (n, {self.d}) rows, got {block.shape}")
        data, scales = _encode_block(block, self.states)
        self._fh["data"].write(np.ascontiguousarray(data).tobytes())
        if scales is not None:
            self._fh["scales"].write(scales.tobytes())
        self._written += len(block)

    def write_all(self, blocks: Iterable[np.ndarray]) -> dict[str, str]:
        """:meth:`write` every block, then :meth:`close`."""
        for block in blocks:
            self.write(block)
        return self.close()

    def close(self) -> dict[str, str]:
        for fh in self._fh.values():
            fh.close()
        if self._written != self.rows:
            raise InvalidInputError(f"CompactWriter got {self._written} rows, its header declares "
                                    f"{self.rows}; the files are incomplete")
        return dict(self.files)


def open_compact(folder: str | os.PathLike[str], files: dict[str, str], states: str
                 ) -> CompactRows:
    """Open rows written by :class:`CompactWriter` (read with ``os.pread`` on demand).

    Parameters
    ----------
    folder : path
    files : dict
        ``{"data": file, "scales": file}`` relative to ``folder`` (scales: int8 only).
    states : {"float32", "float16", "int8"}
    """
    check_state_dtype(states)
    root = Path(folder)
    data = RowFile(root / files["data"])
    if data.dtype != _NUMPY[states] or len(data.shape) != 2:
        raise InvalidInputError(f"{data.path!s} holds {data.dtype} {data.shape}, expected 2-D "
                                f"{states}; write the catalogue again")
    scales = None
    if states == "int8":
        if "scales" not in files:
            raise InvalidInputError(f"int8 rows in {root!s} need their scales file; write the "
                                    "catalogue again")
        scales = RowFile(root / files["scales"])
        if scales.shape != (data.shape[0],):
            raise InvalidInputError(f"{scales.path!s} holds {scales.shape} scales for "
                                    f"{data.shape[0]} rows; write the catalogue again")
    return CompactRows(data, scales, states)
