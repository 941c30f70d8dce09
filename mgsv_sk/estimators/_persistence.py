"""Pickle-free persistence of a fitted MGSVGrounder.

A saved model is a folder:

- ``config.json``: the estimator's parameters, fitted metadata (history, epochs, the
  catalogue's ids) and library versions;
- ``weights.npz``: the network's tensors as float32 arrays (read with
  ``allow_pickle=False``);
- ``catalogue.npz``: the catalogue's cached encodings;
- ``manifest.json``: the size and sha256 of every other file, checked at load (the
  record ONNX bundles carry too: :func:`mgsv_sk.files._atomic.file_checksums`).

It is written under a temporary name and renamed into place, so a crash never leaves a
folder that loads.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mgsv_sk.errors import ArtifactError, ArtifactNotFoundError
from mgsv_sk.files import (
    MODEL_FOLDER,
    atomic_directory,
    file_checksums,
    open_regular,
    other_kind_error,
    sha256_file,
    verify_checksums,
)
from mgsv_sk.infer.catalogue import MusicCatalogue
from mgsv_sk.train.fitting import model_config

if TYPE_CHECKING:
    from mgsv_sk.train import FittedState

__all__ = ["ModelFileError", "load_grounder", "save_grounder", "sha256_file"]

#: /2: the catalogue caches X-Pool snippet states instead of keys | values.
#: /3: the moment head is chosen by ``detector`` (the window head by default).
FORMAT = "mgsv_sk.model/3"
_FILES = ("config.json", "weights.npz", "catalogue.npz")


class ModelFileError(ArtifactError):
    """A saved model is missing, damaged or of another format."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)  # device=torch.device("cuda") is saved as "cuda"
    return None  # e.g. an in-memory feature source: not saved


def save_grounder(params: dict[str, Any], state: FittedState, path: str | os.PathLike[str],
                  overwrite: bool) -> None:
    """Write the estimator's parameters and fitted state to a checksummed folder."""
    params = {k: _json_safe(v) for k, v in params.items()}
    cat = state.catalogue
    config = {
        "format": FORMAT,
        "params": params,
        "model_config": {"video_dim": state.model.cfg.video_dim,
                         "music_dim": state.model.cfg.music_dim},
        "fitted": {"catalogue_ids": cat.ids, "history": state.history,
                   "best_epoch": state.best_epoch, "n_epochs": state.n_epochs,
                   "stopped": state.stopped, "returned": state.returned,
                   "moment_weight": state.moment_weight,
                   "moment_weight_scores": state.moment_weight_scores},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    with atomic_directory(path, overwrite=overwrite, replaces=MODEL_FOLDER) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        weights = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy()
                   for k, v in state.model.state_dict().items()}
        np.savez(tmp / "weights.npz", **weights)
        emb, tokens, states, offsets = cat.arrays()
        arrays: dict[str, Any] = {"emb": emb, "tokens": tokens, "offsets": offsets}
        if states is not None:
            arrays["xpool_states"] = states
        np.savez(tmp / "catalogue.npz", **arrays)
        manifest = {"format": FORMAT, "files": file_checksums(tmp, _FILES)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or :class:`ModelFileError` saying what is wrong."""
    try:
        with open_regular(path, what, ModelFileError) as fh:
            value = json.loads(fh.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path!s} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                             f"the {what} is damaged: save the model again") from exc
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path!s} is corrupt: {exc}") from exc
    except OSError as exc:
        raise ModelFileError(f"cannot read {path!s}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelFileError(f"{path!s} holds a JSON {type(value).__name__}, expected the "
                             f"{what} (a JSON object); save the model again")
    return value


def _verified(folder: Path) -> dict[str, Any]:
    manifest_path = folder / "manifest.json"
    other = other_kind_error(folder, "a saved MGSVGrounder", FORMAT,
                             "fit a model and write it with MGSVGrounder.save(path)")
    if other is not None:
        raise other
    if not os.path.lexists(manifest_path):
        raise ArtifactNotFoundError(
            f"no saved MGSVGrounder at {folder!s} (manifest.json missing); write one with "
            "MGSVGrounder.save(path)"
        )
    manifest = _read_json_object(manifest_path, "manifest")
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{folder!s} holds format {manifest.get('format')!r}, "
                             f"expected {FORMAT!r}: it was written by another version of "
                             "mgsv_sk; load it with that version, or fit and save it again")
    listed = manifest.get("files")
    if "sha256" in manifest and listed is None:  # folders saved before the shared record
        sums = manifest["sha256"]
        listed = {n: {"sha256": sums.get(n)} for n in _FILES} if isinstance(sums, dict) else None
    if not isinstance(listed, dict) or not all(
            isinstance(listed.get(n), dict) and isinstance(listed[n].get("sha256"), str)
            for n in _FILES):
        raise ModelFileError(f"{manifest_path!s} lacks the sha256 of "
                             f"{', '.join(_FILES)}; it is damaged: save the model again")
    verify_checksums(folder, {n: listed[n] for n in _FILES}, ModelFileError, "saved model",
                     "save the model again")
    config = _read_json_object(folder / "config.json", "model's config")
    _check_config(config, folder / "config.json")
    return config


def _check_config(config: dict[str, Any], path: Path) -> None:
    """The structure ``save_grounder`` writes; anything else is :class:`ModelFileError`."""
    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{path!s} {what}; it was saved by another version of mgsv_sk "
                              "or edited: save the model again with this version")

    if config.get("format") != FORMAT:
        raise bad(f"holds format {config.get('format')!r}, expected {FORMAT!r}")
    for key in ("params", "model_config", "fitted"):
        if not isinstance(config.get(key), dict):
            raise bad(f"lacks the {key!r} object")
    dims = config["model_config"]
    for key in ("video_dim", "music_dim"):
        value = dims.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"has model_config.{key} = {value!r}, expected a positive integer")
    fitted = config["fitted"]
    missing = [k for k in ("catalogue_ids", "history", "best_epoch", "n_epochs", "stopped")
               if k not in fitted]
    if missing:
        raise bad(f"lacks fitted {missing}")
    ids = fitted["catalogue_ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad("has catalogue_ids that are not a list of strings")
    if len(set(ids)) != len(ids):
        raise bad("has duplicate catalogue_ids")


_MAX_DEFLATE_RATIO = 1024  # a compressed member may expand this much, no more


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of every array of an ``.npz``, from the headers only, each checked
    against the bytes its member really holds: nothing is read or allocated for an array
    that declares more data than the file has."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    disk = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                header = fh.tell()
            if dtype.hasobject:
                raise ModelFileError(f"{path!s}: array {name!r} holds Python objects; "
                                     "refusing to load it")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            limit = disk if info.compress_type == zipfile.ZIP_STORED else (
                info.compress_size * _MAX_DEFLATE_RATIO)
            if info.file_size != header + nbytes or info.file_size > limit:
                raise ModelFileError(
                    f"{path!s}: array {name!r} declares shape {tuple(shape)} of {dtype} "
                    f"({nbytes} bytes) but its member holds {info.file_size - header} bytes "
                    "(truncated or forged); save the model again"
                )
            headers[name] = (tuple(int(d) for d in shape), dtype)
    return headers


def _read_npz(path: Path, what: str, check: Any) -> dict[str, np.ndarray]:
    """The arrays of ``path`` after ``check(headers)`` accepted their shapes; every
    failure of a damaged or hostile file is a :class:`ModelFileError` naming it."""
    try:
        headers = _npz_headers(path)
        check(headers)
        with np.load(path, allow_pickle=False) as arrays:
            return {name: np.array(arrays[name]) for name in headers}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"cannot read the {what} in {path!s}: {type(exc).__name__}: "
                             f"{exc} (damaged or not written by MGSVGrounder.save); save the "
                             "model again") from exc


#: Weights a model saved before they existed may lack: the encoders' input moments
#: (standardisation), which then stay the identity the model was trained with.
_OPTIONAL_WEIGHTS = ("video_encoder.input_mean", "video_encoder.input_scale",
                     "music_encoder.input_mean", "music_encoder.input_scale")


def _weights_fit(state: dict[str, torch.Tensor], path: Path) -> Any:
    def check(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
        missing = sorted(set(state) - set(headers) - set(_OPTIONAL_WEIGHTS))
        unexpected = sorted(set(headers) - set(state))
        shapes = [f"{k} {headers[k][0]} vs {tuple(v.shape)}" for k, v in state.items()
                  if k in headers and headers[k][0] != tuple(v.shape)]
        if missing or unexpected or shapes:
            detail = "; ".join(p for p in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"other shapes: {', '.join(shapes[:3])}" if shapes else "") if p)
            raise ModelFileError(
                f"the weights in {path!s} do not fit the model its config.json describes "
                f"({detail}); it was saved by another version of mgsv_sk or edited: save it "
                "again with this version"
            )
    return check


def _catalogue_fits(n: int, width: int, path: Path) -> Any:
    def check(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
        problems = []
        missing = [k for k in ("emb", "tokens", "offsets") if k not in headers]
        if missing:
            problems.append(f"lacks {missing}")
        else:
            if headers["offsets"][0] != (n + 1,) or headers["offsets"][1].kind not in "iu":
                problems.append(f"offsets have shape {headers['offsets'][0]} of "
                                f"{headers['offsets'][1]}, expected ({n + 1},) integers")
            if headers["emb"][0] != (n, width):
                problems.append(f"emb has shape {headers['emb'][0]}, expected ({n}, {width})")
            for name in ("tokens", "xpool_states"):
                if name in headers and (len(headers[name][0]) != 2
                                        or headers[name][0][1] != width):
                    problems.append(f"{name} has shape {headers[name][0]}, expected "
                                    f"(snippets, {width})")
            if "xpool_states" in headers and headers["xpool_states"][0] != headers["tokens"][0]:
                problems.append("xpool_states and tokens differ in shape")
        for name, (_, dtype) in headers.items():
            if dtype.kind not in "fiu":
                problems.append(f"{name} has dtype {dtype}, expected numbers")
        if problems:
            raise ModelFileError(f"the catalogue in {path!s} is malformed: "
                                 + "; ".join(problems) + "; save the model again")
    return check


def load_grounder(cls: type[Any], path: str | os.PathLike[str],
                  features: Any = None) -> tuple[Any, FittedState]:
    """The unfitted estimator ``cls(**saved parameters)`` and the saved fitted state
    (checksums and every array's shape verified); the estimator applies the state."""
    from mgsv_sk.nn.model import MaDe
    from mgsv_sk.train import FittedState

    folder = Path(path)
    config = _verified(folder)
    params = dict(config["params"])
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise ModelFileError(
            f"{folder / 'config.json'!s} has unknown parameter(s) {unknown} for "
            f"{cls.__name__}; it was saved by another version of mgsv_sk or edited: save "
            "it again with this version"
        )
    if isinstance(params.get("retrieval_scores"), list):
        params["retrieval_scores"] = tuple(params["retrieval_scores"])
    if features is not None:
        params["features"] = features
    est = cls(**params)
    dims = config["model_config"]
    try:
        model = MaDe(model_config(est.get_params(deep=False), dims["video_dim"],
                                  dims["music_dim"], cls._hyperparameters))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(
            f"the parameters in {folder / 'config.json'!s} do not describe a valid model "
            f"({type(exc).__name__}: {exc}); save it again with this version"
        ) from exc
    weights_path = folder / "weights.npz"
    expected = model.state_dict()
    arrays = _read_npz(weights_path, "weights", _weights_fit(expected, weights_path))
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    state.update({k: expected[k] for k in _OPTIONAL_WEIGHTS if k not in state})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # dtypes, or anything the header check did not catch
        raise ModelFileError(
            f"the weights in {weights_path!s} do not fit the model its config.json "
            f"describes ({str(exc).splitlines()[0]}); it was saved by another version of "
            "mgsv_sk or edited: save it again with this version"
        ) from exc
    model.eval()
    ids = config["fitted"]["catalogue_ids"]
    cat_path = folder / "catalogue.npz"
    cat = _read_npz(cat_path, "catalogue", _catalogue_fits(len(ids), model.cfg.d_model, cat_path))
    offsets = cat["offsets"].astype(np.int64)
    lengths = np.diff(offsets)
    if len(offsets) and (offsets[0] != 0 or (lengths < 1).any()
                         or offsets[-1] != cat["tokens"].shape[0]):
        raise ModelFileError(
            f"the catalogue in {cat_path!s} is malformed: its offsets do not start at 0, "
            f"rise by at least 1 per track and end at the {cat['tokens'].shape[0]} snippets; "
            "save the model again"
        )
    catalogue = MusicCatalogue(ids, cat["emb"], cat["tokens"], cat.get("xpool_states"),
                               offsets)
    fitted = config["fitted"]
    weight, scores = _chosen_weight(fitted, folder)
    return est, FittedState(model, catalogue, fitted["history"], fitted["best_epoch"],
                            fitted["n_epochs"], fitted["stopped"],
                            returned=str(fitted.get("returned", "")), moment_weight=weight,
                            moment_weight_scores=scores)


def _chosen_weight(fitted: dict[str, Any], folder: Path
                   ) -> tuple[float | None, dict[str, float] | None]:
    """The re-ranking weight the fit chose and its record (None in models saved before
    it was chosen), checked: a finite weight >= 0 and numbers by name."""
    weight, scores = fitted.get("moment_weight"), fitted.get("moment_weight_scores")

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if (weight is not None and not (number(weight) and weight >= 0)) or (
            scores is not None and not (isinstance(scores, dict) and all(
                isinstance(k, str) and number(v) for k, v in scores.items()))):
        raise ModelFileError(f"{folder / 'config.json'!s} records a malformed moment_weight "
                             f"({str(weight)[:40]}, {str(scores)[:80]}); save the model again")
    return (None if weight is None else float(weight),
            None if scores is None else {k: float(v) for k, v in scores.items()})
