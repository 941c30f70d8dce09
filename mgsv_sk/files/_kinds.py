"""What a path holds, for the loaders' errors: every loader given another kind of
artefact (a bundle where a saved model is expected, a packed store as a bundle, a
feature tree, a CSV, a pickle) or another format version names what it was given and the
call that reads it, instead of "file missing" or "another version".

The kinds are recognised by their markers only (a manifest's or meta's ``format``, the
release tree's folders, a file's first bytes), never by loading anything.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from mgsv_sk.errors import ArtifactKindError

__all__ = ["KINDS", "artifact_kind", "other_kind_error"]

#: format prefix -> (what it is, how it is read)
KINDS: dict[str, tuple[str, str]] = {
    "mgsv_sk.model": ("a saved MGSVGrounder", "MGSVGrounder.load(path)"),
    "mgsv_sk.onnx": ("an ONNX bundle", "OnnxGrounder.load(path)"),
    "mgsv_sk.packed": ("a packed feature store",
                       "PackedFeatures(path), or pass the path as features="),
}
_TREE = ("an MGSV-EC feature tree", "FeatureTree(path), or pass the path as features=")


def _format_of(path: Path) -> str | None:
    """The ``format`` recorded in a small JSON marker file, or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) or os.path.getsize(path) > 2**24:
            return None
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    found = value.get("format") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def artifact_kind(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """``(format, description)`` of what ``path`` holds; ``format`` is the recorded
    format string of one of the library's artefacts (None for anything else), and the
    description says what it is and, for artefacts, how to read it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None, "nothing (no such file or folder)" if not os.path.lexists(p) else (
            "a symbolic link to nothing")
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        for marker in ("manifest.json", "meta.json"):
            found = _format_of(p / marker)
            if found is not None:
                prefix = found.split("/")[0]
                what, how = KINDS.get(prefix, (f"an artefact of format {found!r}", ""))
                read = f"; read it with {how}" if how else ""
                return found, f"{what} (format {found!r}){read}"
        if (p / "features" / "Kuai_feature").is_dir() or (p / "vit_feature1").is_dir() or (
                p / "ast_feature2p5").is_dir():
            return None, f"{_TREE[0]}; read it with {_TREE[1]}"
        try:
            empty = not any(os.scandir(p))
        except OSError:
            empty = False
        return None, "an empty folder" if empty else "a folder holding none of the library's" \
            " artefacts"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file or folder (a FIFO, socket or device)"
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return None, f"an unreadable file ({exc.strerror or exc})"
    if head[:1] == b"\x80":
        return None, ("a pickle (joblib / pickle.dump) file; read it with joblib.load(path), "
                      "only if you trust its source")
    if head[:2] == b"PK":
        return None, "a zip archive; extract it first"
    suffix = p.suffix.lower()
    if suffix in (".csv", ".txt", ".tsv"):
        return None, f"a {suffix[1:].upper()} file (annotations or ids, not an artefact)"
    return None, "a file, not a folder"


def other_kind_error(path: str | os.PathLike[str], expected: str, fmt: str,
                     write_hint: str) -> ArtifactKindError | None:
    """The error for ``path`` holding something recognisable that is not ``expected``
    (format ``fmt``): another kind of artefact, another version of this kind, a feature
    tree, a pickle, a zip or a table; None when it holds ``fmt`` itself or nothing
    recognisable (the caller then says what is missing)."""
    found, description = artifact_kind(path)
    if found == fmt:
        return None
    p = os.fspath(path)
    if found is not None and found.split("/")[0] == fmt.split("/")[0]:
        return ArtifactKindError(
            f"{p} holds {expected} of format {found!r}, but this version of mgsv_sk reads "
            f"{fmt!r}: it was written by another version of mgsv_sk; load it with that "
            f"version, or {write_hint} again with this one", found=found, expected=fmt)
    if found is not None or description.startswith(_RECOGNISED):
        return ArtifactKindError(
            f"{p} is not {expected}: it holds {description}. To get {expected}, "
            f"{write_hint}", found=found or description.split(";")[0], expected=fmt)
    return None


_RECOGNISED = ("an MGSV-EC", "a pickle", "a zip", "a CSV", "a TXT", "a TSV")
