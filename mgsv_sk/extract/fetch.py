"""Fetch the MGSV-EC release (annotation CSVs and feature zips) from its hub dataset.

:func:`fetch_mgsv_ec` lists the dataset repository ``xxayt/MGSV-EC`` with
``huggingface_hub``, downloads the three split CSVs and the feature zip(s) into
``<root>/.download/`` (resumable: a ``.part`` file grows across interrupted runs, and a
finished file is not fetched again), checks each file against the checksum the hub gives
(sha256 for LFS files, the git blob sha1 otherwise), tests the zip's CRCs, and extracts
the features into the layout :class:`mgsv_sk.features.FeatureTree` reads::

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
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ..core._tree import _KUAI
from ..core.features import as_feature_source, pack_features
from ..core.packed import PackedFeatures
from ._deps import require

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


class DownloadError(OSError):
    """A downloaded file failed its checksum or is not a readable zip."""


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


def _download(entry: Any, dest: Path, *, repo_id: str, revision: str | None,
              endpoint: str | None, token: str | bool | None) -> bool:
    """Fetch one repository file to ``dest`` (resuming ``dest.part``); False if cached."""
    if dest.is_file() and _matches(dest, entry):
        return False
    hub = require("huggingface_hub", "downloading MGSV-EC")
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hub.hf_hub_url(repo_id, entry.path, repo_type="dataset", revision=revision,
                         endpoint=endpoint)
    meta = hub.get_hf_file_metadata(url, token=token, endpoint=endpoint)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resume = part.stat().st_size if part.is_file() else 0
    if resume > entry.size:
        part.unlink()
        resume = 0
    logger.info("downloading %s (%d bytes%s)", entry.path, entry.size,
                f", resuming at {resume}" if resume else "")
    headers = build_hf_headers(token=token)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a CDN's signed address: the token stays home
    with open(part, "ab") as fh:
        http_get(meta.location, fh, resume_size=resume, headers=headers,
                 expected_size=entry.size, displayed_filename=PurePosixPath(entry.path).name)
    if not _matches(part, entry):
        part.unlink()
        expected = _expected(entry)
        raise DownloadError(
            f"{entry.path} from {repo_id} does not match the hub's checksum "
            f"({expected[0] if expected else 'size'}); the damaged download was deleted: "
            "run the command again to fetch it anew")
    os.replace(part, dest)
    return True


def _members(archive: zipfile.ZipFile, name: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The zip's feature files and where each goes under ``Kuai_feature``."""
    out = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        parts = PurePosixPath(info.filename).parts
        if any(p in ("..", "") for p in parts) or info.filename.startswith("/"):
            raise DownloadError(f"{name} holds an unsafe path {info.filename!r}; refusing to "
                                "extract it")
        hits = [i for i, p in enumerate(parts) if p in _LAYOUT_DIRS]
        if hits:
            out.append((info, PurePosixPath(*parts[hits[0]:])))
    if not out:
        raise DownloadError(f"{name} holds no {' or '.join(_LAYOUT_DIRS)} folder: it is not "
                            "an MGSV-EC feature archive")
    return out


def _extract(zip_path: Path, root: Path, name: str, digest: str) -> None:
    """Test the zip, extract its feature files beside the tree, move them into place;
    a marker holding the zip's checksum records a completed extraction."""
    marker = zip_path.with_name(zip_path.name + ".extracted")
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"CRC error in member {bad!r}")
            members = _members(archive, name)
            base = root / _KUAI
            base.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=base) as tmp:
                for info, target in members:
                    staged = Path(tmp) / target
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(staged, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                for _, target in members:  # each file appears whole, by a rename
                    final = base / target
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(tmp) / target, final)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(
            f"{name} is not a readable zip ({exc}); delete {zip_path} and run the command "
            "again to download it anew") from exc
    marker.write_text(digest + "\n")


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
    entries = [e for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision,
                                             recursive=True) if hasattr(e, "size")]
    csvs = [e for e in entries if PurePosixPath(e.path).name in SPLIT_CSVS]
    zips = [e for e in entries if e.path.lower().endswith(".zip")]
    if not csvs or not zips:
        raise FileNotFoundError(
            f"the hub dataset {repo_id} lists {len(csvs)} split CSV(s) and {len(zips)} zip(s) "
            f"among {[e.path for e in entries][:10]}; expected {', '.join(SPLIT_CSVS)} and a "
            "feature zip: check repo_id / revision")
    result = FetchResult(root)
    download = root / ".download"
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
                 expected[1] if expected else str(entry.size))
    logger.info("%s", LICENCE_NOTE)
    if pack is not None and (Path(pack) / "meta.json").is_file():
        result.packed = PackedFeatures(pack)  # packed by an earlier run
    elif pack is not None:
        result.packed = pack_features(as_feature_source(root), pack, verbose=verbose)
    return result
