"""Fetch the MGSV-EC release (annotation CSVs and feature zips) from its hub dataset.

:func:`fetch_mgsv_ec` lists the dataset repository ``xxayt/MGSV-EC`` with
``huggingface_hub``, downloads the three split CSVs and the feature zip(s) into
``<root>/.download/`` (resumable: a ``.part`` file grows across interrupted runs, and a
finished file is not fetched again), checks each file against the checksum the hub gives
(sha256 for LFS files, the git blob sha1 otherwise), tests the zip's CRCs, and extracts
the features into the layout :class:`mgsv_sk.data.features.FeatureTree` reads::

    <root>/dataset/MGSV-EC/{train,val,test}_data.csv
    <root>/features/Kuai_feature/{vit_feature1,ast_feature2p5}/...

Licence: the dataset card says CC BY-NC 4.0; the code repository's README says
CC BY-NC-ND 4.0 for the data. Non-commercial use, with attribution (Xin et al., ICCV 2025).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from mgsv_sk._extras import require
from mgsv_sk.data._tree import _KUAI
from mgsv_sk.data.features import as_feature_source, pack_features
from mgsv_sk.data.packed import PackedFeatures
from mgsv_sk.errors import ArtifactNotFoundError, MGSVError
from mgsv_sk.files._paths import check_relative, inside_root

__all__ = ["FetchResult", "LICENCE_NOTE", "REPO_ID", "fetch_mgsv_ec"]

logger = logging.getLogger(__name__)

REPO_ID = "xxayt/MGSV-EC"
SPLIT_CSVS = ("train_data.csv", "val_data.csv", "test_data.csv")
_LAYOUT_DIRS = ("vit_feature1", "ast_feature2p5")
LICENCE_NOTE = (
    "MGSV-EC (Xin et al., ICCV 2025), from the hub dataset xxayt/MGSV-EC: the dataset card "
    "says CC BY-NC 4.0, the code repository's README says CC BY-NC-ND 4.0 for the data; "
    "non-commercial use with attribution"
)


@dataclass
class FetchResult:
    """Where things are: ``root`` (a release root FeatureTree reads), ``csvs`` (split name
    -> path), ``downloaded`` (repository paths fetched now, not from the cache) and
    ``packed`` (the store, when asked for)."""

    root: Path
    csvs: dict[str, Path] = field(default_factory=dict)
    downloaded: list[str] = field(default_factory=list)
    packed: PackedFeatures | None = None


class DownloadError(MGSVError, OSError):
    """A download failed (the hub's answer, a checksum, a zip that is unreadable, unsafe or
    too large); the message says what to do."""


def _git_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(entry: Any) -> tuple[str, str] | None:
    """(kind, hex digest) the hub gives for a file: LFS sha256, else the git blob sha1."""
    if entry.lfs is not None and entry.lfs.sha256:
        return "sha256", str(entry.lfs.sha256)
    if entry.blob_id:
        return "git-sha1", str(entry.blob_id)
    return None


def _matches(path: Path, entry: Any) -> bool:
    if path.stat().st_size != entry.size:
        return False
    expected = _expected(entry)
    if expected is None:
        return True
    kind, digest = expected
    return (_sha256(path) if kind == "sha256" else _git_sha1(path)) == digest


#: Modules whose exceptions are the hub client's or its HTTP stack's (translated into ours).
_CLIENT_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")
#: A zip may declare at most this many times its own size (listing) uncompressed.
MAX_EXPANSION = 100
_HTML_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")


@contextmanager
def _hub_errors(what: str, repo_id: str, revision: str | None,
                endpoint: str | None) -> Iterator[None]:
    """Translate the hub client's errors into :class:`DownloadError` with this API's own
    advice (its messages name options of its own functions, not of this one)."""
    try:
        yield
    except DownloadError:
        raise
    except Exception as exc:
        if not type(exc).__module__.startswith(_CLIENT_MODULES):
            raise  # a local failure (a full disk, ...): its own message is right
        raise DownloadError(_hub_message(exc, what, repo_id, revision, endpoint)) from exc


def _hub_message(exc: Exception, what: str, repo_id: str, revision: str | None,
                 endpoint: str | None) -> str:
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    listing = what.startswith("listing")  # a 404 there: no such dataset (or revision)
    if name in ("RepositoryNotFoundError", "GatedRepoError") or status in (401, 403) or (
            listing and status == 404 and name != "RevisionNotFoundError"):
        return (f"{what}: the hub dataset {repo_id!r} was not found at {where} or needs "
                f"access (HTTP {status}); check repo_id= and revision=, or pass token= "
                "(--repo / --revision on the command line; a token from `huggingface-cli "
                "login` is used by default)")
    if name == "RevisionNotFoundError":
        return (f"{what}: the hub dataset {repo_id!r} has no revision {revision!r}; check "
                "revision= (--revision), or leave it out for the latest")
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError") or status == 404:
        return (f"{what}: the hub does not serve this file of {repo_id!r} (HTTP 404); the "
                "dataset changed since it was listed: run the command again")
    if name == "HFValidationError":
        return f"{what}: {repo_id!r} is not a valid hub dataset name (owner/name): check repo_id="
    if status is not None:
        return (f"{what}: the hub at {where} answered HTTP {status}; try again later (a rerun "
                "resumes), or check endpoint= (--endpoint)")
    detail = str(exc).splitlines()[0][:200] if str(exc) else name
    return (f"{what}: cannot reach the hub at {where} ({name}: {detail}); check the network "
            "or endpoint= (--endpoint), then run the command again: it resumes")


def _looks_foreign(part: Path, entry: Any) -> bool:
    """Whether the bytes already in ``part`` cannot be the start of ``entry``: an HTML or
    XML error page, or a zip that does not start as one. Such a prefix is discarded and
    the download restarted, never resumed."""
    with open(part, "rb") as fh:
        head = fh.read(512)
    if not head:
        return False
    name = str(entry.path).lower()
    if name.endswith(".zip") and not b"PK\x03\x04".startswith(head[:4]):
        return True
    return head.lstrip()[:16].lower().startswith(_HTML_STARTS) and not name.endswith(
        (".html", ".htm", ".xml"))


def _download(entry: Any, dest: Path, *, repo_id: str, revision: str | None,
              endpoint: str | None, token: str | bool | None) -> bool:
    """Fetch one repository file to ``dest`` (resuming ``dest.part``); False if cached.
    A resumed file that fails its checksum is fetched once more from its first byte."""
    if dest.is_file() and _matches(dest, entry):
        return False
    part = dest.with_name(dest.name + ".part")
    for attempt in range(2):
        resumed = _fetch_part(entry, dest, part, repo_id=repo_id, revision=revision,
                              endpoint=endpoint, token=token)
        if _matches(part, entry):
            os.replace(part, dest)
            return True
        part.unlink()
        if not resumed or attempt:
            break
        logger.warning("%s: the resumed download fails its checksum; fetching it again from "
                       "its first byte", entry.path)
    expected = _expected(entry)
    raise DownloadError(
        f"{entry.path} from {repo_id} does not match the hub's checksum "
        f"({expected[0] if expected else 'size'}); the damaged download was deleted: "
        "run the command again to fetch it anew")


def _fetch_part(entry: Any, dest: Path, part: Path, *, repo_id: str, revision: str | None,
                endpoint: str | None, token: str | bool | None) -> bool:
    """Download ``entry`` into ``part``, resuming its bytes when they can be a prefix of
    the file; returns whether it resumed."""
    hub = require("huggingface_hub", "downloading MGSV-EC")
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    with _hub_errors(f"downloading {entry.path}", repo_id, revision, endpoint):
        url = hub.hf_hub_url(repo_id, entry.path, repo_type="dataset", revision=revision,
                             endpoint=endpoint)
        meta = hub.get_hf_file_metadata(url, token=token, endpoint=endpoint)
    dest.parent.mkdir(parents=True, exist_ok=True)
    resume = part.stat().st_size if part.is_file() else 0
    if resume and (resume >= entry.size or _looks_foreign(part, entry)):
        logger.warning("%s: discarding %d bytes of an earlier download that cannot be its "
                       "start; downloading it from its first byte", entry.path, resume)
        part.unlink()
        resume = 0
    logger.info("downloading %s (%d bytes%s)", entry.path, entry.size,
                f", resuming at {resume}" if resume else "")
    headers = build_hf_headers(token=token)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a CDN's signed address: the token stays home
    with open(part, "ab") as fh, _hub_errors(f"downloading {entry.path}", repo_id, revision,
                                             endpoint):
        http_get(meta.location, fh, resume_size=resume, headers=headers,
                 expected_size=entry.size, displayed_filename=PurePosixPath(entry.path).name)
    return resume > 0


def _members(archive: zipfile.ZipFile, name: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The zip's feature files and where each goes under ``Kuai_feature`` (every member
    path checked by the one inside-the-root rule)."""
    out = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        check_relative(info.filename, f"{name}: member", DownloadError, where="the archive")
        parts = PurePosixPath(info.filename).parts
        hits = [i for i, p in enumerate(parts) if p in _LAYOUT_DIRS]
        if hits:
            out.append((info, PurePosixPath(*parts[hits[0]:])))
    if not out:
        raise DownloadError(f"{name} holds no {' or '.join(_LAYOUT_DIRS)} folder: it is not "
                            "an MGSV-EC feature archive")
    return out


def _extracted(base: Path, members: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> bool:
    """Whether every member is in the tree as a regular file of its size (the marker
    alone is not trusted: the user may have deleted or changed files since)."""
    for info, target in members:
        try:
            st = (base / target).stat()
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != info.file_size:
            return False
    return True


def _check_expansion(members: list[tuple[zipfile.ZipInfo, PurePosixPath]], listed: int,
                     base: Path, name: str) -> None:
    """Refuse a zip that would write far more than the listing says it weighs (a zip
    bomb), or more than the disk holds, before anything is written."""
    total = sum(info.file_size for info, _ in members)
    if total > MAX_EXPANSION * max(listed, 1):
        raise DownloadError(
            f"{name} would expand to {total} bytes from the {listed} bytes the hub lists "
            f"for it (more than {MAX_EXPANSION} times); refusing to extract it (a damaged "
            "or hostile archive)")
    free = shutil.disk_usage(base).free
    if total > free:
        raise DownloadError(f"{name} needs {total} bytes to extract, and {base!s} has {free} "
                            "free; free some space and run the command again")


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, staged: Path,
                 name: str) -> None:
    """Copy one member, never writing more than its declared size."""
    written = 0
    with archive.open(info) as src, open(staged, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            written += len(block)
            if written > info.file_size:
                raise DownloadError(f"{name}: member {info.filename!r} expands past the "
                                    f"{info.file_size} bytes it declares; refusing it")
            dst.write(block)


def _extract(zip_path: Path, root: Path, name: str, digest: str, listed: int) -> None:
    """Test the zip, extract its feature files beside the tree, move them into place; a
    marker holding the zip's checksum records a completed extraction, trusted only while
    every file it extracted is still there."""
    marker = zip_path.with_name(zip_path.name + ".extracted")
    base = root / _KUAI
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _members(archive, name)
            if (marker.is_file() and marker.read_text().strip() == digest
                    and _extracted(base, members)):
                return
            base.mkdir(parents=True, exist_ok=True)
            _check_expansion(members, listed, base, name)
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"CRC error in member {bad!r}")
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=base) as tmp:
                for info, target in members:
                    staged = Path(tmp) / target
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    _copy_member(archive, info, staged, name)
                for _, target in members:  # each file appears whole, by a rename
                    final = inside_root(base, target.as_posix(), f"{name}: member",
                                        DownloadError)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(tmp) / target, final)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(
            f"{name} is not a readable zip ({exc}); delete {zip_path} and run the command "
            "again to download it anew") from exc
    marker.write_text(digest + "\n")


def _listing(api: Any, repo_id: str, revision: str | None, endpoint: str | None,
             download: Path) -> list[Any]:
    """The files the hub lists, each path checked inside ``download`` and each size a
    non-negative integer, before anything is fetched."""
    with _hub_errors(f"listing {repo_id}", repo_id, revision, endpoint):
        entries = [e for e in api.list_repo_tree(repo_id, repo_type="dataset",
                                                 revision=revision, recursive=True)
                   if hasattr(e, "size")]
    for e in entries:
        inside_root(download, str(e.path), f"the hub listing of {repo_id}: entry",
                    DownloadError)
        if isinstance(e.size, bool) or not isinstance(e.size, int) or e.size < 0:
            raise DownloadError(f"the hub listing of {repo_id} gives {e.path!r} the size "
                                f"{e.size!r}; refusing it")
    return entries


def fetch_mgsv_ec(
    root: str | os.PathLike[str],
    *,
    pack: str | os.PathLike[str] | None = None,
    repo_id: str = REPO_ID,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    verbose: bool = False,
) -> FetchResult:
    """Download the MGSV-EC release into ``root`` and extract its features.

    Parameters
    ----------
    root : path
        Folder to fill (created); rerunning resumes and skips what is done.
    pack : path, optional
        Also pack the feature tree into this store (:func:`mgsv_sk.pack_features`).
    repo_id, revision : str
        The hub dataset and its revision (default: the latest).
    endpoint : str, optional
        Hub endpoint (default ``HF_ENDPOINT`` or https://huggingface.co).
    token : str or bool, optional
        Hub token, if the repository needs one.
    verbose : bool
        Progress bars while packing.

    Returns
    -------
    FetchResult
    """
    hub = require("huggingface_hub", "downloading MGSV-EC")
    root = Path(root)
    api = hub.HfApi(endpoint=endpoint, token=token)
    download = root / ".download"
    entries = _listing(api, repo_id, revision, endpoint, download)
    csvs = [e for e in entries if PurePosixPath(e.path).name in SPLIT_CSVS]
    zips = [e for e in entries if e.path.lower().endswith(".zip")]
    if not csvs or not zips:
        raise ArtifactNotFoundError(
            f"the hub dataset {repo_id} lists {len(csvs)} split CSV(s) and {len(zips)} zip(s) "
            f"among {[e.path for e in entries][:10]}; expected {', '.join(SPLIT_CSVS)} and a "
            "feature zip: check repo_id / revision")
    result = FetchResult(root)
    for entry in [*csvs, *zips]:
        dest = download / entry.path
        if _download(entry, dest, repo_id=repo_id, revision=revision, endpoint=endpoint,
                     token=token):
            result.downloaded.append(entry.path)
    for entry in csvs:
        name = PurePosixPath(entry.path).name
        target = root / "dataset" / "MGSV-EC" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(download / entry.path, target)
        result.csvs[name.split("_")[0]] = target
    for entry in zips:
        expected = _expected(entry)
        _extract(download / entry.path, root, entry.path,
                 expected[1] if expected else str(entry.size), entry.size)
    logger.info("%s", LICENCE_NOTE)
    if pack is not None:
        result.packed = _packed(root, Path(pack), verbose)
    return result


def _packed(root: Path, pack: Path, verbose: bool) -> PackedFeatures:
    """The store of an earlier run when it holds every item of the tree, else the tree
    packed (again) into it: a store is checked against the tree, never trusted."""
    tree = as_feature_source(root)
    if (pack / "meta.json").is_file():
        store = PackedFeatures(pack)
        if (set(tree.video_ids()) <= set(store.video_ids())  # type: ignore[attr-defined]
                and set(tree.music_ids()) <= set(store.music_ids())):  # type: ignore[attr-defined]
            return store
        logger.info("%s lacks items of the tree: packing it again", pack)
        return pack_features(tree, pack, overwrite=True, verbose=verbose)
    return pack_features(tree, pack, verbose=verbose)
