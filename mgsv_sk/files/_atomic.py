"""Atomic folder writes: build under a temporary name, rename into place.

A reader sees either the old folder or the complete new one, never a half-written one;
a crash (or Ctrl-C) while writing leaves only the temporary folder's removal to do, and
that is done here.

Overwriting only ever replaces an artefact this library wrote: a folder is recognised by
its marker file (``manifest.json`` / ``meta.json``) holding a JSON object whose
``format`` starts with the artefact's format prefix (see :class:`Artefact`). Any other
non-empty folder is refused before anything is read, written or moved, so
``save(path, overwrite=True)`` pointed at a folder of unrelated files deletes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgsv_sk.errors import InvalidInputError

__all__ = [
    "KNOWN_ARTEFACTS",
    "MODEL_FOLDER",
    "ONNX_BUNDLE",
    "PACKED_STORE",
    "Artefact",
    "atomic_directory",
    "check_destination",
    "file_checksums",
    "sha256_file",
    "verify_checksums",
]

#: A marker file larger than this is not one of ours (ours are a few KB).
_MAX_MARKER_BYTES = 64 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks: the checksum of every artefact (saved
    model, ONNX bundle)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: str | os.PathLike[str], files: Iterable[str],
                   known: Mapping[str, str] | None = None) -> dict[str, dict[str, object]]:
    """The checksum record of an artefact folder: ``{relative path: {"bytes": size,
    "sha256": hex}}`` for ``files`` (paths relative to ``folder``), the one format that
    saved models and ONNX bundles write in their ``manifest.json``. ``known`` gives
    checksums already computed (trusted instead of reading those files again)."""
    root, known = Path(folder), dict(known or {})
    return {rel: {"bytes": (root / rel).stat().st_size,
                  "sha256": known.get(rel) or sha256_file(root / rel)}
            for rel in files}


def verify_checksums(folder: str | os.PathLike[str], listed: Mapping[str, Mapping[str, object]],
                     error: type[Exception], what: str, fix: str, *,
                     checksums: bool = True) -> None:
    """Check the files of a checksum record (:func:`file_checksums`): each inside
    ``folder``, present, of the recorded size and sha256. Raises ``error`` naming the first
    file that differs; ``what`` names the artefact ("saved model", "bundle"), ``fix`` the
    remedy ("save it again"). ``checksums=False`` checks presence and sizes only."""
    from mgsv_sk.files._paths import PathOutsideRootError, inside_root, regular_file

    root = Path(folder)
    outside = []
    for rel in listed:  # a record may only name files inside its folder: the one check
        try:
            inside_root(root, rel, "a manifest entry")
        except PathOutsideRootError as exc:
            outside.append(f"{rel!r} ({str(exc).split(';')[0]})" if isinstance(rel, str)
                           else repr(rel))
    if outside:
        raise error(f"the manifest of {root!s} lists file(s) outside the {what}: "
                    f"{outside[:5]}; refusing it ({fix})")
    for rel, info in listed.items():
        path = root / rel
        try:
            regular_file(path, f"{what} file {rel}", error)
        except FileNotFoundError:
            raise error(f"{what} {root!s} lacks {rel}, listed in its manifest; {fix}") from None
        size = path.stat().st_size
        if "bytes" in info and size != info["bytes"]:
            raise error(f"{path!s} has {size} bytes, the manifest says {info['bytes']}: the "
                        f"file was changed or truncated after it was written; refusing it "
                        f"({fix})")
        if checksums and sha256_file(path) != info.get("sha256"):
            raise error(f"checksum mismatch for {path!s}: the file was changed or damaged "
                        f"after it was written; refusing to load the {what} ({fix})")


@dataclass(frozen=True)
class Artefact:
    """How to recognise a folder this library wrote: ``marker`` (a file in the folder)
    holds a JSON object whose ``"format"`` is a string starting with ``format_prefix``."""

    marker: str
    format_prefix: str
    what: str

    def recognises(self, folder: Path) -> bool:
        path = folder / self.marker
        try:
            if not path.is_file() or path.is_symlink() or (
                    path.stat().st_size > _MAX_MARKER_BYTES):
                return False
            content = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
            return False
        fmt = content.get("format") if isinstance(content, dict) else None
        return isinstance(fmt, str) and fmt.startswith(self.format_prefix)


MODEL_FOLDER = Artefact("manifest.json", "mgsv_sk.model/", "saved MGSVGrounder")
PACKED_STORE = Artefact("meta.json", "mgsv_sk.packed/", "packed feature store")
ONNX_BUNDLE = Artefact("manifest.json", "mgsv_sk.onnx/", "ONNX bundle")
#: What ``atomic_directory`` may replace when the caller does not say.
KNOWN_ARTEFACTS: tuple[Artefact, ...] = (MODEL_FOLDER, PACKED_STORE, ONNX_BUNDLE)


def _as_rules(replaces: Artefact | Sequence[Artefact] | None) -> tuple[Artefact, ...]:
    if replaces is None:
        return KNOWN_ARTEFACTS
    if isinstance(replaces, Artefact):
        return (replaces,)
    return tuple(replaces)


def _contains(folder: Path, inner: Path) -> bool:
    return inner == folder or folder in inner.parents


def check_destination(
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    replaces: Artefact | Sequence[Artefact] | None = None,
) -> Path:
    """Check that ``destination`` may be written (as a folder) and return it as a Path.

    Raises ``FileExistsError`` when it exists and ``overwrite`` is false, when it is a
    file or a symbolic link, or when it is a non-empty folder that none of ``replaces``
    (default: every artefact of this library) recognises; ``ValueError`` for a path that
    cannot be replaced by a rename (``.``, ``..``, the filesystem root, the current
    folder or one of its parents). Nothing is touched.
    """
    dst = Path(destination)
    text = os.fspath(destination)
    last = os.path.basename(text.rstrip("/" + (os.altsep or "")).rstrip(os.sep))
    if last in ("", ".", "..") or dst.name in ("", ".", ".."):  # "sub/." is "sub" to pathlib
        raise InvalidInputError(
            f"cannot write a folder at {os.fspath(destination)!r}: name the folder itself "
            "(e.g. 'model/' or '../model'), not '.', '..' or the filesystem root"
        )
    absolute = Path(os.path.abspath(dst))
    if absolute.parent == absolute:
        raise InvalidInputError(f"cannot write a folder at the filesystem root {absolute!s}; "
                         "choose a sub-folder")
    try:  # one look at the name: another writer may be swapping it meanwhile
        first = os.lstat(dst)
    except FileNotFoundError:
        return dst
    mode = first.st_mode
    if stat.S_ISLNK(mode):
        raise FileExistsError(
            f"{dst!s} is a symbolic link; remove it or pass the folder it points to "
            "(a link is never replaced)"
        )
    if not overwrite:
        raise FileExistsError(f"{dst!s} already exists; pass overwrite=True to replace it")
    if not stat.S_ISDIR(mode):
        raise FileExistsError(f"{dst!s} is a file, not a folder; remove it or choose another "
                              "path (overwrite=True replaces folders only)")
    try:
        here = Path(os.getcwd())
    except OSError:  # the current folder was deleted
        here = None
    if here is not None and _contains(absolute, here):
        raise InvalidInputError(
            f"refusing to replace {dst!s}: it is (or contains) the current folder {here!s}; "
            "run from elsewhere or write to another path"
        )
    rules = _as_rules(replaces)
    try:
        empty = not any(dst.iterdir())
    except FileNotFoundError:  # moved away meanwhile (another writer swapping it in)
        return dst
    except OSError as exc:
        raise FileExistsError(f"{dst!s} exists and cannot be listed ({exc}); overwrite=True "
                              "replaces only folders it can check") from exc
    if not empty and not any(rule.recognises(dst) for rule in rules):
        if _swapped_meanwhile(dst, first):
            # Another writer renamed its folder in while we looked: judge what is there now.
            return check_destination(destination, overwrite=overwrite, replaces=replaces)
        kinds = " or ".join(f"a {r.what} ({r.marker} of format {r.format_prefix}*)"
                            for r in rules)
        raise FileExistsError(
            f"refusing to overwrite {dst!s}: it is not {kinds} written by mgsv_sk, so "
            "overwrite=True would delete files it did not write; remove or rename it "
            "yourself, or choose another path"
        )
    return dst


def _swapped_meanwhile(dst: Path, seen: os.stat_result) -> bool:
    """Whether the folder at ``dst`` is gone or is another one than ``seen`` (a writer's
    two renames happened between our looks); a refusal is only given for a folder that
    stayed put while it was judged."""
    try:
        now = os.lstat(dst)
    except FileNotFoundError:
        return True
    return (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino)


@contextmanager
def atomic_directory(
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    replaces: Artefact | Sequence[Artefact] | None = None,
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success it replaces
    ``destination`` in one rename, on any error (or interrupt) it is deleted.

    ``destination`` is checked up front by :func:`check_destination` (``replaces``: the
    artefacts it may replace; default any of this library's), and again just before the
    rename, so an existing folder is replaced only when it is an empty folder or one of
    ours, and nothing is touched when it is not.
    """
    dst = check_destination(destination, overwrite=overwrite, replaces=replaces)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        with writer_lock(dst):  # one writer of dst at a time swaps its folder in
            # Anything put there while we were writing (another writer's folder included)
            # is checked by the same rule.
            check_destination(dst, overwrite=overwrite, replaces=replaces)
            _swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, dst: Path) -> None:
    """Move ``tmp`` to ``dst``, replacing the folder there (if any) by two renames."""
    if dst.exists():
        # A fresh empty name (a stale one left by a killed process would not be empty).
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        try:
            os.replace(dst, old)
        except BaseException:
            old.rmdir()
            raise
        try:
            os.replace(tmp, dst)
        except BaseException:
            os.replace(old, dst)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


#: How long a writer waits for another writer of the same destination before giving up.
LOCK_TIMEOUT_S = 600.0


@contextmanager
def writer_lock(destination: str | os.PathLike[str],
                timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of ``destination``'s writers: ``flock`` on ``.<name>.lock`` beside it.

    Writers of one artefact (two processes saving the same model folder) take turns; one
    that waits more than ``timeout`` seconds (default :data:`LOCK_TIMEOUT_S`) gets a
    ``FileExistsError`` naming the lock. The lock file is removed by its holder before it
    lets go (re-checked after locking, so a waiter never holds a removed file). Where
    ``fcntl`` does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    dst = Path(destination)
    path = dst.with_name(f".{dst.name}.lock")
    held = _held_locks()
    key = os.path.abspath(path)
    if key in held:  # this thread holds it already (a writer calling another writer)
        yield
        return
    limit = time.monotonic() + (LOCK_TIMEOUT_S if timeout is None else timeout)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_flock(fcntl, fd, limit, path)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed it meanwhile: lock the new one
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        try:
            os.unlink(path)
        finally:
            os.close(fd)


_THREAD = threading.local()


def _held_locks() -> set[str]:
    """The lock files this thread holds (a writer lock is reentrant within a thread)."""
    if not hasattr(_THREAD, "held"):
        _THREAD.held = set()
    held: set[str] = _THREAD.held
    return held


def _wait_flock(fcntl: Any, fd: int, limit: float, path: Path) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > limit:
                raise FileExistsError(
                    f"another process is writing {path.with_name(path.name[1:-5])!s} (it "
                    f"holds {path!s}); wait for it to finish, or remove the lock file if no "
                    "such process is running") from None
            time.sleep(0.05)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)
