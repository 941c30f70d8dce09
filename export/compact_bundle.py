"""Bundles for large catalogues: compact snippet arrays and an ANN first stage.

:func:`compact_bundle` writes a copy of an exported bundle whose per-snippet catalogue
arrays (snippet tokens, X-Pool states) are stored as float16 or int8 with per-row scales
(:mod:`mgsv_sk.search.compact`) and whose catalogue carries a first-stage index over the
dual embeddings (:mod:`mgsv_sk.search.ann`). :class:`export.runtime.OnnxGrounder` serves
such a bundle as any other: the index answers the dual top-``xpool_top_k`` of the
two-stage search, the compact rows are decoded as they are read.

Manifest keys (``catalogue``): ``states`` ("float32" | "float16" | "int8"), ``index``
(``{"kind": ..., "name": "catalogue/ann_index"}``; the index file and its sidecar sit in
``catalogue/`` and are checksummed by the manifest like every other file), and the file
roles ``tokens_scales`` / ``xpool_states_scales`` for int8.

    >>> compact_bundle("bundle/", "bundle_int8/", states="int8", index="auto")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError
from mgsv_sk.files._atomic import ONNX_BUNDLE, atomic_directory
from mgsv_sk.search.ann import AnnParams, build_index
from mgsv_sk.search.compact import CompactWriter, RowFile, check_state_dtype

from .manifest import read_manifest, verify_files, write_manifest

__all__ = ["INDEX_NAME", "compact_bundle", "index_catalogue", "write_compact_rows"]

#: Where a bundle's first-stage index lives (``.faiss`` + ``.json`` sidecar).
INDEX_NAME = "catalogue/ann_index"
_BLOCK_ROWS = 1 << 16


def write_compact_rows(folder: Path, role: str, source: Any, rows: int, d: int,
                       states: str) -> dict[str, str]:
    """Stream ``source`` ([rows, D] float32, sliceable) into ``folder/catalogue/<role>...``.

    Returns
    -------
    dict
        The manifest's file roles: ``{role: file}`` (+ ``role + "_scales"`` for int8).
    """
    writer = CompactWriter(folder / "catalogue", role, rows, d, states)
    files = writer.write_all(np.asarray(source[lo: lo + _BLOCK_ROWS], np.float32)
                             for lo in range(0, rows, _BLOCK_ROWS))
    out = {role: f"catalogue/{files['data']}"}
    if "scales" in files:
        out[f"{role}_scales"] = f"catalogue/{files['scales']}"
    return out


def index_catalogue(folder: Path, emb: np.ndarray, index: str = "auto",
                    params: AnnParams | None = None) -> dict[str, Any]:
    """Build the first-stage index over ``emb`` (N, D) and save it in ``folder/catalogue``.

    Returns the manifest's ``catalogue["index"]`` entry.
    """
    built = build_index(emb, index, params)
    built.save(folder, INDEX_NAME)
    return {"kind": built.kind, "name": INDEX_NAME}


def compact_bundle(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                   states: str = "int8", index: str = "auto",
                   params: AnnParams | None = None, overwrite: bool = False) -> Path:
    """Copy a bundle with compact per-snippet arrays and a first-stage index.

    Parameters
    ----------
    src : path
        A float32 bundle written by :func:`export.to_onnx.export_onnx`.
    dst : path
        The new bundle (written atomically; ``overwrite`` replaces an existing bundle).
    states : {"float32", "float16", "int8"}
        Storage of snippet tokens and X-Pool states (bytes per snippet at D = 256: 1024,
        512, 260 each).
    index : {"auto", "exact", "hnsw", "ivf"}
        First-stage index (:func:`mgsv_sk.search.ann.build_index`; "auto": exact up to
        50,000 tracks).
    params : AnnParams, optional

    Returns
    -------
    Path
        ``dst``.
    """
    check_state_dtype(states)
    source = Path(src)
    manifest = read_manifest(source)
    verify_files(source, manifest)
    cat = dict(manifest["catalogue"])
    if cat.get("states", "float32") != "float32":
        raise InvalidInputError(f"{source!s} is already compact ({cat['states']}); compact the "
                         "float32 bundle it came from")
    files = dict(cat["files"])
    with atomic_directory(dst, overwrite=overwrite, replaces=ONNX_BUNDLE) as tmp:
        shutil.copytree(source / "graphs", tmp / "graphs")
        (tmp / "catalogue").mkdir()
        for role in ("ids", "emb", "offsets"):
            shutil.copy2(source / files[role], tmp / files[role])
        for role in ("tokens", "xpool_states"):
            if role in files:
                rows = RowFile(source / files.pop(role))
                files.update(write_compact_rows(tmp, role, rows, rows.shape[0], rows.shape[1],
                                                states))
        emb = np.load(tmp / files["emb"], mmap_mode="r")
        cat.update(files=files, states=states, index=index_catalogue(tmp, emb, index, params))
        write_manifest(tmp, {**manifest, "catalogue": cat})
    return Path(dst)
