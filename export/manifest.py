"""The contract between the exporter and the runtime: a bundle's layout, names and dims.

Importable with numpy and the standard library only (no torch, no onnx), so both sides
read the same facts from here, and ``manifest.json`` carries them to any other client.

A bundle is a folder::

    manifest.json                 this contract, filled in (see :func:`new_manifest`)
    graphs/video_encoder.onnx     video [batch, frames, 512] -> tokens, unit-norm embedding
    graphs/music_encoder.onnx     music [tracks, snippets, 768] -> tokens (the window
                                  head's track keys), embedding, X-Pool snippet states
    graphs/score_tracks.onnx      retrieval scores of every (video, track) pair of a chunk
    graphs/score_pairs.onnx       retrieval score of matched (video, track) pairs
    graphs/detector.onnx          the candidate moments of (video, track) pairs: video
                                  video_index[p] in track music_index[p] (the window
                                  head; DETR: video p in track music_index[p])
    graphs/<name>.int8.onnx       dynamically quantised twins (``quantize=True``)
    graphs/xpool_weights.npz      the X-Pool parameters (float32, no pickle; with X-Pool
                                  only): the runtime's numpy scan (export._xpool)
    catalogue/ids.json            track ids, one per catalogue row
    catalogue/emb.npy             [N, D] float32 unit-norm track embeddings h0(M)
    catalogue/offsets.npy         [N + 1] int64: track i owns snippet rows offsets[i]:offsets[i+1]
    catalogue/tokens.npy          [R, D] float32 snippet tokens of every track, back to back
                                  (the window head: its track keys, [R, D + 4], what
                                  the music encoder returns and the detector takes)
    catalogue/xpool_states.npy    [R, D] float32 X-Pool snippet states (layer-normed tokens;
                                  keys and values are linear maps of them, folded into the
                                  score graphs: see mgsv_sk.nn.xpool)

Every array is a plain ``.npy`` (no pickle) that ``np.load(mmap_mode="r")`` maps, so a
catalogue larger than memory is served from the page cache. ``manifest.json`` lists the
sha256 and size of every other file; the runtime refuses a bundle whose files differ.

Symbolic axes: ``batch`` (videos, or matched pairs), ``videos`` and ``pairs`` (the window
head's detector: each video once, and the pairs that index it), ``tracks`` (tracks of one call),
``frames`` (<= ``max_frames``), ``snippets`` (<= ``max_snippets``), ``windows`` (candidate
moments per pair: the window head's grid, 1 for DETR; a logit of -inf marks a candidate
that is not a window of the track). Masks are bool with
True = valid; every row needs at least one valid position (an all-padding row gives NaN).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.errors import ArtifactError, ArtifactNotFoundError, InvalidInputError
from mgsv_sk.files import (
    file_checksums,
    open_regular,
    other_kind_error,
    sha256_file,
    verify_checksums,
)
from mgsv_sk.search import TWO_STAGE_MARGIN

__all__ = [
    "BundleError",
    "CATALOGUE_FILES",
    "FORMAT",
    "GraphSpec",
    "MANIFEST_FILE",
    "MAX_MUSIC_SECONDS",
    "SNIPPET_HOP_SECONDS",
    "TWO_STAGE_MARGIN",
    "TensorSpec",
    "graph_file",
    "graph_problems",
    "graph_specs",
    "new_manifest",
    "read_manifest",
    "sha256_file",
    "spec_from_json",
    "verify_files",
    "write_manifest",
]

#: /2: the catalogue caches X-Pool snippet states [R, D] instead of keys | values [R, 2D].
#: /3: the detector takes the videos' lengths and returns candidate windows (start, end,
#: logit per candidate) from which the runtime picks the moments.
FORMAT = "mgsv_sk.onnx/3"
MANIFEST_FILE = "manifest.json"

#: Catalogue arrays, by role, as in :class:`mgsv_sk.search.catalogue.Catalogue`. ``xpool_states``
#: exists only when the model has an X-Pool score.
CATALOGUE_FILES: dict[str, str] = {
    "ids": "catalogue/ids.json",
    "emb": "catalogue/emb.npy",
    "offsets": "catalogue/offsets.npy",
    "tokens": "catalogue/tokens.npy",
    "xpool_states": "catalogue/xpool_states.npy",
}
#: Graph names, in the order a request runs them.
GRAPH_NAMES = ("video_encoder", "music_encoder", "score_tracks", "score_pairs", "detector")
PRECISIONS = ("fp32", "int8")


class BundleError(ArtifactError):
    """A bundle is missing, damaged, tampered with or of another format."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype ("float32", "bool", "int64") and shape,
    each axis a symbolic name (str) or a fixed size (int)."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one graph, in order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}


def spec_from_json(name: str, data: Mapping[str, Any]) -> GraphSpec:
    """Inverse of :meth:`GraphSpec.to_json`."""

    def tensors(items: Iterable[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

    return GraphSpec(name, tensors(data["inputs"]), tensors(data["outputs"]))


def graph_specs(
    d_model: int, video_dim: int, music_dim: int, *, use_dual: bool, use_xpool: bool,
    window_head: bool = True, key_width: int | None = None,
) -> dict[str, GraphSpec]:
    """The graphs of a bundle for a model of these dims and retrieval scores.

    ``window_head``: the detector takes each video once with its length, and pairs them
    with tracks by ``video_index`` (the paper's DETR takes a video per pair and reads its
    length from the frames only). ``key_width``: the window head's track keys (its
    projections of a track's snippet tokens, ``MaDe.window_keys``) are this wide; the
    music encoder returns them and the detector takes them in place of the tokens, so the
    catalogue's ``tokens`` rows hold keys (None: tokens, as bundles exported before).

    Without an X-Pool score the music encoder has no snippet states and there are no score
    graphs (the dual score is one matrix product the runtime does in numpy); without the
    dual score the score graphs take no track embedding.
    """
    d = d_model
    videos, pairs = ("videos", "pairs") if window_head else ("batch", "batch")
    rows = (("music_keys", key_width) if window_head and key_width is not None
            else ("music_tokens", d))  # what the catalogue stores per snippet

    def t(name: str, dtype: str, *shape: str | int) -> TensorSpec:
        return TensorSpec(name, dtype, tuple(shape))

    specs = {
        "video_encoder": GraphSpec(
            "video_encoder",
            (t("video", "float32", "batch", "frames", video_dim),
             t("video_mask", "bool", "batch", "frames")),
            (t("video_tokens", "float32", "batch", "frames", d),
             t("video_emb", "float32", "batch", d)),
        ),
        "music_encoder": GraphSpec(
            "music_encoder",
            (t("music", "float32", "tracks", "snippets", music_dim),
             t("music_mask", "bool", "tracks", "snippets")),
            (t(rows[0], "float32", "tracks", "snippets", rows[1]),
             t("music_emb", "float32", "tracks", d))
            + ((t("xpool_states", "float32", "tracks", "snippets", d),) if use_xpool else ()),
        ),
        "detector": GraphSpec(
            "detector",
            (t("video_tokens", "float32", videos, "frames", d),
             t("video_mask", "bool", videos, "frames"),
             t("video_emb", "float32", videos, d),
             t(rows[0], "float32", "tracks", "snippets", rows[1]),
             t("music_mask", "bool", "tracks", "snippets"),
             t("music_index", "int64", pairs))
            + ((t("video_index", "int64", pairs), t("video_seconds", "float32", videos))
               if window_head else ()),
            (t("window_starts", "float32", pairs, "windows"),
             t("window_ends", "float32", pairs, "windows"),
             t("window_logits", "float32", pairs, "windows"),
             t("snippet_logits", "float32", pairs, "snippets")),
        ),
    }
    if use_xpool:
        emb_all = (t("music_emb", "float32", "tracks", d),) if use_dual else ()
        emb_pair = (t("music_emb", "float32", "batch", d),) if use_dual else ()
        specs["score_tracks"] = GraphSpec(
            "score_tracks",
            (t("video_emb", "float32", "batch", d),) + emb_all
            + (t("xpool_states", "float32", "tracks", "snippets", d),
               t("music_mask", "bool", "tracks", "snippets")),
            (t("score", "float32", "batch", "tracks"),),
        )
        specs["score_pairs"] = GraphSpec(
            "score_pairs",
            (t("video_emb", "float32", "batch", d),) + emb_pair
            + (t("xpool_states", "float32", "batch", "snippets", d),
               t("music_mask", "bool", "batch", "snippets")),
            (t("score", "float32", "batch"),),
        )
    return {name: specs[name] for name in GRAPH_NAMES if name in specs}


_ORT_TYPES = {"float32": "tensor(float)", "bool": "tensor(bool)", "int64": "tensor(int64)"}


def _shape_problem(want: Sequence[str | int], have: Sequence[Any]) -> str | None:
    if len(want) != len(have):
        return f"has {len(have)} axes {list(have)}, the manifest says {len(want)} {list(want)}"
    for axis, (w, h) in enumerate(zip(want, have)):
        if isinstance(w, int) and isinstance(h, int) and w != h:
            return f"has size {h} on axis {axis}, the manifest says {w} ({list(want)})"
    return None


def graph_problems(spec: GraphSpec, inputs: Sequence[Any], outputs: Sequence[Any]
                   ) -> list[str]:
    """How a graph's inputs and outputs (onnxruntime ``NodeArg``s: name, type, shape)
    differ from its manifest entry: names, element types, ranks and fixed sizes (a
    symbolic axis matches any size). Empty when they agree."""
    problems = []
    have_in = {a.name: a for a in inputs}
    missing = [n for n in spec.input_names if n not in have_in]
    extra = [n for n in have_in if n not in spec.input_names]
    if missing or extra:
        problems.append(f"inputs {sorted(have_in)}, the manifest says {spec.input_names}")
    have_out = {a.name: a for a in outputs}
    lacking = [n for n in spec.output_names if n not in have_out]
    if lacking:
        problems.append(f"outputs {sorted(have_out)} lack {lacking}")
    for role, tensors, have in (("input", spec.inputs, have_in), ("output", spec.outputs,
                                                                     have_out)):
        for t in tensors:
            arg = have.get(t.name)
            if arg is None:
                continue
            if _ORT_TYPES.get(t.dtype, t.dtype) != arg.type:
                problems.append(f"{role} {t.name!r} is {arg.type}, the manifest says {t.dtype}")
            why = _shape_problem(t.shape, list(arg.shape))
            if why is not None:
                problems.append(f"{role} {t.name!r} {why}")
    return problems


def graph_file(name: str, precision: str = "fp32") -> str:
    """Bundle-relative path of a graph: ``graphs/<name>.onnx`` or ``graphs/<name>.int8.onnx``."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"graphs/{name}.onnx" if precision == "fp32" else f"graphs/{name}.{precision}.onnx"


def new_manifest(
    *,
    specs: Mapping[str, GraphSpec],
    graph_files: Mapping[str, Mapping[str, str]],
    dims: Mapping[str, int],
    retrieval: Mapping[str, Any],
    catalogue: Mapping[str, Any],
    versions: Mapping[str, str],
    opset: int,
    exporter: str,
    default_precision: str = "fp32",
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict (``files`` is filled by :func:`write_manifest`).

    Parameters
    ----------
    specs : graph name -> GraphSpec
    graph_files : graph name -> {precision: bundle-relative file}
    dims : d_model, video_dim, music_dim, max_frames, max_snippets
    retrieval : use_dual, use_xpool, xpool_top_k (None = X-Pool over every track),
        moment_weight and rerank_depth (the re-ranking of :mod:`mgsv_sk.search.rerank`)
    catalogue : n_tracks, n_snippets and the bundle-relative ``files`` by role
    versions : library versions that wrote the bundle
    """
    return {
        "format": FORMAT,
        "graphs": {name: {"files": dict(graph_files[name]), **spec.to_json()}
                   for name, spec in specs.items()},
        "default_precision": default_precision,
        "dims": dict(dims),
        "constants": {"max_music_seconds": MAX_MUSIC_SECONDS,
                      "snippet_hop_seconds": SNIPPET_HOP_SECONDS,
                      "two_stage_margin": TWO_STAGE_MARGIN},
        "retrieval": dict(retrieval),
        "catalogue": dict(catalogue),
        "opset": int(opset),
        "exporter": exporter,
        "versions": dict(versions),
        "files": {},
    }


def _bundle_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(
    folder: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    known: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Record the size and sha256 of every file under ``folder`` and write manifest.json.

    ``known`` maps bundle-relative paths to checksums already computed (e.g. while a
    large array was written), which are trusted instead of re-reading those files.
    Returns the manifest written.
    """
    root = Path(folder)
    out = {**manifest, "files": file_checksums(root, _bundle_files(root), known)}
    (root / MANIFEST_FILE).write_text(json.dumps(out, indent=1))
    return out


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json`` of a bundle (checksums not verified)."""
    root = Path(folder)
    path = root / MANIFEST_FILE
    other = other_kind_error(root, "an ONNX bundle", FORMAT, "export a saved model with "
                             "`python -m mgsv_sk.export SAVED_MODEL OUT_DIR` (or export_onnx)")
    if other is not None:
        raise other
    if not root.is_dir():
        raise ArtifactNotFoundError(f"no ONNX bundle at {root!s}: the folder does not exist; "
                                    "write one with `python -m mgsv_sk.export SAVED_MODEL OUT_DIR`")
    if not os.path.lexists(path):
        raise ArtifactNotFoundError(f"no ONNX bundle at {root!s} ({MANIFEST_FILE} missing); "
                                    "write one with `python -m mgsv_sk.export SAVED_MODEL OUT_DIR`")
    try:
        with open_regular(path, f"bundle {root!s}: {MANIFEST_FILE}", BundleError) as fh:
            manifest: dict[str, Any] = json.loads(fh.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path!s} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{root!s} holds format {found!r}, expected {FORMAT!r}; "
                          "re-export it with this version")
    missing = [k for k in ("graphs", "dims", "constants", "retrieval", "catalogue", "files")
               if k not in manifest]
    if missing:
        raise BundleError(f"{path!s} lacks the key(s) {missing}; re-export the bundle")
    return manifest


def verify_files(folder: str | os.PathLike[str], manifest: Mapping[str, Any],
                 checksums: bool = True) -> None:
    """Check every file listed in the manifest: present, same size, same sha256.

    Raises :class:`BundleError` naming the first file that differs, and for files in the
    bundle that the manifest does not list (something was added after export).
    """
    root = Path(folder)
    listed: Mapping[str, Mapping[str, Any]] = manifest["files"]
    used = [f for g in manifest["graphs"].values() for f in g.get("files", {}).values()]
    used += list(manifest["catalogue"].get("files", {}).values())
    used += [f for e in manifest.get("encoders", {}).values() for f in e["files"].values()]
    used += [manifest["xpool_weights"]] if "xpool_weights" in manifest else []
    unverified = sorted({f for f in used if f not in listed})
    if unverified:  # every file the runtime opens must carry a checksum
        raise BundleError(f"the manifest of {root!s} uses file(s) it gives no checksum for: "
                          f"{unverified[:5]}; refusing it (re-export the bundle)")
    verify_checksums(root, listed, BundleError, "bundle", "re-export the bundle",
                     checksums=checksums)
    extra = [rel for rel in _bundle_files(root) if rel not in listed]
    if extra:
        raise BundleError(f"bundle {root!s} holds file(s) its manifest does not list: "
                          f"{extra[:5]}; remove them or re-export the bundle")
