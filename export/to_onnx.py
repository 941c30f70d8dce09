"""Export a fitted :class:`mgsv_sk.MGSVGrounder` to an ONNX bundle (graphs + catalogue).

The bundle layout and every name in it are defined in :mod:`mgsv_sk.export.manifest`; serve it with
:class:`mgsv_sk.export.runtime.OnnxGrounder`, which needs neither torch nor mgsv_sk.

Each graph wraps *public* MaDe methods only (``encode_video``, ``encode_music``,
``xpool.snippet_states``, ``xpool.scores_from_states``, ``xpool.paired_from_states``, ``ground``;
see :mod:`mgsv_sk.export._graphs`), so the moment heads' internals may change freely.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing with named dynamic
axes). The default dynamo exporter cannot capture these methods as written: their input
validation is data-dependent (``bool(mask.any(1).all())`` in the mask check,
``int(music_index.min())`` in ``ground``), which ``torch.export`` refuses, and
``torch.export.draft_export`` gets past it only by specialising the detector's batch axis to
the example's size. Tracing records those checks as constants, which is right here: the
runtime validates inputs before they reach a graph. Every graph is checked after export
(symbolic axes really symbolic, outputs equal to torch on inputs of *other* shapes than the
example, batch 1 included), so a silently frozen axis fails the export instead of shipping.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mgsv_sk.errors import InvalidInputError
from mgsv_sk.files import ONNX_BUNDLE, atomic_directory
from mgsv_sk.nn.window import CONTENT_CHANNELS

from ._common import ExportError, quantize_int8
from ._graphs import CHECK_SIZES, EXPORT_SIZES, WRAPPERS, _keyed, example_inputs
from ._xpool import XPOOL_WEIGHTS, xpool_arrays
from .manifest import (
    CATALOGUE_FILES,
    GraphSpec,
    graph_file,
    graph_specs,
    new_manifest,
    write_manifest,
)

__all__ = ["ExportError", "export_onnx"]

logger = logging.getLogger(__name__)

#: Opsets of the TorchScript exporter (20 is its newest; the dynamo exporter would map SDPA
#: to the ONNX ``Attention`` op at 23, whose onnxruntime CPU kernel rejects the padding mask).
SUPPORTED_OPSETS = range(17, 21)
#: The post-export check accepts |ORT - torch| <= atol + rtol * |torch| (fp32 graphs; the
#: rtol covers start/end in seconds, up to 240).
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-4
#: Snippet rows a block of the catalogue's window keys is computed in (64 MB of tokens)
_KEY_ROWS = 65536


# -- one graph ------------------------------------------------------------------------------------
def _export_graph(module: nn.Module, spec: GraphSpec, args: tuple[Tensor, ...],
                  opset: int, path: Path) -> None:
    dynamic_axes = {t.name: {i: a for i, a in enumerate(t.shape) if isinstance(a, str)}
                    for t in spec.inputs + spec.outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns that the model's input checks become constants (intended: the
        # runtime validates inputs) and that the TorchScript exporter is legacy.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # Constant folding skips strided slices; the graph is checked after export anyway.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module, args, path, dynamo=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )


def _check_axes(model: Any, spec: GraphSpec) -> None:
    """Every symbolic axis of the spec is symbolic in the graph (not frozen to the example's
    size); fixed axes have their size. Then names them exactly as the spec."""
    problems = []
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for t in spec.inputs + spec.outputs:
        if t.name not in values:
            problems.append(f"{t.name}: not in the graph")
            continue
        dims = values[t.name].type.tensor_type.shape.dim
        if len(dims) != len(t.shape):
            problems.append(f"{t.name}: rank {len(dims)}, expected {len(t.shape)}")
            continue
        for axis, (dim, want) in enumerate(zip(dims, t.shape)):
            if isinstance(want, str) and not dim.dim_param:
                problems.append(f"{t.name} axis {axis} ({want}) is fixed to {dim.dim_value}")
            if isinstance(want, int) and dim.dim_value not in (0, want):
                problems.append(f"{t.name} axis {axis}: {dim.dim_value}, expected {want}")
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want
    if problems:
        raise ExportError(f"graph {spec.name!r} does not have the contract's shapes: "
                          + "; ".join(problems))


def _check_outputs(session: Any, module: nn.Module, spec: GraphSpec,
                   args: tuple[Tensor, ...]) -> float:
    """Largest |ORT - torch| over the outputs, checked against the tolerance (-inf
    positions must agree)."""
    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    feed = {t.name: a.numpy() for t, a in zip(spec.inputs, args)}
    got = session.run(spec.output_names, feed)
    worst = 0.0
    for t, want, have in zip(spec.outputs, expected, got):
        want_np = want.numpy()
        if want_np.shape != have.shape:
            raise ExportError(f"graph {spec.name!r}: output {t.name} has shape {have.shape}, "
                              f"torch gives {want_np.shape} (a frozen axis?)")
        finite = np.isfinite(want_np)
        if not np.array_equal(finite, np.isfinite(have)):
            raise ExportError(f"graph {spec.name!r}: output {t.name} differs from torch in "
                              "where it is finite")
        if not finite.any():
            continue
        diff = np.abs(want_np[finite] - have[finite])
        worst = max(worst, float(diff.max()))
        if (diff > CHECK_ATOL + CHECK_RTOL * np.abs(want_np[finite])).any():
            raise ExportError(f"graph {spec.name!r}: {t.name} differs from torch by up to "
                              f"{diff.max():.3g} on inputs of other shapes than the example")
    return worst


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _smoke_test(path: Path, spec: GraphSpec, args: tuple[Tensor, ...]) -> None:
    """A quantised graph runs on inputs of other shapes and gives finite outputs."""
    session = _session(path.read_bytes())
    outs = session.run(spec.output_names, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
    for t, out in zip(spec.outputs, outs):
        if t.name not in MAY_BE_INFINITE and not np.isfinite(out).all():
            raise ExportError(f"quantised graph {spec.name!r} gives non-finite {t.name}")


#: Outputs that hold -inf by design (padding, candidates that are not windows).
MAY_BE_INFINITE = ("snippet_logits", "window_logits")
#: Graphs quantised with ``quantize=True``. The score graphs stay float32: their cost is
#: reading the catalogue's snippet states (activations), and int8 weights would only add
#: error to the retrieval scores.
QUANTIZED_GRAPHS = ("video_encoder", "music_encoder", "detector")


# -- the bundle -----------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import mgsv_sk

    out = {"mgsv_sk": mgsv_sk.__version__, "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except ImportError:  # only the dynamo exporter needs it
        pass
    return out


def _catalogue_storage(cat: Any) -> tuple[str, str, Any]:
    """How a grounder's catalogue is stored now: (states, index kind, AnnParams or None);
    float32 and an exact scan unless ``compact_catalogue`` changed them."""
    from mgsv_sk.search.compact import CompactRows

    tokens = cat.parts[0].tokens
    states = tokens.states if isinstance(tokens, CompactRows) else "float32"
    ann = cat.ann
    return states, "exact" if ann is None else ann.kind, None if ann is None else ann.params


def _check_storage(states: str | None, index: str | None, n_tracks: int) -> None:
    """Refuse bad catalogue storage options, and an approximate index without FAISS."""
    from mgsv_sk.search import check_state_dtype, require_faiss, resolve_kind

    if states is not None:
        check_state_dtype(states)
    if index is not None and resolve_kind(index, n_tracks) != "exact":
        require_faiss()  # the ImportError names the extra to install


def _window_keys(model: Any, tokens: np.ndarray) -> np.ndarray:
    """The window head's keys of snippet rows, [R, D] tokens -> [R, D + 4] float32
    (``MaDe.window_keys``: a map of each snippet alone), in blocks of rows."""
    from mgsv_sk.nn.model import MusicEncoding

    out = np.empty((len(tokens), model.cfg.d_model + CONTENT_CHANNELS), np.float32)
    with torch.no_grad():
        for lo in range(0, len(tokens), _KEY_ROWS):
            block = torch.from_numpy(np.array(tokens[lo: lo + _KEY_ROWS], np.float32))[None]
            mask = torch.ones(block.shape[:2], dtype=torch.bool)
            out[lo: lo + block.shape[1]] = model.window_keys(
                MusicEncoding(block, mask, block[:, 0])).float().numpy()[0]
    return out


def _write_catalogue(grounder: Any, folder: Path, use_xpool: bool, states: str | None,
                     index: str | None, keyed: Any = None) -> dict[str, Any]:
    """The grounder's catalogue as .npy arrays (ragged per-track rows + offsets): snippet
    rows float32 or compact (``states``), and a first-stage index unless it is an exact
    scan (``index``); None keeps the catalogue's own storage. ``keyed``: the model whose
    window head's track keys the ``tokens`` rows hold, in place of the tokens."""
    from .compact_bundle import index_catalogue, write_compact_rows

    cat = grounder.catalogue_
    own_states, own_index, params = _catalogue_storage(cat)
    states = states or own_states  # checked by export_onnx before anything was written
    index = index or own_index
    (folder / "catalogue").mkdir(parents=True, exist_ok=True)
    (folder / CATALOGUE_FILES["ids"]).write_text(json.dumps([str(i) for i in cat.ids]))
    emb, tokens, xpool, offsets = cat.arrays()
    files = {"ids": CATALOGUE_FILES["ids"]}
    snippet_rows = {"tokens": tokens if keyed is None else _window_keys(keyed, tokens)}
    if use_xpool and xpool is not None:
        snippet_rows["xpool_states"] = xpool  # [R, D]
    for role, array in {"emb": emb, "offsets": offsets}.items():
        np.save(folder / CATALOGUE_FILES[role], np.ascontiguousarray(array), allow_pickle=False)
        files[role] = CATALOGUE_FILES[role]
    for role, array in snippet_rows.items():
        if states == "float32":
            np.save(folder / CATALOGUE_FILES[role], np.ascontiguousarray(array),
                    allow_pickle=False)
            files[role] = CATALOGUE_FILES[role]
        else:
            files.update(write_compact_rows(folder, role, array, len(array), array.shape[1],
                                            states))
    info: dict[str, Any] = {"n_tracks": len(cat.ids), "n_snippets": int(offsets[-1]),
                            "files": files}
    if states != "float32":
        info["states"] = states
    if index != "exact":
        info["index"] = index_catalogue(folder, emb, index, params if index == own_index
                                        else None)
    return info


def _build(grounder: Any, folder: Path, opset: int, quantize: bool, check: bool,
           encoders: Any = None, states: str | None = None, index: str | None = None) -> None:
    import onnx

    # tracing toggles modes: never the user's model; on the CPU, as the example inputs are
    model = copy.deepcopy(grounder.model_).cpu().eval()
    cfg = model.cfg
    dims = {"d_model": cfg.d_model, "video_dim": cfg.video_dim, "music_dim": cfg.music_dim,
            "max_frames": cfg.max_frames, "max_snippets": cfg.max_snippets}
    keyed = _keyed(model)  # the catalogue's rows: the window head's track keys
    specs = graph_specs(cfg.d_model, cfg.video_dim, cfg.music_dim,
                        use_dual=cfg.use_dual, use_xpool=cfg.use_xpool,
                        window_head=cfg.detector == "window",
                        key_width=cfg.d_model + CONTENT_CHANNELS if keyed else None)
    gen = torch.Generator().manual_seed(0)
    (folder / "graphs").mkdir(parents=True)
    files: dict[str, dict[str, str]] = {}
    for name, spec in specs.items():
        module = WRAPPERS[name](model).eval()
        fp32 = folder / graph_file(name)
        _export_graph(module, spec, example_inputs(spec, EXPORT_SIZES, dims, gen), opset, fp32)
        proto = onnx.load(fp32)
        _check_axes(proto, spec)
        onnx.checker.check_model(proto)
        onnx.save(proto, fp32)
        files[name] = {"fp32": graph_file(name)}
        if check:
            session = _session(fp32.read_bytes())
            worst = max(_check_outputs(session, module, spec, example_inputs(spec, s, dims, gen))
                        for s in CHECK_SIZES)
            logger.info("graph %s: max |ORT - torch| = %.2e", name, worst)
        if quantize and name in QUANTIZED_GRAPHS:
            int8 = folder / graph_file(name, "int8")
            quantize_int8(fp32, int8)
            for sizes in CHECK_SIZES:
                _smoke_test(int8, spec, example_inputs(spec, sizes, dims, gen))
            files[name]["int8"] = graph_file(name, "int8")
        elif quantize:
            files[name]["int8"] = graph_file(name)  # served in float32 by both precisions
    catalogue = _write_catalogue(grounder, folder, cfg.use_xpool, states, index,
                                 model if keyed else None)
    if cfg.use_xpool:  # the runtime's numpy scan of one video reads these (export._xpool)
        arrays: dict[str, Any] = xpool_arrays(model.xpool)
        np.savez(folder / XPOOL_WEIGHTS, **arrays)
    top_k = grounder.xpool_top_k
    moment_weight, rerank_depth = grounder.reranking()
    manifest = new_manifest(
        specs=specs, graph_files=files, dims=dims,
        retrieval={"use_dual": cfg.use_dual, "use_xpool": cfg.use_xpool,
                   "xpool_top_k": None if top_k is None else int(top_k),
                   "moment_weight": moment_weight, "rerank_depth": rerank_depth},
        catalogue=catalogue, versions=_versions(), opset=opset,
        exporter="torch.onnx.export(dynamo=False)",
        default_precision="int8" if quantize else "fp32",
    )
    if cfg.use_xpool:
        manifest["xpool_weights"] = XPOOL_WEIGHTS
    if encoders:  # the feature encoders too: OnnxGrounder then accepts media files
        from ._encoders import export_encoders

        manifest["encoders"] = export_encoders(encoders, folder, opset=min(opset, 17),
                                               quantize=quantize, check=check)
    write_manifest(folder, manifest)


def export_onnx(
    grounder: Any,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = 20,
    quantize: bool = False,
    overwrite: bool = False,
    check: bool = True,
    encoders: Any = None,
    states: str | None = None,
    index: str | None = None,
) -> Path:
    """Write a fitted MGSVGrounder as an ONNX bundle (layout: :mod:`mgsv_sk.export.manifest`).

    Parameters
    ----------
    grounder : MGSVGrounder
        Fitted; its catalogue (``catalogue_``) becomes the bundle's catalogue and its
        ``xpool_top_k`` the runtime's default.
    out_dir : path
        Folder to create. Written under a temporary name next to it and renamed into
        place, so a failed export leaves nothing behind.
    opset : int
        ONNX opset, 17-20 (default 20).
    quantize : bool
        Also write int8 dynamically quantised encoders and detector
        (``graphs/<name>.int8.onnx``); the runtime then serves int8 by default.
    overwrite : bool
        Replace an existing ``out_dir``.
    check : bool
        Run every fp32 graph on inputs of other shapes than the export example (batch 1
        and 5) and compare with torch (|difference| <= 1e-4 + 1e-4 |value|), raising
        :class:`ExportError` otherwise. Quantised graphs are always run on those inputs
        and must give finite outputs.
    encoders : dict, optional
        ``{"video": ClipImageEncoder, "music": AstEncoder}`` (:mod:`mgsv_sk.extract`): also
        export the feature encoders (see :mod:`mgsv_sk.export._encoders`), so the bundle serves
        media files; checked against torch (cosine >= 0.9999).
    states : {"float32", "float16", "int8"}, optional
        Storage of the catalogue's snippet tokens and X-Pool states in the bundle
        (:mod:`mgsv_sk.search.compact`); None: as the grounder's catalogue stores them
        (float32 unless ``compact_catalogue`` changed it).
    index : {"auto", "exact", "hnsw", "ivf"}, optional
        First-stage index of the bundle's catalogue (:mod:`mgsv_sk.search.ann`; "auto":
        exact up to 50,000 tracks); None: the grounder's catalogue's own (exact unless
        ``compact_catalogue`` indexed it).

    Returns
    -------
    Path
        ``out_dir``.
    """
    if not hasattr(grounder, "model_") or not hasattr(grounder, "catalogue_"):
        raise InvalidInputError("export_onnx needs a fitted MGSVGrounder (call fit or "
                                "MGSVGrounder.load first)")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise InvalidInputError(f"opset must be an int in [{SUPPORTED_OPSETS.start}, "
                                f"{SUPPORTED_OPSETS.stop - 1}] (the TorchScript exporter's range), "
                                f"got {opset!r}")
    _check_storage(states, index, len(grounder.catalogue_.ids))  # before anything is written
    with atomic_directory(out_dir, overwrite=overwrite, replaces=ONNX_BUNDLE) as tmp:
        _build(grounder, tmp, opset, quantize, check, encoders, states, index)
    dst = Path(out_dir)
    logger.info("wrote ONNX bundle %s", dst)
    return dst
